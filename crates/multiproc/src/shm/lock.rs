//! A lock for shared memory that survives the death of its holder.
//!
//! The 32-bit futex word holds the holder's *process* id (0 when free) and
//! a `WAITERS` bit; beside it, the holder records its
//! [`Identity`](crate::sys::liveness::Identity) (start time and PID
//! namespace), so that a reused id or an id from another namespace is never
//! taken for the holder. Ownership belongs to the process, not to a thread:
//! a thread may end while a borrow made under the lock lives on (a leaked
//! guard, one returned from a scoped thread), so only the end of the whole
//! process, after which nothing of it can touch the data, makes a lock
//! recoverable.
//!
//! Locking is one compare-and-swap when free. A contended locker waits the
//! way every structure here waits ([`super::wait`]); each time a sleep ends
//! with the lock still held, it asks [`liveness`] whether the holder lives.
//! A holder that died is replaced by the caller, who learns so from
//! [`Locked::Recovered`] and repairs what the holder may have left half
//! done. Unlock wakes one sleeper only if the `WAITERS` bit says there is
//! one: no system call on the uncontended path; and it releases only a lock
//! this process holds (a forked child that inherited a guard releases
//! nothing).
//!
//! The kernel's robust-futex list would report a dead holder without the
//! periodic re-check; it is tied to glibc's per-thread list, which a library
//! cannot share safely, and to threads, not processes.
//!
//! What a corrupt peer can do: write any word and identity. The lock then
//! excludes nothing for that structure (typed errors or lost data there),
//! and a wait on it still ends by its deadline; nothing here hands out
//! memory on the strength of the word alone (see `docs/safety.md`).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

use super::wait::{Next, Policy, Slept, Waiter};
use crate::sys::futex;
use crate::sys::liveness::{self, Identity};

const WAITERS: u32 = 1 << 31;
const PID: u32 = !WAITERS;

/// Checks of a held lock, separated by pauses, before the first yield.
const SPINS: u32 = 16;
/// Most pauses between two checks: the n-th check waits `min(2^n,
/// BACKOFF)` pauses (a pause is about 25 ns on this project's AMD
/// machines). A waiter that re-reads the word every few nanoseconds takes
/// its cache line away from the holder each time, and the holder's next
/// store waits for it to come back: two processes adding 1 to a locked
/// `Value` in turn did 26 M additions/s with one pause per check, 87 M
/// with up to 16 and 100 M with up to 32 (16 checks, about 10 µs in all).
/// Under that load the holder mostly runs many critical sections in a row,
/// as with any lock that a releaser may take again at once; a waiter that
/// keeps losing ends in the sleep, where the holder's unlock wakes it.
const BACKOFF: u32 = 32;
/// Yields before the first sleep.
const YIELDS: u32 = 4;

/// A marker for guards of a process-owned lock: `!Send`, like
/// `std::sync::MutexGuard`, so that a guard stays with the thread that took
/// the lock (and cannot be captured by a closure that must be `Send`, such
/// as a forked child's body), yet `Sync`, since sharing `&guard` hands out
/// nothing but what the guard's own `Sync` bounds allow.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct NotSend(std::marker::PhantomData<*const ()>);

// SAFETY: `NotSend` holds no data; it only withholds `Send`. A `&NotSend`
// gives access to nothing.
unsafe impl Sync for NotSend {}

/// A lock in shared memory: the futex word and the holder's identity.
#[repr(C)]
#[derive(Debug, Default)]
pub(crate) struct RawLock {
    word: AtomicU32,
    _pad: u32,
    /// The holder's [`Identity`]; 0 while free, and for a moment after a
    /// holder takes the lock (it reads as alive then).
    owner: AtomicU64,
}

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

    /// Takes the lock if it is free, or held by a process that died.
    pub(crate) fn try_lock(&self) -> Option<Locked> {
        if self.take_free() {
            return Some(Locked::Clean);
        }
        let cur = self.word.load(Ordering::Relaxed);
        if cur == 0 {
            return self.take_free().then_some(Locked::Clean);
        }
        self.take_over(cur).then_some(Locked::Recovered)
    }

    /// [`try_lock`](RawLock::try_lock) for an async locker that has
    /// slept ([`wait_free`](RawLock::wait_free)): it takes the word marked
    /// contended, as a blocking locker that slept does, so that its unlock
    /// wakes the next sleeper.
    pub(crate) fn try_lock_marked(&self) -> Option<Locked> {
        let (pid, me) = liveness::current();
        if self
            .word
            .compare_exchange(0, pid | WAITERS, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            self.owner.store(me.0, Ordering::Relaxed);
            return Some(Locked::Clean);
        }
        self.try_lock()
    }

    /// The readiness wait of an async locker (`crate::aio`): sleeps, as a
    /// blocking locker does (the word marked contended), until the lock
    /// is released or `until`; takes nothing. True if an unlock's wake-up
    /// (meant for one sleeper) ended the sleep: a caller whose task no
    /// longer wants it passes it on ([`wake_one`](RawLock::wake_one)).
    pub(crate) fn wait_free(&self, until: Instant) -> bool {
        let cur = self.word.load(Ordering::Relaxed);
        if cur == 0 {
            return false;
        }
        if cur & WAITERS == 0
            && self
                .word
                .compare_exchange(cur, cur | WAITERS, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return false;
        }
        let waiter = Waiter::new(Policy::counted(0, 0), Some(until));
        waiter.sleep(&self.word, cur | WAITERS, None, || true) == Slept::Woken
            && self.word.load(Ordering::Relaxed) != cur | WAITERS
    }

    /// Whether any process holds the lock now (a hint: it may change at
    /// once).
    pub(crate) fn is_held(&self) -> bool {
        self.word.load(Ordering::Relaxed) != 0
    }

    /// Wakes one locker sleeping on the word.
    pub(crate) fn wake_one(&self) {
        futex::wake(&self.word, 1);
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
        self.word.fetch_or(0, Ordering::SeqCst);
    }

    /// Whether this process holds the lock.
    pub(crate) fn held_by_this_process(&self) -> bool {
        let (pid, me) = liveness::current();
        self.word.load(Ordering::Relaxed) & PID == pid
            && Identity(self.owner.load(Ordering::Relaxed)) == me
    }

    /// Whether the word names this process (cheaper than
    /// [`held_by_this_process`](RawLock::held_by_this_process), which also
    /// compares identities; enough to tell a forked child from its parent).
    #[inline]
    pub(crate) fn names_this_process(&self) -> bool {
        self.word.load(Ordering::Relaxed) & PID == liveness::pid()
    }

    /// Takes the lock like [`lock`](RawLock::lock), checking it only
    /// `spins` times (with a pause) before it yields instead of the usual
    /// [`SPINS`]: for locks held for a few instructions by processes that
    /// may outnumber the processors, where a spinner mostly waits for a
    /// holder that was preempted.
    #[inline]
    /// It keeps yielding on a busy machine (a queue ring's side locks:
    /// their holders are the processes a yield hands the processor to).
    pub(crate) fn lock_with(&self, spins: u32) -> Locked {
        self.lock_with_until(Policy::backoff_yielding(spins, BACKOFF, YIELDS), None)
            .unwrap_or(Locked::Clean)
    }

    /// Takes the lock with `policy`, giving up at `deadline`.
    #[inline]
    fn lock_with_until(&self, policy: Policy, deadline: Option<Instant>) -> Option<Locked> {
        if self.take_free() {
            return Some(Locked::Clean);
        }
        self.lock_inner(deadline, policy)
    }

    /// The free case of every lock call, inline: one compare-and-swap,
    /// then the holder records its identity.
    #[inline]
    fn take_free(&self) -> bool {
        let (pid, me) = liveness::current();
        let ok = self
            .word
            .compare_exchange(0, pid, Ordering::Acquire, Ordering::Relaxed)
            .is_ok();
        if ok {
            self.owner.store(me.0, Ordering::Relaxed);
        }
        ok
    }

    /// Takes the lock, or gives up at `deadline` (`None` then).
    #[inline]
    pub(crate) fn lock_until(&self, deadline: Option<Instant>) -> Option<Locked> {
        self.lock_with_until(Policy::backoff(SPINS, BACKOFF, YIELDS), deadline)
    }

    /// Takes over the lock from the holder named by word `cur`, if that
    /// process is certainly gone. True if the caller now holds it.
    fn take_over(&self, cur: u32) -> bool {
        let pid = cur & PID;
        let (my_pid, my_id) = liveness::current();
        let owner = Identity(self.owner.load(Ordering::SeqCst));
        if pid == my_pid && (owner == my_id || owner == Identity::UNKNOWN) {
            // Held in this process (another thread, or a guard that
            // outlived its thread): never ours to take.
            return false;
        }
        if owner == Identity::UNKNOWN {
            // A holder killed between taking the word and recording its
            // identity (two instructions apart), or one doing so right
            // now. Dead only if its id names no process here, and the word
            // and the identity are still the same a moment later: a live
            // holder records itself within nanoseconds.
            if !liveness::pid_gone(pid) {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
            if self.word.load(Ordering::SeqCst) != cur
                || self.owner.load(Ordering::SeqCst) != 0
                || !liveness::pid_gone(pid)
            {
                return false;
            }
        } else if liveness::is_alive(pid, owner) {
            return false;
        }
        // The identity must still be the one judged dead (a holder that
        // took the lock since would have recorded its own).
        if self.owner.load(Ordering::SeqCst) != owner.0 {
            return false;
        }
        // Forget the dead holder's identity before the word names us, so
        // that whoever reads the word as ours reads 0 or ours.
        self.owner.store(0, Ordering::SeqCst);
        let me = my_pid | (cur & WAITERS);
        if self
            .word
            .compare_exchange(cur, me, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            self.owner.store(my_id.0, Ordering::SeqCst);
            return true;
        }
        false
    }

    #[cold]
    /// The contended case, after [`take_free`](RawLock::take_free) failed.
    fn lock_inner(&self, deadline: Option<Instant>, policy: Policy) -> Option<Locked> {
        let (me, my_id) = liveness::current();
        let mut waiter = Waiter::new(policy, deadline);
        // Once this locker has slept, others may sleep too: it takes the
        // lock marked contended, so that its unlock wakes the next one.
        let mut slept = false;
        loop {
            let cur = self.word.load(Ordering::Relaxed);
            if cur == 0 {
                let new = if slept { me | WAITERS } else { me };
                if self
                    .word
                    .compare_exchange(0, new, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    self.owner.store(my_id.0, Ordering::Relaxed);
                    return Some(Locked::Clean);
                }
                continue;
            }
            match waiter.pause() {
                Next::Check => continue,
                Next::TimedOut => {
                    return self.take_over(cur).then_some(Locked::Recovered);
                }
                Next::Sleep => {}
            }
            if cur & WAITERS == 0
                && self
                    .word
                    .compare_exchange(cur, cur | WAITERS, Ordering::Relaxed, Ordering::Relaxed)
                    .is_err()
            {
                continue;
            }
            slept = true;
            match waiter.sleep(&self.word, cur | WAITERS, None, || true) {
                Slept::Woken => {}
                Slept::Recheck => {
                    if self.take_over(cur | WAITERS) {
                        return Some(Locked::Recovered);
                    }
                }
                Slept::TimedOut => {
                    return self.take_over(cur | WAITERS).then_some(Locked::Recovered);
                }
            }
        }
    }

    /// Releases the lock if the word names this process, and wakes one
    /// sleeper if there is any. False (and nothing done) otherwise: a
    /// guard inherited through a fork (the child's id differs), or a word a
    /// corrupt peer overwrote.
    ///
    /// The swap is `SeqCst`, for [`observe`](RawLock::observe): a holder
    /// that reads a waiter count (`SeqCst`) after unlocking sees every
    /// count raised before an `observe` that found the lock held by it.
    #[inline]
    pub(crate) fn unlock(&self) -> bool {
        if !self.names_this_process() {
            return false;
        }
        self.release_named();
        true
    }

    /// Releases a lock whose word the caller found naming this process.
    /// (Between that check and the swap only a sleeper's `WAITERS` bit can
    /// change the word: no one else takes a lock held by a live process.)
    #[inline]
    pub(crate) fn release_named(&self) {
        self.owner.store(0, Ordering::Relaxed);
        if self.word.swap(0, Ordering::SeqCst) & WAITERS != 0 {
            crate::sys::futex::wake(&self.word, 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_held_by_this_process_is_never_recovered_even_after_its_thread_ended() {
        let lock = std::sync::Arc::new(RawLock::default());
        let l2 = lock.clone();
        std::thread::spawn(move || assert_eq!(l2.try_lock(), Some(Locked::Clean)))
            .join()
            .expect("thread");
        // The locking thread is gone; the process is not.
        assert_eq!(lock.try_lock(), None);
        let start = Instant::now();
        let deadline = start + std::time::Duration::from_millis(150);
        assert_eq!(lock.lock_until(Some(deadline)), None);
        assert!(start.elapsed() >= std::time::Duration::from_millis(150));
        assert!(lock.unlock());
        assert_eq!(lock.try_lock(), Some(Locked::Clean));
        assert!(lock.unlock());
    }

    #[test]
    fn a_dead_process_lock_is_recovered_and_a_forged_live_one_is_not() {
        let lock = RawLock::default();
        // A reaped child: its id names no process now.
        let mut child = std::process::Command::new("true").spawn().expect("true");
        let pid = child.id();
        child.wait().expect("wait");
        lock.word.store(pid, Ordering::SeqCst);
        lock.owner.store(liveness::me().0 ^ 1, Ordering::SeqCst);
        assert_eq!(lock.try_lock(), Some(Locked::Recovered));
        assert!(lock.held_by_this_process());
        assert!(lock.unlock());
        // A holder killed before it recorded its identity: its id names no
        // process any more, so the lock is recovered all the same.
        let mut child = std::process::Command::new("true").spawn().expect("true");
        let pid = child.id();
        child.wait().expect("wait");
        lock.word.store(pid, Ordering::SeqCst);
        lock.owner.store(0, Ordering::SeqCst);
        assert_eq!(lock.try_lock(), Some(Locked::Recovered));
        assert!(lock.unlock());
        // Our own id with an unknown identity: taken to be us, not stolen.
        lock.word.store(liveness::pid(), Ordering::SeqCst);
        assert_eq!(lock.try_lock(), None);
    }

    #[test]
    fn unlock_releases_only_a_lock_this_process_holds() {
        let lock = RawLock::default();
        lock.word.store(1, Ordering::SeqCst); // init, alive
        lock.owner.store(7, Ordering::SeqCst);
        assert!(!lock.unlock());
        assert_eq!(lock.word.load(Ordering::SeqCst), 1);
    }
}
