//! The *fork* start method: the child is a copy of this process and runs a
//! closure directly. Fastest from a small parent; its cost grows with the
//! parent's memory (page tables are copied).
//!
//! In a parent with other threads, a lock one of them held at the fork stays
//! locked in the child forever. multiproc's own code in the child takes no
//! lock it cannot prove free: the registries it inherits are locked by the
//! forking thread across the fork, those it must not inherit are
//! `sys::fork_local::ForkLocal` (fresh in the child), the panic hook is
//! installed before it, and a
//! panic is reported without std's stderr or backtrace locks. The user's
//! closure carries the rest of that risk, as in C and in Python; the
//! forkserver method does not.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};

use super::{Reaper, Started};
use crate::process::{child, info, launcher};
use crate::sys;
use crate::sys::code::Reply;
use crate::wire::handles;

/// Forks a child that records `lineage`, runs `body` and sends back the
/// result frame it makes. With `close_handles`, the child first releases
/// the descriptors of the parent's connections and other handles (their
/// numbers stay taken, pointing at `/dev/null`, for owners a `static` may
/// still reach): a function receives its handles through its argument,
/// like under spawn.
///
/// `body` gets the child's end of the channel (to read its argument from,
/// if it has one) and makes the result frame. It is called by value, from
/// the closure's own copy of it: no box whose state a call would write
/// (each write to a heap page the child shares with its parent is a
/// copy-on-write fault on the way to its exit).
pub(crate) fn start<F>(lineage: info::Lineage, body: F, close_handles: bool) -> io::Result<Started>
where
    F: FnOnce(BorrowedFd<'_>) -> Reply + Send + 'static,
{
    let (channel, theirs) = sys::socket::stream_pair()?;
    // Never install the hook in the child: its lock may be held there.
    child::install_panic_hook();
    let pid = launcher::run(move || {
        // Our own locks are held across the fork, so the child gets them
        // from the thread that continues in it, never from a lost thread.
        let guards = info::lock_for_fork();
        let handles = handles::lock_for_fork();
        // Whether the child has descriptors to release: if not, it runs
        // none of that code (each stretch of code a child runs first is a
        // page fault).
        let release = close_handles && handles.holds_any();
        // A fork from the launcher thread is a fork from a process with
        // at least two threads: no need to count them.
        let single_threaded =
            sys::process::is_main_thread() && sys::process::surely_single_threaded();
        if single_threaded {
            // The child flushes standard output before it exits: made here
            // (once per process), so that the child does not make it (an
            // allocation and writes to pages it shares with its parent,
            // each a copy-on-write fault) only to flush nothing.
            let _ = std::io::stdout();
        }
        sys::process::fork_child(move || {
            guards.become_child(lineage);
            if release {
                handles.release_inherited();
            } else {
                drop(handles);
            }
            if !single_threaded {
                child::forked_from_threads();
            }
            child::set_last_words(theirs.as_fd(), child::kind::PANIC);
            let code = child::reply(theirs.as_fd(), body(theirs.as_fd()));
            if single_threaded {
                // Only here is it certain that no lost thread holds the
                // standard streams' locks.
                sys::process::flush_std_streams();
            }
            // The exit that follows closes it: no `close` of our own.
            std::mem::forget(theirs);
            code
        })
    })?;
    let pidfd = sys::process::pidfd_open(pid)?;
    Ok(Started {
        pid,
        pidfd: pidfd.into(),
        channel,
        reaper: Reaper::Direct,
    })
}
