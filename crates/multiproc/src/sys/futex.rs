//! Futexes on shared memory (never `FUTEX_PRIVATE_FLAG`: the waiters are in
//! other processes), and the liveness check used to recover from a dead
//! lock holder.

use std::sync::atomic::AtomicU32;
use std::time::Instant;

use rustix::thread::futex;

/// How a wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wake {
    /// Woken, or the word had already changed, or a signal interrupted: look
    /// again.
    Woken,
    /// The deadline passed.
    TimedOut,
}

/// Sleeps while `word` holds `expected`, until woken or `deadline`.
pub(crate) fn wait(word: &AtomicU32, expected: u32, deadline: Option<Instant>) -> Wake {
    let timeout = match deadline {
        None => None,
        Some(d) => {
            let now = Instant::now();
            if now >= d {
                return Wake::TimedOut;
            }
            let left = d - now;
            Some(rustix::thread::futex::Timespec {
                tv_sec: left.as_secs() as i64,
                tv_nsec: i64::from(left.subsec_nanos()),
            })
        }
    };
    match futex::wait(word, futex::Flags::empty(), expected, timeout.as_ref()) {
        Err(rustix::io::Errno::TIMEDOUT) => Wake::TimedOut,
        _ => Wake::Woken,
    }
}

/// Wakes up to `n` processes sleeping on `word`.
pub(crate) fn wake(word: &AtomicU32, n: u32) {
    let _ = futex::wake(word, futex::Flags::empty(), n);
}

/// The calling thread's id, as stored in lock words.
pub(crate) fn tid() -> u32 {
    rustix::thread::gettid().as_raw_nonzero().get() as u32
}

/// The calling process's id.
pub(crate) fn pid() -> u32 {
    rustix::process::getpid().as_raw_nonzero().get() as u32
}

/// Whether a thread or process with this id exists. A recycled id reads
/// as alive: recovery then waits for that process too, never steals a live
/// lock.
pub(crate) fn is_alive(id: u32) -> bool {
    let Some(pid) = rustix::process::Pid::from_raw(id as i32) else {
        return false;
    };
    !matches!(
        rustix::process::test_kill_process(pid),
        Err(rustix::io::Errno::SRCH)
    )
}

/// Gives the processor to another runnable thread.
pub(crate) fn yield_now() {
    rustix::thread::sched_yield();
}
