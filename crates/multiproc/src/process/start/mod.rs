//! The three ways to start a child, one file each, and what they return.
//!
//! * [`fork`]: copy this process; the child runs the closure it was given.
//! * [`spawn`]: run this executable again; the boot hook runs the function.
//! * [`forkserver`]: ask a small server, itself started with spawn while it
//!   had one thread, to fork a child that runs the function.
//!
//! `docs/start-methods.md` compares them.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::status::ExitStatus;
use crate::sys;

pub(crate) mod fork;
pub(crate) mod forkserver;
pub(crate) mod spawn;

/// How long a re-executed child (or the forkserver) may take to boot and
/// say it is ready.
pub(crate) const BOOT_TIMEOUT: Duration = Duration::from_secs(20);

/// A child that has been started.
#[derive(Debug)]
pub(crate) struct Started {
    pub pid: i32,
    /// Shared with the registry behind `active_children`.
    pub pidfd: Arc<OwnedFd>,
    /// The parent's end of the channel to the child.
    pub channel: OwnedFd,
    pub reaper: Reaper,
}

/// Who learns the child's exit status.
#[derive(Debug)]
pub(crate) enum Reaper {
    /// The child is ours: `waitid` on its pidfd.
    Direct,
    /// The child is the forkserver's: it sends the status on this socket.
    Server(OwnedFd),
}

impl Reaper {
    /// Waits until `deadline` for the child's exit status; `None` on timeout.
    pub(crate) fn wait(
        &mut self,
        pidfd: BorrowedFd<'_>,
        deadline: Option<Instant>,
    ) -> io::Result<Option<ExitStatus>> {
        match self {
            Reaper::Direct if deadline.is_none() => {
                let raw = sys::process::reap_blocking(pidfd)?;
                Ok(Some(ExitStatus::from_raw(raw)))
            }
            Reaper::Direct => loop {
                if let Some(raw) = sys::process::reap_nohang(pidfd)? {
                    return Ok(Some(ExitStatus::from_raw(raw)));
                }
                if !sys::socket::wait_readable_one(pidfd, deadline)? {
                    return Ok(None);
                }
            },
            Reaper::Server(status) => {
                if !sys::socket::wait_readable_one(status.as_fd(), deadline)? {
                    return Ok(None);
                }
                let mut buf = [0u8; 8];
                let mut got = 0;
                let mut fds = Vec::new();
                while got < buf.len() {
                    let n = sys::socket::recv(status.as_fd(), &mut buf[got..], &mut fds, false)?;
                    if n == 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the forkserver exited before reporting the child's exit status",
                        ));
                    }
                    got += n;
                }
                ExitStatus::from_bytes(buf).map(Some).ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        "bad exit status from the forkserver",
                    )
                })
            }
        }
    }
}
