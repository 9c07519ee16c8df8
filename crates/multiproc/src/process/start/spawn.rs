//! The *spawn* start method: the child runs this same executable again
//! (`/proc/self/exe`, through `posix_spawn`, whose cost does not grow with
//! the parent's memory). The boot hook recognises it before `main` and runs
//! the requested function; the user's `main` never runs in the child.

use std::io;
use std::os::fd::AsFd;

use super::{Reaper, Started};
use crate::process::launcher;
use crate::sys;
use crate::sys::boot::{BOOT_ENV, BOOT_FD};

/// Starts a child that waits for its start request on the returned channel.
pub(crate) fn start() -> io::Result<Started> {
    let (channel, theirs) = sys::socket::stream_pair()?;
    let me = sys::process::pid();
    let pid = launcher::run(move || {
        sys::process::spawn_self(
            theirs.as_fd(),
            BOOT_FD,
            "multiproc-child",
            (BOOT_ENV, &format!("child:{me}")),
        )
    })?;
    let pidfd = sys::process::pidfd_open(pid)?;
    Ok(Started {
        pid,
        pidfd: pidfd.into(),
        channel,
        reaper: Reaper::Direct,
    })
}
