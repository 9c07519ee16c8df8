//! Messages on a stream socket, framed as CPython's
//! `multiprocessing.connection` frames them.
//!
//! A frame is a 4-byte big-endian signed length followed by the payload;
//! a payload longer than `i32::MAX` bytes has the length `-1` followed by an
//! 8-byte big-endian unsigned length. Descriptors ride on the first byte of
//! a frame as `SCM_RIGHTS` data and queue up in arrival order.
//!
//! Reads are buffered: one `recv` can bring many small frames. A frame
//! larger than what is buffered is read straight into its destination, so a
//! large payload is copied once, from the kernel. Its buffer grows as bytes
//! arrive past [`UPFRONT`], so a forged length cannot make us allocate more
//! than the peer actually sends.
//!
//! A send that would block also drains what the peer sends into the read
//! buffer, so two peers that send large messages to each other at the same
//! time do not deadlock (Python's do).

use std::collections::VecDeque;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use crate::sys::socket;

/// Size of the read buffer.
const BUF: usize = 64 << 10;
/// Most bytes one read brings into the buffer. Many small frames fit; of a
/// large payload only this much is copied from the buffer (below the 4 KiB
/// at which this glibc's memcpy falls off a cliff for some alignments), the
/// rest is read straight into its destination.
const READ_CHUNK: usize = 4 << 10;
/// Most bytes reserved for a payload before any of it arrived.
pub(crate) const UPFRONT: usize = 64 << 20;
/// Frames at most this long are copied into one buffer and sent with one
/// plain `send`.
const SMALL: usize = 128;
/// Default limit on a received payload.
pub(crate) const DEFAULT_MAX_MESSAGE: u64 = 2 << 30;

/// A frame could not be received.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StreamError {
    /// The peer closed the connection between frames.
    #[error("the peer closed the connection")]
    Closed,
    /// The peer closed the connection in the middle of a frame.
    #[error("the connection closed after {got} of {expected} bytes of a message")]
    Truncated { got: u64, expected: u64 },
    /// A frame announced more bytes than the limit.
    #[error("a message of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge { len: u64, limit: u64 },
    /// Bytes that are not a frame.
    #[error("garbage on the connection: {0}")]
    Garbage(String),
    /// The deadline passed before a frame began.
    #[error("timed out")]
    Timeout,
    /// The operating system reported an error.
    #[error(transparent)]
    Io(#[from] io::Error),
}

#[derive(Debug)]
struct RecvState {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    fds: VecDeque<OwnedFd>,
    eof: bool,
    /// Set when a frame could not be consumed whole: the stream has lost
    /// its place and every later receive fails.
    broken: Option<String>,
}

/// A framed, buffered, descriptor-carrying message stream.
#[derive(Debug)]
pub(crate) struct Stream {
    fd: OwnedFd,
    send: Mutex<()>,
    recv: Mutex<RecvState>,
    max_message: AtomicU64,
}

/// What one receive produced: a payload and the descriptors it claimed.
#[derive(Debug)]
pub(crate) struct Message {
    pub payload: Vec<u8>,
    pub fds: Vec<OwnedFd>,
}

fn header(len: usize) -> ([u8; 12], usize) {
    let mut h = [0u8; 12];
    if let Ok(small) = i32::try_from(len) {
        h[..4].copy_from_slice(&small.to_be_bytes());
        (h, 4)
    } else {
        h[..4].copy_from_slice(&(-1i32).to_be_bytes());
        h[4..].copy_from_slice(&(len as u64).to_be_bytes());
        (h, 12)
    }
}

/// Parses a frame header; `Ok(None)` if more bytes are needed.
fn parse_header(b: &[u8]) -> Result<Option<(usize, u64)>, StreamError> {
    if b.len() < 4 {
        return Ok(None);
    }
    let n = i32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    match n {
        0.. => Ok(Some((4, n as u64))),
        -1 if b.len() < 12 => Ok(None),
        -1 => {
            let mut l = [0u8; 8];
            l.copy_from_slice(&b[4..12]);
            Ok(Some((12, u64::from_be_bytes(l))))
        }
        _ => Err(StreamError::Garbage(format!("negative message length {n}"))),
    }
}

/// Reads from the socket, queueing descriptors; a reset is an end of stream.
struct SockRead<'a> {
    fd: BorrowedFd<'a>,
    fds: &'a mut VecDeque<OwnedFd>,
    nonblocking: bool,
}

impl Read for SockRead<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut got = Vec::new();
        let r = socket::recv(self.fd, buf, &mut got, self.nonblocking);
        self.fds.extend(got);
        match r {
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => Ok(0),
            other => other,
        }
    }
}

impl RecvState {
    /// Reads what the socket has into the buffer; returns bytes read (0 at
    /// end of stream). Grows the buffer only when it is full of unread data.
    fn fill(&mut self, fd: BorrowedFd<'_>, nonblocking: bool) -> io::Result<usize> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.buf.len() && self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            let grow = self.buf.len().max(BUF);
            self.buf.resize(self.buf.len() + grow, 0);
        }
        let mut reader = SockRead {
            fd,
            fds: &mut self.fds,
            nonblocking,
        };
        let upto = (self.end + READ_CHUNK).min(self.buf.len());
        let n = reader.read(&mut self.buf[self.end..upto])?;
        if n == 0 {
            self.eof = true;
        }
        self.end += n;
        Ok(n)
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        super::handles::untrack(self.fd.as_fd());
    }
}

impl Stream {
    /// Wraps a connected stream socket.
    pub(crate) fn new(fd: OwnedFd) -> Self {
        super::handles::track(fd.as_fd());
        Stream {
            fd,
            send: Mutex::new(()),
            recv: Mutex::new(RecvState {
                buf: vec![0; BUF],
                start: 0,
                end: 0,
                fds: VecDeque::new(),
                eof: false,
                broken: None,
            }),
            max_message: AtomicU64::new(DEFAULT_MAX_MESSAGE),
        }
    }

    /// The socket.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Sets the largest payload [`recv`](Self::recv) accepts.
    pub(crate) fn set_max_message(&self, bytes: u64) {
        self.max_message.store(bytes, Ordering::Relaxed);
    }

    /// The largest payload [`recv`](Self::recv) accepts.
    pub(crate) fn max_message(&self) -> u64 {
        self.max_message.load(Ordering::Relaxed)
    }

    fn lock_recv(&self) -> MutexGuard<'_, RecvState> {
        self.recv.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends one frame whose payload is `parts` concatenated, with `fds`.
    pub(crate) fn send(&self, parts: &[&[u8]], fds: &[BorrowedFd<'_>]) -> Result<(), StreamError> {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let (head, hlen) = header(total);
        let _guard = self.send.lock().unwrap_or_else(|e| e.into_inner());
        if hlen + total <= SMALL {
            let mut small = [0u8; SMALL];
            small[..hlen].copy_from_slice(&head[..hlen]);
            let mut at = hlen;
            for p in parts {
                small[at..at + p.len()].copy_from_slice(p);
                at += p.len();
            }
            if fds.is_empty() {
                return self.send_small(&small[..at]);
            }
            return self.send_all(&[&small[..at]], fds);
        }
        let mut bufs: [&[u8]; 8] = [&[]; 8];
        if parts.len() >= bufs.len() {
            return Err(StreamError::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                "too many parts in one message",
            )));
        }
        bufs[0] = &head[..hlen];
        bufs[1..=parts.len()].copy_from_slice(parts);
        self.send_all(&bufs[..=parts.len()], fds)
    }

    fn send_all(&self, bufs: &[&[u8]], fds: &[BorrowedFd<'_>]) -> Result<(), StreamError> {
        // The frame is at most a header and a few parts; track progress in a
        // small array of remaining slices instead of allocating.
        let mut rest: [&[u8]; 8] = [&[]; 8];
        let n = bufs.len().min(rest.len());
        rest[..n].copy_from_slice(&bufs[..n]);
        debug_assert!(bufs.len() <= rest.len(), "frames have at most 8 parts");
        let mut first = 0;
        let mut fds = fds;
        while first < n {
            if rest[first].is_empty() {
                first += 1;
                continue;
            }
            match socket::send_some(self.fd(), &rest[first..n], fds, true) {
                Ok(mut sent) => {
                    fds = &[];
                    while sent > 0 {
                        let take = sent.min(rest[first].len());
                        rest[first] = &rest[first][take..];
                        sent -= take;
                        if rest[first].is_empty() {
                            first += 1;
                        }
                    }
                }
                Err(e) => self.send_failed(e)?,
            }
        }
        Ok(())
    }

    fn send_small(&self, frame: &[u8]) -> Result<(), StreamError> {
        let mut sent = 0;
        while sent < frame.len() {
            match socket::send_plain(self.fd(), &frame[sent..], true) {
                Ok(n) => sent += n,
                Err(e) => self.send_failed(e)?,
            }
        }
        Ok(())
    }

    /// What a failed send means: a full socket waits (draining the peer),
    /// a vanished peer is `Closed`, anything else an I/O error.
    fn send_failed(&self, e: io::Error) -> Result<(), StreamError> {
        match e.kind() {
            io::ErrorKind::WouldBlock => self.stall(),
            io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => Err(StreamError::Closed),
            _ => Err(e.into()),
        }
    }

    /// Waits until the socket takes more bytes, reading what the peer sends
    /// meanwhile (unless another thread is receiving: then it does).
    fn stall(&self) -> Result<(), StreamError> {
        loop {
            let (readable, writable) = socket::wait_read_write(self.fd(), None)?;
            if writable {
                return Ok(());
            }
            if readable {
                if let Ok(mut st) = self.recv.try_lock() {
                    if !st.eof && st.fill(self.fd(), true).is_err() {
                        // Nothing to read after all; poll again.
                    }
                } else {
                    std::thread::yield_now();
                }
            }
        }
    }

    /// Whether a receive would not block: bytes or an end of stream are
    /// waiting, here or in the socket. Waits until `deadline`.
    pub(crate) fn poll(&self, deadline: Option<Instant>) -> io::Result<bool> {
        {
            let st = self.lock_recv();
            if st.start < st.end || st.eof || st.broken.is_some() {
                return Ok(true);
            }
        }
        socket::wait_readable_one(self.fd(), deadline)
    }

    /// Whether buffered bytes or an end of stream make a receive immediate.
    pub(crate) fn has_buffered(&self) -> bool {
        self.recv
            .try_lock()
            .is_ok_and(|st| st.start < st.end || st.eof)
    }

    /// Receives one frame. Waits until `deadline` for it to begin; once it
    /// has begun, reads it whole. With `claim_fds`, the payload's first
    /// byte says how many queued descriptors belong to it, and they are
    /// returned with it.
    pub(crate) fn recv(
        &self,
        deadline: Option<Instant>,
        limit: u64,
        claim_fds: bool,
    ) -> Result<Message, StreamError> {
        let mut st = self.lock_recv();
        if let Some(why) = &st.broken {
            return Err(StreamError::Garbage(why.clone()));
        }
        let (hlen, len) = loop {
            if let Some(h) = parse_header(&st.buf[st.start..st.end])? {
                break h;
            }
            if st.eof {
                return Err(if st.start == st.end {
                    StreamError::Closed
                } else {
                    StreamError::Truncated {
                        got: (st.end - st.start) as u64,
                        expected: 4,
                    }
                });
            }
            if deadline.is_some() {
                if !socket::wait_readable_one(self.fd(), deadline)? {
                    return Err(StreamError::Timeout);
                }
                match st.fill(self.fd(), true) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    other => other?,
                };
            } else {
                st.fill(self.fd(), false)?;
            }
        };
        if len > limit {
            let why = format!("an earlier message of {len} bytes exceeded the limit of {limit}");
            st.broken = Some(why);
            return Err(StreamError::TooLarge { len, limit });
        }
        let len = usize::try_from(len).map_err(|_| StreamError::TooLarge {
            len,
            limit: usize::MAX as u64,
        })?;
        st.start += hlen;
        let buffered = st.end - st.start;
        let payload = if buffered >= len {
            let p = st.buf[st.start..st.start + len].to_vec();
            st.start += len;
            p
        } else {
            let mut p = Vec::with_capacity(len.min(UPFRONT));
            p.extend_from_slice(&st.buf[st.start..st.end]);
            st.start = 0;
            st.end = 0;
            // The payload's descriptors came with its first bytes, already
            // read: the rest is plain data, read into place.
            while p.len() < len {
                if p.len() == p.capacity() {
                    let grow = (len - p.len()).min(p.capacity().max(1 << 20));
                    p.reserve_exact(grow);
                }
                let want = len - p.len();
                let n = socket::recv_into_spare(self.fd.as_fd(), &mut p, want)?;
                if n == 0 {
                    st.eof = true;
                    st.broken = Some("the connection closed in the middle of a message".into());
                    return Err(StreamError::Truncated {
                        got: (hlen + p.len()) as u64,
                        expected: (hlen + len) as u64,
                    });
                }
            }
            p
        };
        let fds = if claim_fds && !payload.is_empty() {
            let n = payload[0] as usize;
            if st.fds.len() < n {
                return Err(StreamError::Garbage(format!(
                    "a message announced {n} handles but {} arrived",
                    st.fds.len()
                )));
            }
            st.fds.drain(..n).collect()
        } else {
            Vec::new()
        };
        Ok(Message { payload, fds })
    }
}
