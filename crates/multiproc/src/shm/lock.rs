//! A lock for shared memory that survives the death of its holder.
//!
//! The 32-bit futex word holds the holder's thread id (0 when free) and a
//! `WAITERS` bit. Locking is one compare-and-swap when free. A contended
//! locker spins briefly, yields, then sleeps on the futex; it sleeps at most
//! [`RECHECK`] at a time, and each time it wakes with the lock still held it
//! asks the kernel whether the holder still exists. A holder that died
//! (killed mid-operation) is replaced by the caller, who learns so from
//! [`Locked::Recovered`] and repairs what the holder may have left half
//! done. Unlock wakes one sleeper only if the `WAITERS` bit says there is
//! one: no system call on the uncontended path.
//!
//! The kernel's robust-futex list would report a dead holder without the
//! periodic re-check; it is tied to glibc's per-thread list, which a library
//! cannot share safely, so this lock checks instead. The re-check only runs
//! while a locker is blocked for longer than [`RECHECK`].

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::sys::futex;

const WAITERS: u32 = 1 << 31;
const TID: u32 = !WAITERS;

/// How long a blocked locker sleeps before it checks that the holder lives.
pub(crate) const RECHECK: Duration = Duration::from_millis(50);

/// Spins before the first yield.
const SPINS: u32 = 64;
/// Yields before the first sleep.
const YIELDS: u32 = 4;

/// A lock word in shared memory.
#[repr(transparent)]
#[derive(Debug, Default)]
pub(crate) struct RawLock(AtomicU32);

/// How [`RawLock::lock`] got the lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "a recovered lock means the protected data may need repair"]
pub(crate) enum Locked {
    /// From a holder that released it.
    Clean,
    /// From a holder that died holding it.
    Recovered,
}

impl RawLock {
    /// Takes the lock, waiting as long as needed (but never for a dead
    /// holder).
    pub(crate) fn lock(&self) -> Locked {
        self.lock_until(None).unwrap_or(Locked::Clean)
    }

    /// Takes the lock if it is free, or held by a thread that died.
    pub(crate) fn try_lock(&self) -> Option<Locked> {
        let me = futex::tid();
        let cur = self.0.load(Ordering::Relaxed);
        if cur == 0 {
            return self
                .0
                .compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed)
                .ok()
                .map(|_| Locked::Clean);
        }
        if !futex::is_alive(cur & TID)
            && self
                .0
                .compare_exchange(
                    cur,
                    me | (cur & WAITERS),
                    Ordering::Acquire,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            return Some(Locked::Recovered);
        }
        None
    }

    /// Synchronises with the lock's holders without taking it, for a
    /// waiter about to sleep: call it after raising a waiter count
    /// (`SeqCst`). Afterwards the caller sees everything written under
    /// the lock by every holder that has released it (the load reads the
    /// last unlock, or a later lock in its release sequence), and a holder
    /// still inside sees the raised count if it reads the count (`SeqCst`)
    /// after its [`unlock`](RawLock::unlock). So the writer of a position
    /// under the lock need not make that store `SeqCst`: one of the two
    /// sides always sees the other. (A holder that dies inside publishes
    /// nothing, and the sleeper wakes at its next re-check.)
    ///
    /// It is a read-modify-write that changes nothing (`fetch_or(0)`), not
    /// a load: it reads the newest value of the word whatever the caller's
    /// cache holds, and a compiler cannot drop it as unused. It only runs
    /// on the way to sleep.
    pub(crate) fn observe(&self) {
        self.0.fetch_or(0, Ordering::SeqCst);
    }

    /// Whether the calling thread holds the lock.
    pub(crate) fn held_by_me(&self) -> bool {
        self.0.load(Ordering::Relaxed) & TID == futex::tid()
    }

    /// Takes the lock like [`lock`](RawLock::lock), checking it only
    /// `spins` times (with a pause) before it yields instead of the usual
    /// [`SPINS`]: for locks held for a few instructions by processes that
    /// may outnumber the processors, where a spinner mostly waits for a
    /// holder that was preempted.
    #[inline]
    pub(crate) fn lock_with(&self, spins: u32) -> Locked {
        if self.take_free() {
            return Locked::Clean;
        }
        self.lock_inner(None, spins).unwrap_or(Locked::Clean)
    }

    /// The free case of every lock call, inline: one compare-and-swap.
    #[inline]
    fn take_free(&self) -> bool {
        self.0
            .compare_exchange(0, futex::tid(), Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    /// Takes the lock, or gives up at `deadline` (`None` then).
    #[inline]
    pub(crate) fn lock_until(&self, deadline: Option<Instant>) -> Option<Locked> {
        if self.take_free() {
            return Some(Locked::Clean);
        }
        self.lock_inner(deadline, SPINS)
    }

    #[cold]
    /// The contended case, after [`take_free`](RawLock::take_free) failed.
    fn lock_inner(&self, deadline: Option<Instant>, spins: u32) -> Option<Locked> {
        let me = futex::tid();
        for i in 0..spins + YIELDS {
            if self.0.load(Ordering::Relaxed) == 0
                && self
                    .0
                    .compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                return Some(Locked::Clean);
            }
            if i < spins {
                std::hint::spin_loop();
            } else {
                futex::yield_now();
            }
        }
        loop {
            let cur = self.0.load(Ordering::Relaxed);
            if cur == 0 {
                // Take it marked contended: others may still sleep.
                if self
                    .0
                    .compare_exchange(0, me | WAITERS, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    return Some(Locked::Clean);
                }
                continue;
            }
            if cur & WAITERS == 0
                && self
                    .0
                    .compare_exchange(cur, cur | WAITERS, Ordering::Relaxed, Ordering::Relaxed)
                    .is_err()
            {
                continue;
            }
            let recheck = Instant::now() + RECHECK;
            let until = deadline.map_or(recheck, |d| d.min(recheck));
            if futex::wait(&self.0, cur | WAITERS, Some(until)) == futex::Wake::TimedOut {
                if self.0.load(Ordering::Relaxed) == cur | WAITERS && !futex::is_alive(cur & TID) {
                    // The holder is gone: take over, keeping WAITERS so that
                    // other sleepers are woken in turn.
                    if self
                        .0
                        .compare_exchange(
                            cur | WAITERS,
                            me | WAITERS,
                            Ordering::Acquire,
                            Ordering::Relaxed,
                        )
                        .is_ok()
                    {
                        return Some(Locked::Recovered);
                    }
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return None;
                }
            }
        }
    }

    /// Releases the lock; wakes one sleeper if there is any.
    ///
    /// The swap is `SeqCst`, for [`observe`](RawLock::observe): a holder
    /// that reads a waiter count (`SeqCst`) after unlocking sees every
    /// count raised before an `observe` that found the lock held by it.
    pub(crate) fn unlock(&self) {
        if self.0.swap(0, Ordering::SeqCst) & WAITERS != 0 {
            futex::wake(&self.0, 1);
        }
    }
}
