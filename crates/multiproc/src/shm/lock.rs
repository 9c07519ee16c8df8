//! A lock for shared memory that survives the death of its holder.
//!
//! The 32-bit word holds the holder's *process* id (0 when free); beside
//! it, a waiter flag (the futex that lockers sleep on) says that a locker
//! may be sleeping, and the holder records its
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
//! done. Unlock wakes one sleeper only if the waiter flag says there may
//! be one: no system call on the uncontended path; and it releases only a
//! lock this process holds (a forked child that inherited a guard releases
//! nothing).
//!
//! The release of a user's lock ([`release_named`](RawLock::release_named))
//! is a plain store of the word and a load of the flag, with no locked
//! instruction: a locker about to sleep raises the flag and makes the
//! fence for both sides ([`crate::sys::membarrier`]), then looks at the
//! word once more. [`unlock`](RawLock::unlock) stays a `SeqCst` swap for
//! the queue ring, which counts on it as a fence (see
//! [`observe`](RawLock::observe)).
//!
//! The kernel's robust-futex list would report a dead holder without the
//! periodic re-check; it is tied to glibc's per-thread list, which a library
//! cannot share safely, and to threads, not processes.
//!
//! What a corrupt peer can do: write any word, flag and identity. The lock
//! then excludes nothing for that structure (typed errors or lost data
//! there), and a wait on it still ends by its deadline; a flag it keeps
//! raised costs each release a wake-up call, one it clears leaves a
//! sleeper asleep until its re-check. Nothing here hands out memory on the
//! strength of the word alone (see `docs/safety.md`).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, compiler_fence};
use std::time::{Duration, Instant};

use super::wait::{Next, Policy, RECHECK, Slept, Waiter};
use crate::sys::liveness::{self, Identity};
use crate::sys::{futex, membarrier};

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
/// The longest sleep of a locker whose fence the kernel refused
/// ([`membarrier::heavy`]): a plain release it cannot see would leave it
/// asleep until then.
const UNFENCED_RECHECK: Duration = Duration::from_millis(1);

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

/// A lock in shared memory: the word, the waiter flag and the holder's
/// identity.
#[repr(C)]
#[derive(Debug, Default)]
pub(crate) struct RawLock {
    word: AtomicU32,
    /// Non-zero while a locker may be sleeping (on this word, a futex):
    /// the releaser that finds it set clears it and wakes one.
    waiters: AtomicU32,
    /// The holder's [`Identity`]; 0 while free, and for a moment after a
    /// holder takes the lock (it reads as alive then).
    owner: AtomicU64,
}

/// How the holders of a lock release it, which decides what a locker
/// must do before it sleeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Releases {
    /// Only by [`unlock`](RawLock::unlock), a locked swap that orders
    /// itself: a sleeper needs no more than its own `SeqCst` accesses.
    Fenced,
    /// By [`release_named`](RawLock::release_named) too, a plain store:
    /// every sleeper makes the fence for it ([`membarrier::heavy`]).
    Plain,
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
        self.lock_until(None, Releases::Fenced)
            .unwrap_or(Locked::Clean)
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
    /// slept ([`wait_free`](RawLock::wait_free)): it raises the waiter flag
    /// once it holds the lock, as a blocking locker that slept does, so
    /// that its unlock wakes the next sleeper.
    pub(crate) fn try_lock_marked(&self) -> Option<Locked> {
        let taken = self.try_lock();
        if taken.is_some() {
            self.waiters.store(1, Ordering::Relaxed);
        }
        taken
    }

    /// The readiness wait of an async locker (`crate::aio`): sleeps, as a
    /// blocking locker does (the waiter flag raised), until the lock is
    /// released or `until`; takes nothing. True if the sleep ended by a
    /// wake-up (perhaps an unlock's, meant for one sleeper): a caller whose
    /// task no longer wants it passes it on ([`wake_one`](RawLock::wake_one)).
    pub(crate) fn wait_free(&self, until: Instant, releases: Releases) -> bool {
        let cur = self.word.load(Ordering::Relaxed);
        if cur == 0 {
            return false;
        }
        let Some(cap) = self.before_sleep(cur, releases) else {
            return false;
        };
        let waiter = Waiter::new(Policy::counted(0, 0), Some(until));
        waiter.sleep_at_most(&self.waiters, 1, None, cap, || true) == Slept::Woken
    }

    /// Before a sleep while the word holds `cur`: raises the waiter flag,
    /// makes the fence that a plain release leaves to its sleepers
    /// ([`membarrier::heavy`]: every releaser has either made its store of
    /// the word visible by now, or will see the flag and wake one), and
    /// reads the word again. The longest sleep allowed, or `None` if the
    /// word changed (do not sleep).
    ///
    /// The sleep is on the flag, while it holds 1, not on the word: a
    /// release clears the flag when it wakes, so a sleeper whose wake-up
    /// came before it slept does not sleep. On the word, it would: the
    /// holder may have taken the lock again, and the word would hold
    /// `cur` again, with the flag cleared and no one left to wake it.
    fn before_sleep(&self, cur: u32, releases: Releases) -> Option<Duration> {
        self.waiters.swap(1, Ordering::SeqCst);
        let cap = if releases == Releases::Fenced || membarrier::heavy() {
            RECHECK
        } else {
            UNFENCED_RECHECK
        };
        (self.word.load(Ordering::SeqCst) == cur).then_some(cap)
    }

    /// Whether any process holds the lock now (a hint: it may change at
    /// once).
    pub(crate) fn is_held(&self) -> bool {
        self.word.load(Ordering::Relaxed) != 0
    }

    /// Wakes one sleeping locker.
    pub(crate) fn wake_one(&self) {
        futex::wake(&self.waiters, 1);
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
        self.word.load(Ordering::Relaxed) == pid
            && Identity(self.owner.load(Ordering::Relaxed)) == me
    }

    /// Whether the word names this process (cheaper than
    /// [`held_by_this_process`](RawLock::held_by_this_process), which also
    /// compares identities; enough to tell a forked child from its parent).
    #[inline]
    pub(crate) fn names_this_process(&self) -> bool {
        self.word.load(Ordering::Relaxed) == liveness::pid()
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
        let policy = Policy::backoff_yielding(spins, BACKOFF, YIELDS);
        self.lock_with_until(policy, None, Releases::Fenced)
            .unwrap_or(Locked::Clean)
    }

    /// Takes the lock with `policy`, giving up at `deadline`.
    #[inline]
    fn lock_with_until(
        &self,
        policy: Policy,
        deadline: Option<Instant>,
        releases: Releases,
    ) -> Option<Locked> {
        if self.take_free() {
            return Some(Locked::Clean);
        }
        self.lock_inner(deadline, policy, releases)
    }

    /// The free case of every lock call, inline: one compare-and-swap,
    /// then the holder records its identity. False if anybody holds the
    /// lock (even a dead process: [`try_lock`](RawLock::try_lock) takes
    /// over from those).
    #[inline]
    pub(crate) fn take_free(&self) -> bool {
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

    /// Takes the lock, or gives up at `deadline` (`None` then). `releases`
    /// says how its holders release it.
    #[inline]
    pub(crate) fn lock_until(
        &self,
        deadline: Option<Instant>,
        releases: Releases,
    ) -> Option<Locked> {
        self.lock_with_until(Policy::backoff(SPINS, BACKOFF, YIELDS), deadline, releases)
    }

    /// Takes over the lock from the holder named by word `cur`, if that
    /// process is certainly gone. True if the caller now holds it.
    fn take_over(&self, cur: u32) -> bool {
        let pid = cur;
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
        if self
            .word
            .compare_exchange(cur, my_pid, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            self.owner.store(my_id.0, Ordering::SeqCst);
            return true;
        }
        false
    }

    #[cold]
    /// The contended case, after [`take_free`](RawLock::take_free) failed.
    fn lock_inner(
        &self,
        deadline: Option<Instant>,
        policy: Policy,
        releases: Releases,
    ) -> Option<Locked> {
        let (me, my_id) = liveness::current();
        let mut waiter = Waiter::new(policy, deadline);
        // Once this locker has slept, others may sleep too (a release
        // wakes one, and clears the flag): it raises the flag again when
        // it takes the lock, so that its unlock wakes the next one.
        let mut slept = false;
        // The last sleep ended by a wake-up, perhaps a release's only one:
        // a locker that leaves without the lock passes it on.
        let mut woken = false;
        let taken = loop {
            let cur = self.word.load(Ordering::Relaxed);
            if cur == 0 {
                if self
                    .word
                    .compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    self.owner.store(my_id.0, Ordering::Relaxed);
                    break Some(Locked::Clean);
                }
                continue;
            }
            match waiter.pause() {
                Next::Check => continue,
                Next::TimedOut => break self.take_over(cur).then_some(Locked::Recovered),
                Next::Sleep => {}
            }
            let Some(cap) = self.before_sleep(cur, releases) else {
                continue;
            };
            slept = true;
            woken = false;
            #[cfg(test)]
            tests::SLEEPS.with(|n| n.set(n.get() + 1));
            match waiter.sleep_at_most(&self.waiters, 1, None, cap, || true) {
                Slept::Woken => woken = true,
                Slept::Recheck => {
                    #[cfg(test)]
                    if cap == RECHECK {
                        tests::RECHECKS.with(|n| n.set(n.get() + 1));
                    }
                    if self.take_over(cur) {
                        break Some(Locked::Recovered);
                    }
                }
                Slept::TimedOut => break self.take_over(cur).then_some(Locked::Recovered),
            }
        };
        if taken.is_some() && slept {
            self.waiters.store(1, Ordering::Relaxed);
        } else if taken.is_none() && woken {
            self.wake_one();
        }
        taken
    }

    /// Releases the lock if the word names this process, and wakes one
    /// sleeper if there is any. False (and nothing done) otherwise: a
    /// guard inherited through a fork (the child's id differs), or a word a
    /// corrupt peer overwrote.
    ///
    /// The release is a `SeqCst` swap, for [`observe`](RawLock::observe):
    /// a holder that reads a waiter count (`SeqCst`) after unlocking sees
    /// every count raised before an `observe` that found the lock held by
    /// it.
    #[inline]
    pub(crate) fn unlock(&self) -> bool {
        if !self.names_this_process() {
            return false;
        }
        self.owner.store(0, Ordering::Relaxed);
        self.word.swap(0, Ordering::SeqCst);
        self.wake_if_waiting();
        true
    }

    /// Releases a lock whose word the caller found naming this process (no
    /// one else takes a lock held by a live process), with a plain store
    /// when this process is [`membarrier::registered`]: no fence, so it
    /// orders nothing for a caller beyond the lock's own data. Every
    /// locker of such a lock says [`Releases::Plain`].
    #[inline]
    pub(crate) fn release_named(&self) {
        self.owner.store(0, Ordering::Relaxed);
        if membarrier::registered() {
            self.word.store(0, Ordering::Release);
            // The store, then the flag's load, in program order: a
            // sleeper's barrier falls between two instructions of ours
            // and orders them (see `before_sleep`).
            compiler_fence(Ordering::SeqCst);
            self.wake_if_waiting();
        } else {
            self.release_unregistered();
        }
    }

    /// [`release_named`](RawLock::release_named) in a process not yet
    /// registered: a swap, then the registration is started (after the
    /// release, never while holding: it may take milliseconds). Out of
    /// line, so that the plain release stays small enough to inline.
    #[cold]
    #[inline(never)]
    fn release_unregistered(&self) {
        self.word.swap(0, Ordering::SeqCst);
        self.wake_if_waiting();
        membarrier::register_soon();
    }

    /// After a release: wakes one sleeper if the waiter flag is raised,
    /// clearing it. A woken locker that sleeps again, or takes the lock
    /// after sleeping, raises it again (so the next release wakes the
    /// next sleeper); a locker killed asleep leaves it raised, which costs
    /// one wake-up of nobody.
    #[inline]
    fn wake_if_waiting(&self) {
        if self.waiters.load(Ordering::SeqCst) != 0 {
            self.wake_one_waiting();
        }
    }

    #[cold]
    fn wake_one_waiting(&self) {
        if self.waiters.swap(0, Ordering::SeqCst) != 0 {
            futex::wake(&self.waiters, 1);
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::cell::Cell;

    thread_local! {
        /// Sleeps of this thread's lockers that lasted until their
        /// re-check: no release woke them.
        pub(super) static RECHECKS: Cell<u32> = const { Cell::new(0) };
        /// Sleeps of this thread's lockers.
        pub(super) static SLEEPS: Cell<u32> = const { Cell::new(0) };
    }

    /// What the parent and its forked child share in
    /// [`every_plain_release_by_another_process_wakes_the_sleeping_locker`].
    #[repr(C)]
    #[derive(Default)]
    struct Handoff {
        lock: RawLock,
        /// Set by the parent when it has slept enough.
        stop: AtomicU32,
        /// The child's longest hold, in microseconds.
        longest_hold_us: AtomicU32,
    }

    /// The child: takes the lock until told to stop, holding it for 0 to
    /// 200 us and, more often than not, taking it again at once (the same
    /// word again: a sleeper must be woken all the same), and releases it
    /// the way a `Lock` does (a plain store, once registered). Touches only
    /// atomics and makes raw system calls: it runs in a fork of a threaded
    /// test binary, where the allocator's lock may be held by a thread
    /// that is not there.
    fn holder(h: &Handoff, deadline: Instant) -> i32 {
        let pid = rustix::process::getpid().as_raw_nonzero().get() as u32;
        if !membarrier::register_now() {
            return 3;
        }
        let spin = |until: Instant| {
            while Instant::now() < until {
                std::hint::spin_loop();
            }
        };
        let mut round = 0u32;
        while h.stop.load(Ordering::SeqCst) == 0 {
            if h.lock
                .word
                .compare_exchange(0, pid, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
            {
                if Instant::now() >= deadline {
                    return 1;
                }
                std::hint::spin_loop();
                continue;
            }
            round = round.wrapping_add(1);
            let taken = Instant::now();
            let mix = round.wrapping_mul(2_654_435_761);
            spin(taken + Duration::from_nanos(u64::from(mix % 200_000)));
            let held = taken.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
            h.longest_hold_us.fetch_max(held, Ordering::SeqCst);
            h.lock.release_named();
            if mix.is_multiple_of(3) {
                // A pause without the lock, for the parent to take it.
                spin(Instant::now() + Duration::from_micros(20));
            }
        }
        0
    }

    /// Stops and reaps a forked child when dropped, unless the test has
    /// reaped it already.
    struct Reap<'a> {
        stop: &'a AtomicU32,
        child: i32,
        reaped: bool,
    }

    impl Drop for Reap<'_> {
        fn drop(&mut self) {
            if self.reaped {
                return;
            }
            self.stop.store(1, Ordering::SeqCst);
            // SAFETY: `child` is a child of this process that has not been
            // reaped, so its pid cannot have been reused: the signal and
            // the wait reach that child and nothing else; `status` is a
            // valid out-pointer.
            unsafe {
                libc::kill(self.child, libc::SIGKILL);
                let mut status = 0;
                libc::waitpid(self.child, &mut status, 0);
            }
        }
    }

    #[test]
    fn every_plain_release_by_another_process_wakes_the_sleeping_locker() {
        const SLEEPS_WANTED: u32 = 2000;
        let len = std::mem::size_of::<Handoff>();
        // SAFETY: a fresh anonymous shared mapping of `len` bytes, zeroed
        // by the kernel; unmapped below only after the child has exited.
        let ptr = unsafe {
            rustix::mm::mmap_anonymous(
                std::ptr::null_mut(),
                len,
                rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                rustix::mm::MapFlags::SHARED,
            )
        }
        .expect("mmap");
        // SAFETY: the mapping is page-aligned, `len` bytes long and zeroed,
        // and `Handoff` is atomics only, valid at all zeroes.
        let h: &Handoff = unsafe { &*ptr.cast::<Handoff>() };
        // The parent registers the fork handler that bumps the child's
        // generation (so the child registers itself again).
        let _ = futex::generation();
        let deadline = Instant::now() + Duration::from_secs(60);
        // SAFETY: the child touches only the shared atomics and makes raw
        // system calls (no allocation, no lock another thread could hold),
        // then ends with `_exit`, never returning into the test harness.
        let child = unsafe { libc::fork() };
        assert!(child >= 0, "fork failed");
        if child == 0 {
            let code = holder(h, deadline);
            // SAFETY: ends the forked child at once, running nothing of
            // the parent's (no destructors, no atexit handlers).
            unsafe { libc::_exit(code) };
        }
        // A failed assertion below unwinds through this guard, which stops
        // the child and reaps it: no child spinning on to its deadline
        // after the test.
        let mut reap = Reap {
            stop: &h.stop,
            child,
            reaped: false,
        };
        let before = (RECHECKS.with(Cell::get), SLEEPS.with(Cell::get));
        let me = liveness::pid();
        let mut taken = 0u32;
        // Until the parent has slept enough (on a loaded machine the child
        // runs less, and it takes longer), or half a minute.
        let enough = Instant::now() + Duration::from_secs(30);
        while SLEEPS.with(Cell::get) - before.1 < SLEEPS_WANTED && Instant::now() < enough {
            let got = h.lock.lock_until(Some(deadline), Releases::Plain);
            assert_eq!(got, Some(Locked::Clean), "after {taken} takes");
            taken += 1;
            h.lock.release_named();
            // Leave the child a chance to take it: up to 50 us.
            let until = Instant::now() + Duration::from_micros(50);
            while Instant::now() < until {
                let word = h.lock.word.load(Ordering::SeqCst);
                if word != 0 && word != me {
                    break;
                }
                std::hint::spin_loop();
            }
        }
        h.stop.store(1, Ordering::SeqCst);
        let mut status = 0;
        // SAFETY: waits for our own child; `status` is a valid out-pointer.
        let waited = unsafe { libc::waitpid(child, &mut status, 0) };
        reap.reaped = waited == child;
        assert_eq!(waited, child);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "child status {status:#x}"
        );
        let longest = h.longest_hold_us.load(Ordering::SeqCst);
        // SAFETY: the mapping made above; the child is gone and `h` is not
        // used again.
        unsafe { rustix::mm::munmap(ptr, len) }.expect("munmap");
        let rechecks = RECHECKS.with(Cell::get) - before.0;
        let sleeps = SLEEPS.with(Cell::get) - before.1;
        // A sleep that lasts until its 50 ms re-check was woken by no
        // release: only a hold as long as that (the child preempted while
        // it held the lock) excuses one.
        assert!(
            rechecks == 0 || u128::from(longest) >= RECHECK.as_micros() / 2,
            "{rechecks} of {sleeps} sleeps were woken by no release (longest hold {longest} us)"
        );
        assert!(
            sleeps >= SLEEPS_WANTED,
            "only {sleeps} sleeps in 30 s ({taken} takes)"
        );
    }

    #[test]
    fn the_waiter_flag_is_cleared_by_the_release_that_wakes_and_raised_by_a_locker_that_slept() {
        let lock = RawLock::default();
        // A sleeper killed asleep left the flag raised: the next release
        // clears it (one wake-up of nobody), and the one after makes no
        // system call.
        lock.waiters.store(1, Ordering::SeqCst);
        assert_eq!(lock.try_lock(), Some(Locked::Clean));
        lock.release_named();
        assert_eq!(lock.waiters.load(Ordering::SeqCst), 0);
        // An async locker that slept raises it when it takes the lock.
        assert_eq!(lock.try_lock_marked(), Some(Locked::Clean));
        assert_eq!(lock.waiters.load(Ordering::SeqCst), 1);
        assert!(lock.unlock());
        assert_eq!(lock.waiters.load(Ordering::SeqCst), 0);
        assert!(!lock.is_held());
    }

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
        assert_eq!(lock.lock_until(Some(deadline), Releases::Plain), None);
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
