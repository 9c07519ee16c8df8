//! The *spawn* start method: the child runs this same executable again
//! (`/proc/self/exe`, through `posix_spawn`, whose cost does not grow with
//! the parent's memory). The boot hook recognises it before `main` and runs
//! the requested function; the user's `main` never runs in the child.
//!
//! The child speaks first: it checks that this process made its channel and
//! runs its executable, then sends one byte; only then does this process
//! send the role's secret (`sys::boot`). So `start` returns once the child
//! has booted.

use std::io;
use std::os::fd::AsFd;
use std::time::Instant;

use super::{BOOT_TIMEOUT, Reaper, Started};
use crate::process::launcher;
use crate::sys;
use crate::sys::boot::{BOOT_ENV, BOOT_FD, Invitation, Role};

/// Starts a child that waits for its start request on the returned channel.
pub(crate) fn start() -> io::Result<Started> {
    let (channel, theirs) = sys::socket::stream_pair()?;
    let invitation = Invitation::new(Role::Child, theirs.as_fd())?;
    let role = invitation.role().to_owned();
    let pid = launcher::run(move || {
        sys::process::spawn_self(
            theirs.as_fd(),
            BOOT_FD,
            "multiproc-child",
            (BOOT_ENV, &role),
        )
    })?;
    let pidfd = sys::process::pidfd_open(pid)?;
    // A child that ends before it is admitted shows up at join time, with
    // its exit status; one that never boots is stopped here.
    if let Err(e) = invitation.admit(
        channel.as_fd(),
        pidfd.as_fd(),
        Instant::now() + BOOT_TIMEOUT,
    ) {
        let _ = sys::process::pidfd_signal(pidfd.as_fd(), libc::SIGKILL);
        let _ = sys::socket::wait_readable_one(pidfd.as_fd(), None);
        let _ = sys::process::reap_nohang(pidfd.as_fd());
        return Err(e);
    }
    Ok(Started {
        pid,
        pidfd: pidfd.into(),
        channel,
        reaper: Reaper::Direct,
    })
}
