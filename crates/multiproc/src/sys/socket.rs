//! Unix stream sockets: pairs, whole-buffer sends, descriptor passing
//! (`SCM_RIGHTS`) and waiting for readiness with a deadline.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Instant;

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};

/// Most descriptors one message may carry.
pub(crate) const MAX_FDS: usize = 64;

/// A connected pair of Unix stream sockets, both close-on-exec.
pub(crate) fn stream_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

/// Sends every byte of `bufs`, in order, with `fds` attached to the first
/// byte. A peer that has gone away is an `EPIPE` error, never a SIGPIPE.
pub(crate) fn send_all(
    fd: BorrowedFd<'_>,
    bufs: &[&[u8]],
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut first = true;
    let mut idx = 0;
    let mut off = 0;
    while idx < bufs.len() {
        if off == bufs[idx].len() {
            idx += 1;
            off = 0;
            continue;
        }
        let mut iov: Vec<IoSlice<'_>> = Vec::with_capacity(bufs.len() - idx);
        iov.push(IoSlice::new(&bufs[idx][off..]));
        iov.extend(bufs[idx + 1..].iter().map(|b| IoSlice::new(b)));
        let mut control = SendAncillaryBuffer::new(&mut space);
        if first
            && !fds.is_empty()
            && (fds.len() > MAX_FDS || !control.push(SendAncillaryMessage::ScmRights(fds)))
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "too many descriptors",
            ));
        }
        let sent = match rustix::net::sendmsg(fd, &iov, &mut control, SendFlags::NOSIGNAL) {
            Ok(n) => n,
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        };
        first = false;
        let mut left = sent;
        while left > 0 && idx < bufs.len() {
            let avail = bufs[idx].len() - off;
            if left >= avail {
                left -= avail;
                idx += 1;
                off = 0;
            } else {
                off += left;
                left = 0;
            }
        }
    }
    if first && !fds.is_empty() {
        // Nothing to send but descriptors: carry them on one zero byte.
        return send_all(fd, &[&[0]], fds);
    }
    Ok(())
}

/// Receives up to `buf.len()` bytes and any descriptors that came with them.
/// Returns 0 bytes at end of stream. Does not block if `nonblocking`.
pub(crate) fn recv(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
    nonblocking: bool,
) -> io::Result<usize> {
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut flags = RecvFlags::CMSG_CLOEXEC;
    if nonblocking {
        flags |= RecvFlags::DONTWAIT;
    }
    loop {
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let mut iov = [IoSliceMut::new(buf)];
        match rustix::net::recvmsg(fd, &mut iov, &mut control, flags) {
            Ok(msg) => {
                for m in control.drain() {
                    if let RecvAncillaryMessage::ScmRights(received) = m {
                        fds.extend(received);
                    }
                }
                return Ok(msg.bytes);
            }
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Waits until one of `fds` is readable (or hung up), or until `deadline`.
/// Returns which ones are ready; all false means the deadline passed.
pub(crate) fn wait_readable(
    fds: &[BorrowedFd<'_>],
    deadline: Option<Instant>,
) -> io::Result<Vec<bool>> {
    loop {
        let mut polls: Vec<PollFd<'_>> =
            fds.iter().map(|f| PollFd::new(f, PollFlags::IN)).collect();
        let timeout = match deadline {
            None => None,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                Some(Timespec {
                    tv_sec: left.as_secs() as i64,
                    tv_nsec: i64::from(left.subsec_nanos()),
                })
            }
        };
        match rustix::event::poll(&mut polls, timeout.as_ref()) {
            Ok(_) => {
                let ready: Vec<bool> = polls.iter().map(|p| !p.revents().is_empty()).collect();
                if ready.iter().any(|r| *r) || deadline.is_some_and(|d| Instant::now() >= d) {
                    return Ok(ready);
                }
            }
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// The events of `fd` among `flags` (plus hang-up and error) right now,
/// without waiting.
fn events_now(fd: BorrowedFd<'_>, flags: PollFlags) -> io::Result<PollFlags> {
    let mut polls = [PollFd::new(&fd, flags)];
    let zero = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    loop {
        match rustix::event::poll(&mut polls, Some(&zero)) {
            Ok(_) => return Ok(polls[0].revents()),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Whether `fd` is readable right now, without waiting.
pub(crate) fn is_readable(fd: BorrowedFd<'_>) -> io::Result<bool> {
    Ok(!events_now(fd, PollFlags::IN)?.is_empty())
}

/// Whether the peer of a stream socket has shut down or closed its end,
/// without waiting (and without reading what it sent before).
pub(crate) fn peer_closed(fd: BorrowedFd<'_>) -> io::Result<bool> {
    let r = events_now(fd, PollFlags::RDHUP)?;
    Ok(r.intersects(PollFlags::RDHUP | PollFlags::HUP | PollFlags::ERR))
}

/// Duplicates a descriptor (close-on-exec).
pub(crate) fn dup(fd: impl AsFd) -> io::Result<OwnedFd> {
    Ok(rustix::io::fcntl_dupfd_cloexec(fd, 0)?)
}

/// One `sendmsg` of `bufs` (in order), with `fds` attached to the first
/// byte. Returns how many bytes went out; `WouldBlock` if none could and
/// `nonblocking` is set. A vanished peer is `EPIPE`, never SIGPIPE.
pub(crate) fn send_some(
    fd: BorrowedFd<'_>,
    bufs: &[&[u8]],
    fds: &[BorrowedFd<'_>],
    nonblocking: bool,
) -> io::Result<usize> {
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    // Up to 8 buffers, the common case, need no allocation.
    let mut inline = [IoSlice::new(&[]); 8];
    let heap: Vec<IoSlice<'_>>;
    let iov: &[IoSlice<'_>] = if bufs.len() <= inline.len() {
        for (slot, b) in inline.iter_mut().zip(bufs) {
            *slot = IoSlice::new(b);
        }
        &inline[..bufs.len()]
    } else {
        heap = bufs.iter().map(|b| IoSlice::new(b)).collect();
        &heap
    };
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty()
        && (fds.len() > MAX_FDS || !control.push(SendAncillaryMessage::ScmRights(fds)))
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "too many descriptors",
        ));
    }
    let mut flags = SendFlags::NOSIGNAL;
    if nonblocking {
        flags |= SendFlags::DONTWAIT;
    }
    loop {
        match rustix::net::sendmsg(fd, iov, &mut control, flags) {
            Ok(n) => return Ok(n),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Waits until `fd` is writable or readable, or `deadline` passes. Returns
/// `(readable, writable)`.
pub(crate) fn wait_read_write(
    fd: BorrowedFd<'_>,
    deadline: Option<Instant>,
) -> io::Result<(bool, bool)> {
    loop {
        let mut polls = [PollFd::new(&fd, PollFlags::IN | PollFlags::OUT)];
        let timeout = deadline.map(|d| {
            let left = d.saturating_duration_since(Instant::now());
            Timespec {
                tv_sec: left.as_secs() as i64,
                tv_nsec: i64::from(left.subsec_nanos()),
            }
        });
        match rustix::event::poll(&mut polls, timeout.as_ref()) {
            Ok(_) => {
                let ev = polls[0].revents();
                let hup = ev.intersects(PollFlags::HUP | PollFlags::ERR);
                return Ok((
                    ev.contains(PollFlags::IN) || hup,
                    ev.contains(PollFlags::OUT) || hup,
                ));
            }
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Asks for socket buffers of `bytes` each way (the kernel caps the size).
pub(crate) fn set_buffer_sizes(fd: BorrowedFd<'_>, bytes: usize) {
    let _ = rustix::net::sockopt::set_socket_send_buffer_size(fd, bytes);
    let _ = rustix::net::sockopt::set_socket_recv_buffer_size(fd, bytes);
}

/// A connected pair of Unix sequenced-packet sockets (message boundaries
/// kept), both close-on-exec.
pub(crate) fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

/// Looks at the next datagram without taking it or its descriptors:
/// copies its start into `buf` and returns its full length, or `None` if
/// none is waiting.
pub(crate) fn peek_datagram(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Option<usize>> {
    loop {
        match rustix::net::recv(
            fd,
            &mut *buf,
            RecvFlags::PEEK | RecvFlags::DONTWAIT | RecvFlags::TRUNC,
        ) {
            Ok((_, full)) => return Ok(Some(full)),
            Err(Errno::AGAIN) => return Ok(None),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Receives at most `max` bytes into the spare capacity of `buf` (which
/// must have at least `max` spare), without zeroing it first; returns how
/// many arrived (0 at end of stream, or if the peer reset the connection).
pub(crate) fn recv_into_spare(
    fd: BorrowedFd<'_>,
    buf: &mut Vec<u8>,
    max: usize,
) -> io::Result<usize> {
    let spare = buf.spare_capacity_mut();
    let max = max.min(spare.len());
    loop {
        match rustix::net::recv(fd, &mut spare[..max], RecvFlags::empty()) {
            Ok(((filled, _), _)) => {
                let n = filled.len();
                // SAFETY: `recv` initialised the first `n` bytes of the
                // spare capacity (`filled` is exactly that prefix), and
                // `n <= max <= spare capacity`.
                unsafe { buf.set_len(buf.len() + n) };
                return Ok(n);
            }
            Err(Errno::INTR) => continue,
            Err(Errno::CONNRESET) => return Ok(0),
            Err(e) => return Err(e.into()),
        }
    }
}

/// One plain `send` (no descriptors), never raising SIGPIPE.
pub(crate) fn send_plain(fd: BorrowedFd<'_>, buf: &[u8], nonblocking: bool) -> io::Result<usize> {
    let mut flags = SendFlags::NOSIGNAL;
    if nonblocking {
        flags |= SendFlags::DONTWAIT;
    }
    loop {
        match rustix::net::send(fd, buf, flags) {
            Ok(n) => return Ok(n),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}
