//! Unix stream sockets: pairs, whole-buffer sends, descriptor passing
//! (`SCM_RIGHTS`) and waiting for readiness with a deadline.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::Instant;

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
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
/// (Blocking [`send_some`] calls: one path passes descriptors.)
pub(crate) fn send_all(
    fd: BorrowedFd<'_>,
    bufs: &[&[u8]],
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    if bufs.iter().all(|b| b.is_empty()) {
        if fds.is_empty() {
            return Ok(());
        }
        // Nothing to send but descriptors: carry them on one zero byte.
        return send_some(fd, &[&[0]], fds, false).map(drop);
    }
    let mut fds = fds;
    let (mut idx, mut off) = (0, 0);
    // The pieces left, on the stack when they are few (a frame's header
    // and payload): no allocation, which in a forked child would also
    // write to heap pages it shares with its parent.
    let mut few: [&[u8]; 4] = [&[]; 4];
    let mut many: Vec<&[u8]> = Vec::new();
    while idx < bufs.len() {
        if off == bufs[idx].len() {
            idx += 1;
            off = 0;
            continue;
        }
        let (head, rest) = (&bufs[idx][off..], &bufs[idx + 1..]);
        let iov: &[&[u8]] = if rest.len() < few.len() {
            few[0] = head;
            few[1..=rest.len()].copy_from_slice(rest);
            &few[..=rest.len()]
        } else {
            many.clear();
            many.push(head);
            many.extend_from_slice(rest);
            &many
        };
        let mut left = send_some(fd, iov, fds, false)?;
        fds = &[];
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
    Ok(())
}

/// A message carried more descriptors than fit in the receive buffer
/// ([`MAX_FDS`]): the kernel discarded the rest (`MSG_CTRUNC`).
///
/// [`recv`] then closes the descriptors that did arrive and fails with an
/// [`io::Error`] of kind `InvalidData` that wraps this type (see
/// [`is_descriptors_truncated`]). The bytes of that read are consumed: the
/// stream has lost its place, and its owner should stop using it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "a message carried more descriptors than fit ({MAX_FDS} at most); the kernel discarded the rest"
)]
pub(crate) struct DescriptorsTruncated;

impl DescriptorsTruncated {
    fn error() -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, DescriptorsTruncated)
    }
}

/// Whether `e` is the [`DescriptorsTruncated`] failure of [`recv`].
pub(crate) fn is_descriptors_truncated(e: &io::Error) -> bool {
    e.get_ref()
        .is_some_and(|inner| inner.is::<DescriptorsTruncated>())
}

/// Receives up to `buf.len()` bytes and any descriptors that came with them.
/// Returns 0 bytes at end of stream. Does not block if `nonblocking`.
///
/// A message with more descriptors than [`MAX_FDS`] is an error
/// ([`DescriptorsTruncated`]), never a silent loss.
pub(crate) fn recv(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
    nonblocking: bool,
) -> io::Result<usize> {
    recv_with(fd, buf, fds, nonblocking, false)
}

/// [`recv`] without removing the message (`MSG_PEEK`): the bytes are
/// copied and the descriptors duplicated into this process, and the next
/// receive gets the same message again. Never blocks.
pub(crate) fn peek(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> io::Result<usize> {
    recv_with(fd, buf, fds, true, true)
}

fn recv_with(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
    nonblocking: bool,
    peek: bool,
) -> io::Result<usize> {
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut flags = RecvFlags::CMSG_CLOEXEC;
    if nonblocking {
        flags |= RecvFlags::DONTWAIT;
    }
    if peek {
        flags |= RecvFlags::PEEK;
    }
    loop {
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let mut iov = [IoSliceMut::new(buf)];
        match rustix::net::recvmsg(fd, &mut iov, &mut control, flags) {
            Ok(msg) => {
                let mut got = Vec::new();
                for m in control.drain() {
                    if let RecvAncillaryMessage::ScmRights(received) = m {
                        got.extend(received);
                    }
                }
                if msg.flags.contains(ReturnFlags::CTRUNC) {
                    // The kernel discarded the descriptors that did not
                    // fit; the ones that did are closed here, with `got`.
                    drop(got);
                    return Err(DescriptorsTruncated::error());
                }
                fds.extend(got);
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
    let mut polls: Vec<PollFd<'_>> = fds.iter().map(|f| PollFd::new(f, PollFlags::IN)).collect();
    poll_until(&mut polls, deadline)?;
    Ok(polls.iter().map(|p| !p.revents().is_empty()).collect())
}

/// [`wait_readable`] for one descriptor, with nothing allocated (a wait
/// of a child's join, of a pipe's reader): whether it is readable (or
/// hung up); false means the deadline passed.
pub(crate) fn wait_readable_one(fd: BorrowedFd<'_>, deadline: Option<Instant>) -> io::Result<bool> {
    let mut polls = [PollFd::new(&fd, PollFlags::IN)];
    poll_until(&mut polls, deadline)?;
    Ok(!polls[0].revents().is_empty())
}

/// Polls `polls` until one has an event, or until `deadline`.
fn poll_until(polls: &mut [PollFd<'_>], deadline: Option<Instant>) -> io::Result<()> {
    loop {
        let timeout = poll_timeout(deadline);
        match rustix::event::poll(polls, timeout.as_ref()) {
            Ok(_) => {
                if polls.iter().any(|p| !p.revents().is_empty())
                    || deadline.is_some_and(|d| Instant::now() >= d)
                {
                    return Ok(());
                }
            }
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Waits until one of `fds` is ready for what is asked of it (the flag:
/// `true` to write, `false` to read), or until `deadline`. Returns, for
/// each, whether it is `(readable, writable)`; a hang-up or an error
/// counts as both, so that its owner tries and learns what happened. All
/// false means the deadline passed.
pub(crate) fn wait_events(
    fds: &[(BorrowedFd<'_>, bool)],
    deadline: Option<Instant>,
) -> io::Result<Vec<(bool, bool)>> {
    loop {
        let mut polls: Vec<PollFd<'_>> = fds
            .iter()
            .map(|(f, write)| {
                PollFd::new(
                    f,
                    if *write {
                        PollFlags::OUT
                    } else {
                        PollFlags::IN
                    },
                )
            })
            .collect();
        let timeout = poll_timeout(deadline);
        match rustix::event::poll(&mut polls, timeout.as_ref()) {
            Ok(_) => {
                let ready: Vec<(bool, bool)> = polls
                    .iter()
                    .map(|p| {
                        let ev = p.revents();
                        let bad = ev.intersects(PollFlags::HUP | PollFlags::ERR | PollFlags::NVAL);
                        (
                            bad || ev.contains(PollFlags::IN),
                            bad || ev.contains(PollFlags::OUT),
                        )
                    })
                    .collect();
                if ready.iter().any(|&(r, w)| r || w)
                    || deadline.is_some_and(|d| Instant::now() >= d)
                {
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
        let timeout = poll_timeout(deadline);
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

/// Who wrote bytes on (or created) a Unix socket, as the kernel attests
/// it: the writer cannot choose these values (only a process with
/// `CAP_SYS_ADMIN`, `CAP_SETUID` or `CAP_SETGID` could claim another's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Credentials {
    /// Process id (the thread group id), in this process's pid namespace.
    pub pid: i32,
    /// Effective user id.
    pub uid: u32,
    /// Effective group id.
    pub gid: u32,
}

/// The credentials of the process that created the peer of a connected
/// Unix socket, recorded when it called `socketpair` or `connect`
/// (`SO_PEERCRED`). Fails with `ENOTSOCK` (or similar) for anything that
/// is not a Unix socket.
pub(crate) fn peer_credentials(fd: BorrowedFd<'_>) -> io::Result<Credentials> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` is a writable `ucred` and `len` says its exact size;
    // the kernel writes at most `len` bytes. (Read by hand rather than
    // through rustix, whose `UCred` cannot hold the pid 0 the kernel
    // reports for a peer in another pid namespace.)
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if len as usize != std::mem::size_of::<libc::ucred>() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "short SO_PEERCRED answer",
        ));
    }
    Ok(Credentials {
        pid: cred.pid,
        uid: cred.uid,
        gid: cred.gid,
    })
}

/// Asks the kernel to attach the writer's credentials to every byte sent
/// to this socket from now on (`SO_PASSCRED`), and to report them to
/// [`recv_with_credentials`]. Set on a socket's receiving end, it also
/// covers bytes written before the receiver starts reading.
///
/// While it is on, read the socket only with [`recv_with_credentials`]:
/// every read then brings a credentials message, which the other receive
/// functions have no room for. [`stop_pass_credentials`] turns it off.
pub(crate) fn set_pass_credentials(fd: BorrowedFd<'_>) -> io::Result<()> {
    Ok(rustix::net::sockopt::set_socket_passcred(fd, true)?)
}

/// Turns [`set_pass_credentials`] off: later reads bring no credentials
/// (also of bytes already queued).
pub(crate) fn stop_pass_credentials(fd: BorrowedFd<'_>) -> io::Result<()> {
    Ok(rustix::net::sockopt::set_socket_passcred(fd, false)?)
}

/// What is left of `deadline`, as `poll` takes it (`None`: no deadline).
fn poll_timeout(deadline: Option<Instant>) -> Option<Timespec> {
    deadline.map(|d| {
        let left = d.saturating_duration_since(Instant::now());
        Timespec {
            tv_sec: left.as_secs() as i64,
            tv_nsec: i64::from(left.subsec_nanos()),
        }
    })
}

/// How full a socket's send buffer is: the bytes its sends still occupy
/// (`SIOCOUTQ`: for a Unix socket, the datagrams sent and not yet
/// received, at their kernel size) and the buffer's size (`SO_SNDBUF`). A
/// send that does not wait fails once the first reaches the second.
pub(crate) fn send_buffer_fill(fd: BorrowedFd<'_>) -> io::Result<(usize, usize)> {
    let mut queued: libc::c_int = 0;
    // SAFETY: `SIOCOUTQ` (the same request as `TIOCOUTQ`) writes one
    // `int` through its argument, which points to `queued`, a writable
    // `c_int` that outlives the call.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCOUTQ, &raw mut queued) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    let size = rustix::net::sockopt::socket_send_buffer_size(fd)?;
    Ok((usize::try_from(queued).unwrap_or(0), size))
}

/// Bytes waiting to be read on a socket (`FIONREAD`).
pub(crate) fn pending_bytes(fd: BorrowedFd<'_>) -> io::Result<u64> {
    Ok(rustix::io::ioctl_fionread(fd)?)
}

/// Like [`recv`], and also returns the credentials of the process that
/// wrote the bytes received (`None` if the kernel attached none: the
/// bytes were written while neither end had `SO_PASSCRED`, or by a process
/// outside this pid namespace). One call never returns bytes of two
/// writers: the kernel does not merge writes whose credentials differ.
pub(crate) fn recv_with_credentials(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
    nonblocking: bool,
) -> io::Result<(usize, Option<Credentials>)> {
    // Room for MAX_FDS descriptors and one `ucred`, each with its 16-byte
    // header (CMSG_SPACE), and no more; `u64` elements give the alignment
    // `cmsghdr` needs. Without credentials a few more descriptors would
    // fit: more than MAX_FDS is refused below all the same.
    const CONTROL: usize = (16 + MAX_FDS * 4).next_multiple_of(8) + 16 + 16;
    let mut control = [0u64; CONTROL / 8];
    let mut flags = libc::MSG_CMSG_CLOEXEC;
    if nonblocking {
        flags |= libc::MSG_DONTWAIT;
    }
    loop {
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: an all-zero `msghdr` is a valid value (null pointers,
        // zero lengths); its fields are set below.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control) as _;
        // SAFETY: `msg` points to one iovec covering `buf` (writable for
        // `buf.len()` bytes) and to `control` (writable for its size); both
        // outlive the call, and the kernel writes within those bounds.
        let n = unsafe { libc::recvmsg(fd.as_raw_fd(), &raw mut msg, flags) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let mut got = Vec::new();
        let mut creds = None;
        // SAFETY: the kernel filled `control` and set `msg_controllen` to
        // the bytes it used, which lie within `control`; CMSG_FIRSTHDR and
        // CMSG_NXTHDR walk only headers inside that length, and each
        // header's `cmsg_len` (written by the kernel, not by the peer)
        // bounds its data. The descriptors of SCM_RIGHTS were installed in
        // this process for us, so each is owned by nobody else.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&raw const msg);
            while !c.is_null() {
                let data = libc::CMSG_DATA(c);
                let header = data as usize - c as usize;
                let len = ((*c).cmsg_len as usize).saturating_sub(header);
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                    for i in 0..len / std::mem::size_of::<i32>() {
                        let raw = std::ptr::read_unaligned(data.cast::<i32>().add(i));
                        got.push(std::os::fd::FromRawFd::from_raw_fd(raw));
                    }
                } else if (*c).cmsg_level == libc::SOL_SOCKET
                    && (*c).cmsg_type == libc::SCM_CREDENTIALS
                    && len >= std::mem::size_of::<libc::ucred>()
                {
                    let u = std::ptr::read_unaligned(data.cast::<libc::ucred>());
                    creds = Some(Credentials {
                        pid: u.pid,
                        uid: u.uid,
                        gid: u.gid,
                    });
                }
                c = libc::CMSG_NXTHDR(&raw const msg, c);
            }
        }
        if msg.msg_flags & libc::MSG_CTRUNC != 0 || got.len() > MAX_FDS {
            drop(got);
            return Err(DescriptorsTruncated::error());
        }
        fds.extend(got);
        // pid 0: the kernel had no writer to report.
        return Ok((n as usize, creds.filter(|c: &Credentials| c.pid != 0)));
    }
}

/// A listening Unix stream socket bound to the abstract address `name`
/// (no file: the kernel removes the address when the socket's last
/// descriptor closes, even if its holder is killed). Close-on-exec and
/// non-blocking. An
/// address already bound is an `AddrInUse` error.
pub(crate) fn listen_abstract(name: &[u8]) -> io::Result<OwnedFd> {
    let addr = rustix::net::SocketAddrUnix::new_abstract_name(name)?;
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?;
    rustix::net::bind(&fd, &addr)?;
    rustix::net::listen(&fd, 64)?;
    rustix::io::ioctl_fionbio(&fd, true)?;
    Ok(fd)
}

/// A Unix stream socket connected to the abstract address `name`
/// (close-on-exec). An address nobody listens on is `ConnectionRefused`.
pub(crate) fn connect_abstract(name: &[u8]) -> io::Result<OwnedFd> {
    let addr = rustix::net::SocketAddrUnix::new_abstract_name(name)?;
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?;
    loop {
        match rustix::net::connect(&fd, &addr) {
            Ok(()) => return Ok(fd),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Accepts one connection on a listening socket made by
/// [`listen_abstract`] (which does not block: `WouldBlock` if none is
/// waiting). The accepted socket blocks, and is close-on-exec.
pub(crate) fn accept(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    loop {
        match rustix::net::accept_with(fd, SocketFlags::CLOEXEC) {
            Ok(c) => return Ok(c),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends one byte with `n` duplicates of `fd` attached, past the
    /// [`MAX_FDS`] that [`send_all`] allows, as a hostile peer would.
    fn send_many(sock: BorrowedFd<'_>, fd: BorrowedFd<'_>, n: usize) {
        let dups: Vec<OwnedFd> = (0..n).map(|_| dup(fd).unwrap()).collect();
        let borrowed: Vec<BorrowedFd<'_>> = dups.iter().map(AsFd::as_fd).collect();
        let mut space = vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(200))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        assert!(control.push(SendAncillaryMessage::ScmRights(&borrowed)));
        let sent = rustix::net::sendmsg(
            sock,
            &[IoSlice::new(b"x")],
            &mut control,
            SendFlags::empty(),
        )
        .unwrap();
        assert_eq!(sent, 1);
    }

    fn open_fds() -> usize {
        std::fs::read_dir("/proc/self/fd").unwrap().count()
    }

    #[test]
    fn descriptors_that_do_not_fit_are_an_error_and_the_rest_are_closed() {
        let (a, b) = stream_pair().unwrap();
        send_many(a.as_fd(), a.as_fd(), 100);
        let mut fds = Vec::new();
        let err = recv(b.as_fd(), &mut [0u8; 4], &mut fds, false).unwrap_err();
        assert!(is_descriptors_truncated(&err), "{err}");
        assert!(fds.is_empty());

        set_pass_credentials(b.as_fd()).unwrap();
        send_many(a.as_fd(), a.as_fd(), 100);
        let err = recv_with_credentials(b.as_fd(), &mut [0u8; 4], &mut fds, false).unwrap_err();
        assert!(is_descriptors_truncated(&err), "{err}");
        assert!(fds.is_empty());

        // Within the limit, both receive every descriptor, and the writer.
        let before = open_fds();
        send_many(a.as_fd(), a.as_fd(), MAX_FDS);
        let (n, who) = recv_with_credentials(b.as_fd(), &mut [0u8; 4], &mut fds, false).unwrap();
        assert_eq!((n, fds.len()), (1, MAX_FDS));
        assert_eq!(who.map(|c| c.pid), Some(super::super::process::pid()));
        fds.clear();
        // Other tests open descriptors in parallel: only a leak of 64 counts.
        assert!(open_fds() < before + MAX_FDS / 2);
    }

    #[test]
    fn waiting_for_one_descriptor_says_readable_hung_up_or_timed_out() {
        let (a, b) = stream_pair().unwrap();
        let soon = || Some(Instant::now() + std::time::Duration::from_millis(30));
        // Nothing to read: false once the deadline has passed, not before.
        let t0 = Instant::now();
        assert!(!wait_readable_one(b.as_fd(), soon()).unwrap());
        assert!(t0.elapsed() >= std::time::Duration::from_millis(30));
        // A byte to read, then a hang-up with nothing left: both ready.
        send_all(a.as_fd(), &[b"x"], &[]).unwrap();
        assert!(wait_readable_one(b.as_fd(), soon()).unwrap());
        assert!(wait_readable_one(b.as_fd(), None).unwrap());
        let mut buf = [0u8; 1];
        assert_eq!(
            recv(b.as_fd(), &mut buf, &mut Vec::new(), false).unwrap(),
            1
        );
        drop(a);
        assert!(wait_readable_one(b.as_fd(), soon()).unwrap());
        // The general form agrees, descriptor by descriptor.
        let (c, d) = stream_pair().unwrap();
        send_all(c.as_fd(), &[b"y"], &[]).unwrap();
        assert_eq!(
            wait_readable(&[b.as_fd(), d.as_fd(), c.as_fd()], soon()).unwrap(),
            [true, true, false]
        );
    }

    #[test]
    fn send_all_delivers_every_piece_in_order_however_the_writes_split() {
        // Up to three pieces after the first go on the stack, more in a
        // vector; pieces larger than the socket's buffer make the writes
        // stop part way through one.
        for count in [1usize, 2, 4, 5, 9] {
            let pieces: Vec<Vec<u8>> = (0..count)
                .map(|i| {
                    let len = [0, 1, 300_000, 7, 65_536][i % 5];
                    (0..len).map(|j| (i * 31 + j) as u8).collect()
                })
                .collect();
            let want: Vec<u8> = pieces.concat();
            let (a, b) = stream_pair().unwrap();
            let reader = std::thread::spawn(move || {
                let mut got = Vec::new();
                let mut buf = vec![0u8; 10_000];
                let mut fds = Vec::new();
                loop {
                    match recv(b.as_fd(), &mut buf, &mut fds, false).unwrap() {
                        0 => return got,
                        n => got.extend_from_slice(&buf[..n]),
                    }
                }
            });
            let bufs: Vec<&[u8]> = pieces.iter().map(Vec::as_slice).collect();
            send_all(a.as_fd(), &bufs, &[]).unwrap();
            drop(a);
            let got = reader.join().unwrap();
            assert!(
                got == want,
                "{count} pieces: {} bytes, want {}",
                got.len(),
                want.len()
            );
        }
    }
}
