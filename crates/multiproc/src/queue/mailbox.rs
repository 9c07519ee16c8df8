//! The out-of-line path: messages too large for the ring, and messages that
//! carry handles (descriptors cannot live in shared memory).
//!
//! Every queue has a sequenced-packet socket pair, held by every process
//! that holds the queue. Under the producer lock, a producer sends one
//! datagram — `[id: u64][kind: u8][0; 7]` and the payload, or just the
//! header with the payload in a memfd — with the descriptors attached, and
//! only then publishes a `LARGE` record naming `id` in the ring. Under the
//! consumer lock, a consumer that pops that record takes datagrams from the
//! mailbox: ids are increasing in both, so the datagram for `id` is the
//! first one not older than `id`.
//!
//! The consumer only *takes* the datagram under the lock (a non-blocking
//! receive); reading a memfd payload and decoding happen after the lock is
//! released ([`Fetched::finish`]). Sends do not block either: a full
//! mailbox reads as a full queue, so a put with a deadline returns by it.
//!
//! Deaths: a producer that died between sending and publishing leaves a
//! datagram no record names (older than the next id: dropped when passed).
//! A consumer that died after taking a datagram but before retiring its
//! record leaves a record whose datagram is gone: the next consumer finds a
//! newer id (or none) first, and that one message is lost, as documented.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use crate::sys;

const HEAD: usize = 16;
const IN_DATAGRAM: u8 = 1;
const IN_MEMFD: u8 = 2;
/// Payloads at most this long ride in the datagram itself.
const DATAGRAM_MAX: usize = 16 << 10;

/// The two ends of a queue's mailbox.
#[derive(Debug)]
pub(crate) struct Mailbox {
    pub(crate) tx: OwnedFd,
    pub(crate) rx: OwnedFd,
}

impl Mailbox {
    /// A new mailbox.
    pub(crate) fn new() -> io::Result<Mailbox> {
        let (tx, rx) = sys::socket::seqpacket_pair()?;
        Ok(Mailbox { tx, rx })
    }

    /// Sends message `id` without waiting: a full mailbox is
    /// `ErrorKind::WouldBlock`.
    pub(crate) fn send(
        &self,
        id: u64,
        payload: &[u8],
        handles: &[BorrowedFd<'_>],
    ) -> io::Result<()> {
        let mut head = [0u8; HEAD];
        head[..8].copy_from_slice(&id.to_le_bytes());
        if payload.len() <= DATAGRAM_MAX {
            head[8] = IN_DATAGRAM;
            sys::socket::send_some(self.tx.as_fd(), &[&head, payload], handles, true).map(drop)
        } else {
            head[8] = IN_MEMFD;
            let memfd = sys::shm::memfd_with("multiproc-message", &[payload])?;
            let mut fds = vec![memfd.as_fd()];
            fds.extend_from_slice(handles);
            sys::socket::send_some(self.tx.as_fd(), &[&head], &fds, true).map(drop)
        }
    }

    /// Takes message `id` out of the mailbox, without waiting: `None` if it
    /// is gone (taken by a consumer that died). Its payload is read by
    /// [`Fetched::finish`].
    /// The message `id` without taking it (its descriptors duplicated),
    /// after dropping older ones left by producers that died; `None` if it
    /// is not there (taken by a consumer that died).
    pub(crate) fn peek(&self, id: u64) -> io::Result<Option<Fetched>> {
        self.find(id, Find::Peek)
    }

    /// Drops the message `id` (a copy of it is stored elsewhere).
    pub(crate) fn discard(&self, id: u64) {
        let _ = self.find(id, Find::Drop);
    }

    /// Takes the message `id`, after dropping older ones left by producers
    /// that died before publishing; `None` if it is not there.
    pub(crate) fn take(&self, id: u64) -> io::Result<Option<Fetched>> {
        self.find(id, Find::Take)
    }

    /// Sends a copy of `fetched` under `id` (its descriptors duplicated by
    /// the kernel). `WouldBlock` if the mailbox is full.
    pub(crate) fn send_copy(&self, id: u64, fetched: &Fetched) -> io::Result<()> {
        match fetched {
            Fetched::Inline(payload, fds) => {
                let fds: Vec<BorrowedFd<'_>> = fds.iter().map(AsFd::as_fd).collect();
                self.send(id, payload, &fds)
            }
            Fetched::Memfd(memfd, fds) => {
                let mut head = [0u8; HEAD];
                head[..8].copy_from_slice(&id.to_le_bytes());
                head[8] = IN_MEMFD;
                let mut all = vec![memfd.as_fd()];
                all.extend(fds.iter().map(AsFd::as_fd));
                sys::socket::send_some(self.tx.as_fd(), &[&head], &all, true).map(drop)
            }
        }
    }

    /// Finds the message `id`, after dropping older ones.
    fn find(&self, id: u64, how: Find) -> io::Result<Option<Fetched>> {
        loop {
            let mut head = [0u8; HEAD];
            let Some(full) = sys::socket::peek_datagram(self.rx.as_fd(), &mut head)? else {
                return Ok(None);
            };
            let found = u64::from_le_bytes(head[..8].try_into().expect("8 bytes"));
            if found > id {
                return Ok(None);
            }
            let mut buf = vec![0u8; full.max(HEAD)];
            let mut fds = Vec::new();
            let n = if found == id && how == Find::Peek {
                sys::socket::peek(self.rx.as_fd(), &mut buf, &mut fds)?
            } else {
                sys::socket::recv(self.rx.as_fd(), &mut buf, &mut fds, true)?
            };
            if found < id {
                continue;
            }
            if how == Find::Drop {
                return Ok(None);
            }
            return parse(buf, n, fds).map(Some);
        }
    }

    /// Takes the first message (of any id), if there is one.
    pub(crate) fn take_first(&self) -> io::Result<Option<(u64, Fetched)>> {
        let mut head = [0u8; HEAD];
        let Some(full) = sys::socket::peek_datagram(self.rx.as_fd(), &mut head)? else {
            return Ok(None);
        };
        let found = u64::from_le_bytes(head[..8].try_into().expect("8 bytes"));
        let mut buf = vec![0u8; full.max(HEAD)];
        let mut fds = Vec::new();
        let n = sys::socket::recv(self.rx.as_fd(), &mut buf, &mut fds, true)?;
        parse(buf, n, fds).map(|f| Some((found, f)))
    }

    /// A copy of the first message (of any id; its descriptors
    /// duplicated), leaving it in place, if there is one.
    pub(crate) fn peek_first(&self) -> io::Result<Option<(u64, Fetched)>> {
        let mut head = [0u8; HEAD];
        let Some(full) = sys::socket::peek_datagram(self.rx.as_fd(), &mut head)? else {
            return Ok(None);
        };
        let found = u64::from_le_bytes(head[..8].try_into().expect("8 bytes"));
        let mut buf = vec![0u8; full.max(HEAD)];
        let mut fds = Vec::new();
        let n = sys::socket::peek(self.rx.as_fd(), &mut buf, &mut fds)?;
        parse(buf, n, fds).map(|f| Some((found, f)))
    }

    /// Drops the first message, if there is one.
    pub(crate) fn drop_first(&self) -> io::Result<()> {
        let mut head = [0u8; HEAD];
        if let Some(full) = sys::socket::peek_datagram(self.rx.as_fd(), &mut head)? {
            let mut buf = vec![0u8; full.max(HEAD)];
            let mut fds = Vec::new();
            sys::socket::recv(self.rx.as_fd(), &mut buf, &mut fds, true)?;
        }
        Ok(())
    }

    /// Whether a copy of `fetched` can be sent and still leave the mailbox
    /// room for another send: the kernel takes a send while the bytes the
    /// mailbox's messages occupy (at their kernel size, which this
    /// overestimates) are short of its buffer's size, whatever the size of
    /// the message sent. An empty mailbox always has room.
    pub(crate) fn has_room_for(&self, fetched: &Fetched) -> io::Result<bool> {
        let (queued, size) = sys::socket::send_buffer_fill(self.tx.as_fd())?;
        Ok(queued == 0 || queued.saturating_add(kernel_size(fetched.datagram_len())) < size)
    }

    /// Whether the mailbox's messages fill more than half of its buffer.
    pub(crate) fn is_crowded(&self) -> io::Result<bool> {
        let (queued, size) = sys::socket::send_buffer_fill(self.tx.as_fd())?;
        Ok(queued > size / 2)
    }

    /// The id of the first message, if there is one.
    pub(crate) fn first_id(&self) -> io::Result<Option<u64>> {
        let mut head = [0u8; HEAD];
        Ok(sys::socket::peek_datagram(self.rx.as_fd(), &mut head)?
            .map(|_| u64::from_le_bytes(head[..8].try_into().expect("8 bytes"))))
    }
}

impl Mailbox {
    /// Drops every message waiting, without waiting: after the ring was
    /// found corrupted and its records dropped, their messages are
    /// orphans, and enough of them would fill the mailbox for good.
    pub(crate) fn drain(&self) {
        let mut head = [0u8; HEAD];
        for _ in 0..4096 {
            match sys::socket::peek_datagram(self.rx.as_fd(), &mut head) {
                Ok(Some(full)) => {
                    let mut buf = vec![0u8; full.max(HEAD)];
                    let mut fds = Vec::new();
                    if sys::socket::recv(self.rx.as_fd(), &mut buf, &mut fds, true).is_err() {
                        return;
                    }
                }
                Ok(None) | Err(_) => return,
            }
        }
    }
}

/// A message taken out of the mailbox, its payload not yet read.
#[derive(Debug)]
pub(crate) enum Fetched {
    /// The payload came in the datagram.
    Inline(Vec<u8>, Vec<OwnedFd>),
    /// The payload is in this memfd.
    Memfd(OwnedFd, Vec<OwnedFd>),
}

impl Fetched {
    /// The length of its datagram (a memfd payload is not in it).
    fn datagram_len(&self) -> usize {
        match self {
            Fetched::Inline(payload, _) => HEAD + payload.len(),
            Fetched::Memfd(..) => HEAD,
        }
    }

    /// The payload and the handles (outside the consumer lock: a memfd may
    /// be large).
    pub(crate) fn finish(self) -> io::Result<(Vec<u8>, Vec<OwnedFd>)> {
        match self {
            Fetched::Inline(payload, fds) => Ok((payload, fds)),
            Fetched::Memfd(memfd, fds) => Ok((sys::shm::read_memfd(memfd.as_fd())?, fds)),
        }
    }
}

/// At least the bytes a datagram of `len` bytes occupies in a socket's
/// buffer: the kernel rounds its data up to an allocation size (at most
/// the next power of two) and adds its bookkeeping (well under 1 KiB).
fn kernel_size(len: usize) -> usize {
    len.saturating_add(512)
        .checked_next_power_of_two()
        .unwrap_or(usize::MAX)
        .saturating_add(1024)
}

/// What [`Mailbox::find`] does with the message it finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Find {
    Peek,
    Take,
    Drop,
}

/// A received mailbox message: `n` bytes of `buf` and the descriptors.
fn parse(mut buf: Vec<u8>, n: usize, mut fds: Vec<OwnedFd>) -> io::Result<Fetched> {
    if n < HEAD {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "a short mailbox message",
        ));
    }
    match buf[8] {
        IN_DATAGRAM => {
            buf.truncate(n);
            buf.drain(..HEAD);
            Ok(Fetched::Inline(buf, fds))
        }
        IN_MEMFD if !fds.is_empty() => {
            let memfd = fds.remove(0);
            Ok(Fetched::Memfd(memfd, fds))
        }
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "a malformed mailbox message",
        )),
    }
}
