//! The *fork* start method: the child is a copy of this process and runs a
//! closure directly. Fastest from a small parent; its cost grows with the
//! parent's memory (page tables are copied), and in a parent with other
//! threads, locks they held stay locked in the child.

use std::io;
use std::os::fd::AsFd;

use super::{Reaper, Started};
use crate::process::{child, info, launcher};
use crate::sys;

/// Forks a child that records `lineage`, runs `body` and sends back the
/// result frame it makes.
pub(crate) fn start(
    lineage: info::Lineage,
    body: Box<dyn FnOnce() -> (u8, Vec<u8>) + Send>,
) -> io::Result<Started> {
    let (channel, theirs) = sys::socket::stream_pair()?;
    let pid = launcher::run(move || {
        sys::process::fork_child(move || {
            info::become_child(lineage);
            let (kind, payload) = child::run_body(body);
            child::reply(theirs.as_fd(), kind, &payload);
            0
        })
    })?;
    let pidfd = sys::process::pidfd_open(pid)?;
    Ok(Started {
        pid,
        pidfd,
        channel,
        reaper: Reaper::Direct,
    })
}
