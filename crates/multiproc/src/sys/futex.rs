//! Futexes on shared memory (never `FUTEX_PRIVATE_FLAG`: the waiters are in
//! other processes), and the cached process and thread ids.

use std::cell::Cell;
use std::sync::Once;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
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

/// Wakes up to `n` processes sleeping on `word` (`u32::MAX`: all of them).
pub(crate) fn wake(word: &AtomicU32, n: u32) {
    // The kernel reads the count as an `int`: `u32::MAX` would be -1,
    // which wakes exactly one sleeper (the count is checked after each
    // wake-up). `i32::MAX` means all, as glibc's broadcasts say it.
    let n = n.min(i32::MAX as u32);
    let _ = futex::wake(word, futex::Flags::empty(), n);
}

/// The fork generation and the cached process id, side by side: a forked
/// child writes both (the generation in the fork handler, the id at its
/// first [`pid`]), and in one page that is one copy-on-write fault, not two.
#[repr(C, align(16))]
struct Identity {
    /// Bumped in every child right after a fork (a `pthread_atfork`
    /// handler), so ids cached before the fork are never used after it.
    generation: AtomicU32,
    /// `generation << 32 | pid`, the cached process id.
    pid: AtomicU64,
}

static IDENTITY: Identity = Identity {
    generation: AtomicU32::new(1),
    pid: AtomicU64::new(0),
};

thread_local! {
    /// `(generation, tid)`, the cached thread id.
    static TID: Cell<(u32, u32)> = const { Cell::new((0, 0)) };
}

extern "C" fn after_fork_in_child() {
    IDENTITY.generation.fetch_add(1, Ordering::Relaxed);
}

/// The fork generation: bumped in every forked child, so that values
/// cached per process are computed again there.
pub(crate) fn generation() -> u32 {
    static ATFORK: Once = Once::new();
    ATFORK.call_once(|| {
        // SAFETY: the handler is a plain `extern "C" fn` that only touches
        // an atomic, which is async-signal-safe and valid in a fork child.
        unsafe { libc::pthread_atfork(None, None, Some(after_fork_in_child)) };
    });
    IDENTITY.generation.load(Ordering::Relaxed)
}

/// The fork generation as last bumped, for the fast path of a cache:
/// without registering the fork handler. A cache stores a generation only
/// from [`generation`], which registers it first, so a value cached before
/// a fork never matches in the child.
#[inline]
pub(crate) fn generation_unchecked() -> u32 {
    IDENTITY.generation.load(Ordering::Relaxed)
}

/// The calling thread's id. Cached: asking the kernel on every lock was
/// half the cost of a queue operation.
pub(crate) fn tid() -> u32 {
    TID.with(|c| {
        let (cached_g, tid) = c.get();
        if cached_g == generation_unchecked() {
            return tid;
        }
        let g = generation();
        let tid = rustix::thread::gettid().as_raw_nonzero().get() as u32;
        c.set((g, tid));
        tid
    })
}

/// The calling process's id (cached like [`tid`]).
#[inline]
pub(crate) fn pid() -> u32 {
    let cached = IDENTITY.pid.load(Ordering::Relaxed);
    if (cached >> 32) as u32 == generation_unchecked() {
        return cached as u32;
    }
    pid_slow()
}

#[cold]
fn pid_slow() -> u32 {
    let g = generation();
    let pid = rustix::process::getpid().as_raw_nonzero().get() as u32;
    IDENTITY
        .pid
        .store(u64::from(g) << 32 | u64::from(pid), Ordering::Relaxed);
    pid
}

/// Gives the processor to another runnable thread.
pub(crate) fn yield_now() {
    rustix::thread::sched_yield();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Whether thread `tid` of this process is asleep (state `S`).
    fn asleep(tid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/self/task/{tid}/stat"))
            .ok()
            .and_then(|s| Some(s.get(s.rfind(')')? + 2..)?.starts_with('S')))
            .unwrap_or(false)
    }

    #[test]
    fn waking_all_wakes_every_sleeper_at_once() {
        static WORD: AtomicU32 = AtomicU32::new(0);
        const SLEEPERS: usize = 4;
        let (tx, rx) = std::sync::mpsc::channel();
        let threads: Vec<_> = (0..SLEEPERS)
            .map(|_| {
                let tx = tx.clone();
                std::thread::spawn(move || {
                    tx.send(tid()).unwrap();
                    // Long enough that only a wake-up ends it in a test.
                    wait(&WORD, 0, Some(Instant::now() + Duration::from_secs(30)))
                })
            })
            .collect();
        let tids: Vec<u32> = (0..SLEEPERS).map(|_| rx.recv().unwrap()).collect();
        let end = Instant::now() + Duration::from_secs(20);
        while !tids.iter().all(|&t| asleep(t)) {
            assert!(Instant::now() < end, "the sleepers never slept");
            std::thread::sleep(Duration::from_millis(1));
        }
        // One call, the word unchanged: only this wake-up can end the
        // waits before their deadline.
        wake(&WORD, u32::MAX);
        for t in threads {
            assert_eq!(t.join().unwrap(), Wake::Woken);
        }
    }
}
