//! The packet strategy of a connection: the one behind
//! [`pipe_shared`](super::pipe_shared), whose sending end any number of
//! processes may hold and use at once.
//!
//! A message is one datagram on a Unix `SOCK_SEQPACKET` socket pair: a
//! 16-byte header (`[kind, handles, 0 ...]`, then the payload's length)
//! and the payload, or, past [`INLINE_MAX`] bytes, the header and padding
//! ([`MEMFD_DATAGRAM`]) with the payload in a memfd attached as the first
//! descriptor.
//! The kernel queues a datagram, with its descriptors, whole or not at
//! all, so messages from several writers never interleave, whatever their
//! size; a writer killed in the middle of a send has sent its message
//! whole or not at all, and nothing of it reaches the receiver otherwise.
//! (On a stream socket, or on the rings of [`pipe`](super::pipe), a long
//! message is several writes, and two writers' pieces would mix.)
//!
//! The receiver sees the end of the stream once every copy of the sending
//! end, in every process, is closed. Senders see the receiver's end go as
//! `EPIPE`.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::sys;
use crate::wire::handles::TrackedFd;
use crate::wire::stream::{DEFAULT_MAX_MESSAGE, Message, StreamError};

const HEADER: usize = 16;
/// The longest payload sent in the datagram itself.
pub(crate) const INLINE_MAX: usize = 16 << 10;
/// Bytes a datagram that carries its payload in a memfd occupies (zeros
/// after the header): the socket's buffer counts datagrams, not what their
/// descriptors hold, so this bounds how many long messages wait in the
/// kernel at once (a few), and the memory they hold.
const MEMFD_DATAGRAM: usize = 64 << 10;
const KIND_INLINE: u8 = 1;
const KIND_MEMFD: u8 = 2;

/// One end of a packet pipe.
#[derive(Debug)]
pub(crate) struct Packet {
    /// Tracked, so that a child forked to run a function does not keep
    /// this end open (as a [`pipe`](super::pipe)'s ends are not kept).
    fd: TrackedFd,
    max_message: AtomicU64,
    /// Receives one datagram at a time in this process (a peek for its
    /// length, then the receive).
    recv_lock: Mutex<()>,
}

/// A connected pair: `(receiver, sender)`.
pub(crate) fn pair() -> io::Result<(Packet, Packet)> {
    let (rx, tx) = sys::socket::seqpacket_pair()?;
    // Room for many messages at once (the kernel caps it).
    sys::socket::set_buffer_sizes(tx.as_fd(), 1 << 20);
    sys::socket::set_buffer_sizes(rx.as_fd(), 1 << 20);
    Ok((Packet::new(rx), Packet::new(tx)))
}

impl Packet {
    /// An end over `fd`, a packet socket.
    pub(crate) fn new(fd: OwnedFd) -> Packet {
        Packet {
            fd: TrackedFd::new(fd),
            max_message: AtomicU64::new(DEFAULT_MAX_MESSAGE),
            recv_lock: Mutex::new(()),
        }
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    pub(crate) fn max_message(&self) -> u64 {
        self.max_message.load(Ordering::Relaxed)
    }

    pub(crate) fn set_max_message(&self, bytes: u64) {
        self.max_message.store(bytes, Ordering::Relaxed);
    }

    /// Sends `parts` (concatenated) as one message with `fds`, waiting for
    /// room as long as it takes.
    pub(crate) fn send(&self, parts: &[&[u8]], fds: &[BorrowedFd<'_>]) -> Result<(), StreamError> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let handles = u8::try_from(fds.len()).map_err(|_| {
            StreamError::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                "more than 255 handles in one message",
            ))
        })?;
        let inline = len <= INLINE_MAX;
        let mut head = [0u8; HEADER];
        head[0] = if inline { KIND_INLINE } else { KIND_MEMFD };
        head[1] = handles;
        head[8..].copy_from_slice(&(len as u64).to_le_bytes());
        let padding = [0u8; MEMFD_DATAGRAM - HEADER];
        let mut bufs: Vec<&[u8]> = vec![&head];
        let memfd;
        let mut all: Vec<BorrowedFd<'_>>;
        let attached: &[BorrowedFd<'_>] = if inline {
            bufs.extend_from_slice(parts);
            fds
        } else {
            // Written whole before the datagram that carries it is sent.
            memfd = sys::shm::memfd_with("multiproc-message", parts)?;
            bufs.push(&padding);
            all = Vec::with_capacity(fds.len() + 1);
            all.push(memfd.as_fd());
            all.extend_from_slice(fds);
            &all
        };
        loop {
            match sys::socket::send_some(self.fd.as_fd(), &bufs, attached, true) {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Full: wait for room (or the receiver's end).
                    sys::socket::wait_read_write(self.fd.as_fd(), None)?;
                }
                Err(e) if is_gone(&e) => return Err(StreamError::Closed),
                Err(e) => return Err(StreamError::Io(e)),
            }
        }
    }

    /// Receives one message of at most `limit` bytes, waiting until
    /// `deadline`. A message over the limit is dropped and reported; the
    /// next one is received as usual (datagrams keep their boundaries).
    pub(crate) fn recv(
        &self,
        deadline: Option<Instant>,
        limit: u64,
    ) -> Result<Message, StreamError> {
        let _one = self.recv_lock.lock().unwrap_or_else(|e| e.into_inner());
        let full = loop {
            let mut head = [0u8; HEADER];
            match sys::socket::peek_datagram(self.fd.as_fd(), &mut head) {
                // Every message has a header: nothing is the end of the
                // stream (every sender gone).
                Ok(Some(0)) => return Err(StreamError::Closed),
                Ok(Some(full)) => break full,
                Ok(None) => {}
                Err(e) if is_gone(&e) => return Err(StreamError::Closed),
                Err(e) => return Err(StreamError::Io(e)),
            }
            if !sys::socket::wait_readable_one(self.fd.as_fd(), deadline)? {
                return Err(StreamError::Timeout);
            }
        };
        // One byte more than peeked: a longer datagram shows as too long.
        let mut buf = vec![0u8; full.max(HEADER) + 1];
        let mut fds = Vec::new();
        let n = match sys::socket::recv(self.fd.as_fd(), &mut buf, &mut fds, true) {
            Ok(n) => n,
            Err(e) if is_gone(&e) => return Err(StreamError::Closed),
            Err(e) => return Err(StreamError::Io(e)),
        };
        if n == 0 {
            return Err(StreamError::Closed);
        }
        if n < HEADER || n > full {
            return Err(StreamError::Garbage(format!("a datagram of {n} bytes")));
        }
        buf.truncate(n);
        let handles = usize::from(buf[1]);
        let mut len = [0u8; 8];
        len.copy_from_slice(&buf[8..HEADER]);
        let len = u64::from_le_bytes(len);
        if len > limit {
            return Err(StreamError::TooLarge { len, limit });
        }
        let payload = match buf[0] {
            KIND_INLINE if (n - HEADER) as u64 == len && fds.len() == handles => {
                buf.drain(..HEADER);
                buf
            }
            KIND_MEMFD if fds.len() == handles + 1 => {
                let memfd = std::fs::File::from(fds.remove(0));
                let size = memfd.metadata()?.len();
                if size != len {
                    return Err(StreamError::Garbage(format!(
                        "a message of {len} bytes in a memfd of {size}"
                    )));
                }
                // Exactly `len` bytes, already checked against the limit: a
                // sender that grows the memfd now cannot make us read more,
                // and one that shrank it gets an error.
                let len = usize::try_from(len).map_err(|_| StreamError::TooLarge { len, limit })?;
                sys::shm::read_memfd_len(memfd.as_fd(), len).map_err(|e| {
                    StreamError::Garbage(format!("a message of {len} bytes in its memfd: {e}"))
                })?
            }
            kind => {
                return Err(StreamError::Garbage(format!(
                    "a datagram of kind {kind}, {n} bytes, {} descriptors",
                    fds.len()
                )));
            }
        };
        Ok(Message { payload, fds })
    }

    /// Whether a receive would not block (a message, or the end of the
    /// stream, is there); waits until `deadline`.
    pub(crate) fn poll(&self, deadline: Option<Instant>) -> io::Result<bool> {
        sys::socket::wait_readable_one(self.fd.as_fd(), deadline)
    }
}

/// Whether a socket error means the other end is gone.
fn is_gone(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EPIPE) | Some(libc::ECONNRESET) | Some(libc::ENOTCONN)
    )
}
