//! The shared state of each synchronisation primitive, and the algorithms
//! on it. Everything here is atomics and futexes; the public handles in
//! `sync/` wrap these types and hold no `unsafe`.
//!
//! Waiting follows one pattern: read the word, increment a sleeper count,
//! re-check the condition, sleep on the word (never longer than the lock
//! re-check interval, so a dead peer is noticed); the waker changes the
//! word and wakes only when the sleeper count is non-zero. `SeqCst` on both
//! sides, so no wake-up is lost.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::lock::{Locked, RawLock, Releases};
use super::object::ShmState;
use super::wait::{self, Next, Policy, Presence, Slept, Waiter};
use crate::sys::futex;
use crate::sys::liveness::{self, Identity};

/// Most waits between processes on two cores end within microseconds, far
/// sooner than a futex sleep and wake-up (several microseconds each here):
/// spin, then yield, then sleep.
const POLICY: Policy = Policy::counted(128, 8);

/// An event's waiter spins while the event's last setter ran on another
/// processor when it set it (see [`EventState::setter`]): for up to 20 µs,
/// which covers the setter's wake-up on a busy machine (a 2-process
/// ping-pong, each process beside a CPU-bound one: a round trip of 10 to
/// 20 µs through sleeps and wake-ups, under 2 µs while both spin). A
/// setter that ran on the waiter's processor cannot answer before the
/// waiter gives it up: no spinning then, a few yields, then the sleep.
const EVENT_POLICY: Policy = Policy::Timed {
    spin: Duration::from_micros(20),
    yields: Duration::from_micros(10),
    yield_when_busy: false,
};

/// Waits until `ready()` (true) or `deadline` (then `ready()` once more),
/// sleeping on `word` while it holds `idle`; `recheck` runs each time a
/// sleep ends with no wake-up (to look for dead peers).
fn wait_for(
    word: &AtomicU32,
    idle: u32,
    sleepers: &AtomicU32,
    deadline: Option<Instant>,
    ready: impl FnMut() -> bool,
    recheck: impl FnMut(),
) -> bool {
    let waiter = Waiter::new(POLICY, deadline);
    wait_with(waiter, word, idle, sleepers, ready, recheck)
}

/// [`wait_for`] through `waiter`.
fn wait_with(
    mut waiter: Waiter<'_>,
    word: &AtomicU32,
    idle: u32,
    sleepers: &AtomicU32,
    mut ready: impl FnMut() -> bool,
    mut recheck: impl FnMut(),
) -> bool {
    loop {
        if ready() {
            return true;
        }
        match waiter.pause() {
            Next::Check => continue,
            Next::TimedOut => return ready(),
            Next::Sleep => {}
        }
        match waiter.sleep(word, idle, Some(sleepers), || {
            word.load(Ordering::SeqCst) == idle
        }) {
            Slept::Woken => {}
            Slept::Recheck => recheck(),
            Slept::TimedOut => return ready(),
        }
    }
}

/// The readiness wait of an async form (`crate::aio`): one sleep on
/// `word` while it holds `idle` (counted in `sleepers`, as a blocking
/// waiter is), until `until`; takes nothing. True if a wake-up changed
/// the word.
fn sleep_while(word: &AtomicU32, idle: u32, sleepers: &AtomicU32, until: Instant) -> bool {
    if word.load(Ordering::SeqCst) != idle {
        return false;
    }
    let waiter = Waiter::new(Policy::counted(0, 0), Some(until));
    waiter.sleep(word, idle, Some(sleepers), || {
        word.load(Ordering::SeqCst) == idle
    }) == Slept::Woken
        && word.load(Ordering::SeqCst) != idle
}

/// A lock whose holder may die: `Lock`, `RLock`, the lock of a `Value`,
/// an `Array` or a `Condition`.
#[repr(C)]
#[derive(Debug, Default)]
pub(crate) struct LockState {
    magic: AtomicU32,
    /// Set when a holder died; cleared by `make_consistent`.
    inconsistent: AtomicU32,
    /// Recursion depth of an `RLock`.
    depth: AtomicU32,
    /// The thread of the holding process that took the lock: an `RLock`
    /// is re-entered by that thread only.
    thread: AtomicU32,
    lock: RawLock,
}

// SAFETY: a `#[repr(C)]` struct of atomics and nothing else: valid at every
// bit pattern (so whatever a peer writes into it, not only at zero), no
// pointers, and every access, ours or a peer's, is atomic.
unsafe impl ShmState for LockState {
    const MAGIC: u32 = 0x4d50_4c32;
    fn magic(&self) -> &AtomicU32 {
        &self.magic
    }
}

/// How a lock was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Acquired {
    /// Taken; the protected data is as the last holder left it.
    Clean,
    /// Taken, but a holder died with it: the data may be inconsistent.
    OwnerDied,
}

impl LockState {
    #[inline]
    fn outcome(&self, l: Locked) -> Acquired {
        if l == Locked::Recovered {
            self.inconsistent.store(1, Ordering::SeqCst);
            self.depth.store(0, Ordering::SeqCst);
        }
        if self.inconsistent.load(Ordering::SeqCst) != 0 {
            Acquired::OwnerDied
        } else {
            Acquired::Clean
        }
    }

    /// Takes the lock, waiting until `deadline`.
    #[inline]
    pub(crate) fn acquire(&self, deadline: Option<Instant>) -> Option<Acquired> {
        self.lock
            .lock_until(deadline, Releases::Plain)
            .map(|l| self.outcome(l))
    }

    /// Takes the lock if that needs no waiting.
    pub(crate) fn try_acquire(&self) -> Option<Acquired> {
        self.lock.try_lock().map(|l| self.outcome(l))
    }

    /// [`try_acquire`](Self::try_acquire) for an async locker that has
    /// slept (see [`RawLock::try_lock_marked`]).
    pub(crate) fn try_acquire_marked(&self) -> Option<Acquired> {
        self.lock.try_lock_marked().map(|l| self.outcome(l))
    }

    /// The readiness wait of an async locker (see [`RawLock::wait_free`]).
    pub(crate) fn wait_free(&self, until: Instant) -> bool {
        self.lock.wait_free(until, Releases::Plain)
    }

    /// Passes on a wake-up that a dropped async locker was given.
    pub(crate) fn wake_one(&self) {
        self.lock.wake_one();
    }

    /// For an `RLock` just taken: records the calling thread as the one
    /// that may re-enter it.
    pub(crate) fn mark_thread(&self) {
        self.thread.store(futex::tid(), Ordering::Relaxed);
    }

    /// Takes the lock again if the calling thread holds it (an `RLock`);
    /// returns false if it does not (or the depth would overflow).
    pub(crate) fn reenter(&self) -> bool {
        if self.lock.held_by_this_process() && self.thread.load(Ordering::Relaxed) == futex::tid() {
            let depth = self.depth.load(Ordering::Relaxed);
            if let Some(next) = depth.checked_add(1) {
                self.depth.store(next, Ordering::Relaxed);
                return true;
            }
        }
        false
    }

    /// Releases one level; the lock itself when the depth reaches zero.
    /// Does nothing if the lock does not name this process (a guard that a
    /// forked child inherited): the holder's lock stays held.
    #[inline]
    pub(crate) fn release(&self) {
        if !self.lock.names_this_process() {
            return;
        }
        let depth = self.depth.load(Ordering::Relaxed);
        if depth > 0 {
            self.depth.store(depth - 1, Ordering::Relaxed);
        } else {
            // Only an `RLock` records its thread: no store for the others.
            if self.thread.load(Ordering::Relaxed) != 0 {
                self.thread.store(0, Ordering::Relaxed);
            }
            self.lock.release_named();
        }
    }

    /// Whether this process holds the lock.
    pub(crate) fn held_by_this_process(&self) -> bool {
        self.lock.held_by_this_process()
    }

    /// Whether the lock word names this process (see
    /// [`RawLock::names_this_process`]).
    #[inline]
    pub(crate) fn names_this_process(&self) -> bool {
        self.lock.names_this_process()
    }

    /// Releases the lock whatever its depth (a `Condition` wait), if this
    /// process holds it; returns the depth to restore.
    fn release_all(&self) -> u32 {
        if !self.lock.held_by_this_process() {
            return 0;
        }
        let depth = self.depth.swap(0, Ordering::Relaxed);
        self.thread.store(0, Ordering::Relaxed);
        self.lock.release_named();
        depth
    }

    /// Whether any process holds the lock now (a hint: it may change at
    /// once).
    pub(crate) fn is_held(&self) -> bool {
        self.lock.is_held()
    }

    /// Whether a holder died with the lock and nobody has declared the
    /// data consistent since.
    pub(crate) fn is_inconsistent(&self) -> bool {
        self.inconsistent.load(Ordering::SeqCst) != 0
    }

    /// Marks the protected data consistent again after an owner died.
    pub(crate) fn make_consistent(&self) {
        self.inconsistent.store(0, Ordering::SeqCst);
    }
}

/// A counter that can be waited on: `Semaphore`, `BoundedSemaphore`.
#[repr(C)]
#[derive(Debug, Default)]
pub(crate) struct SemaphoreState {
    magic: AtomicU32,
    value: AtomicU32,
    sleepers: AtomicU32,
    /// The bound of a `BoundedSemaphore` plus one; 0 for none.
    bound: AtomicU32,
}

// SAFETY: a `#[repr(C)]` struct of atomics and nothing else: valid at every
// bit pattern (so whatever a peer writes into it, not only at zero), no
// pointers, and every access, ours or a peer's, is atomic.
unsafe impl ShmState for SemaphoreState {
    const MAGIC: u32 = 0x4d50_534d;
    fn magic(&self) -> &AtomicU32 {
        &self.magic
    }
}

impl SemaphoreState {
    /// Sets the initial value and the bound (`None` for unbounded).
    pub(crate) fn init(&self, value: u32, bound: Option<u32>) {
        self.value.store(value, Ordering::SeqCst);
        self.bound
            .store(bound.map_or(0, |b| b.saturating_add(1)), Ordering::SeqCst);
    }

    /// The current value.
    pub(crate) fn value(&self) -> u32 {
        self.value.load(Ordering::SeqCst)
    }

    fn try_take(&self) -> bool {
        let mut v = self.value.load(Ordering::Relaxed);
        while v > 0 {
            match self
                .value
                .compare_exchange_weak(v, v - 1, Ordering::Acquire, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(now) => v = now,
            }
        }
        false
    }

    /// Decrements, waiting while the value is 0, until `deadline`.
    pub(crate) fn acquire(&self, deadline: Option<Instant>) -> bool {
        wait_for(
            &self.value,
            0,
            &self.sleepers,
            deadline,
            || self.try_take(),
            || {},
        )
    }

    /// Decrements if the value is above 0, without waiting.
    pub(crate) fn try_acquire(&self) -> bool {
        self.try_take()
    }

    /// The readiness wait of an async acquire: until the value is above
    /// 0, or `until`; takes nothing. True if a release's wake-up (meant
    /// for one waiter) ended it: a dropped acquirer passes it on
    /// ([`wake_one`](Self::wake_one)).
    pub(crate) fn wait_positive(&self, until: Instant) -> bool {
        sleep_while(&self.value, 0, &self.sleepers, until)
    }

    /// Wakes one waiter, if any sleeps.
    pub(crate) fn wake_one(&self) {
        wait::wake(&self.value, &self.sleepers, 1);
    }

    /// Increments; false if that would pass the bound.
    pub(crate) fn release(&self) -> bool {
        let bound = self.bound.load(Ordering::Relaxed);
        let mut v = self.value.load(Ordering::Relaxed);
        loop {
            let Some(next) = v.checked_add(1) else {
                return false;
            };
            if bound != 0 && next >= bound {
                return false;
            }
            match self
                .value
                .compare_exchange_weak(v, next, Ordering::SeqCst, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(now) => v = now,
            }
        }
        wait::wake(&self.value, &self.sleepers, 1);
        true
    }
}

/// A flag that can be waited on: `Event`.
#[repr(C)]
#[derive(Debug, Default)]
pub(crate) struct EventState {
    magic: AtomicU32,
    flag: AtomicU32,
    sleepers: AtomicU32,
    _pad: AtomicU32,
    /// Where the last setter ran when it set the flag: a presence word
    /// (see [`wait::running_here`]), a hint for waiters on whether
    /// spinning can pay ([`EVENT_POLICY`]). Whatever a peer writes here
    /// only makes a waiter spin (20 µs at most) or not.
    setter: AtomicU64,
}

// SAFETY: a `#[repr(C)]` struct of atomics and nothing else: valid at every
// bit pattern (so whatever a peer writes into it, not only at zero), no
// pointers, and every access, ours or a peer's, is atomic.
unsafe impl ShmState for EventState {
    const MAGIC: u32 = 0x4d50_4532;
    fn magic(&self) -> &AtomicU32 {
        &self.magic
    }
}

impl EventState {
    /// Sets the flag and wakes every waiter.
    pub(crate) fn set(&self) {
        // Written only when it changes: a store here ahead of the flag's
        // would cost the flag's store one more transfer of the cache
        // line, which a spinning waiter reads.
        if let Some(here) = wait::running_here_cheaply()
            && self.setter.load(Ordering::Relaxed) != here
        {
            self.setter.store(here, Ordering::Relaxed);
        }
        self.flag.store(1, Ordering::SeqCst);
        wait::wake(&self.flag, &self.sleepers, u32::MAX);
    }

    /// Clears the flag.
    pub(crate) fn clear(&self) {
        self.flag.store(0, Ordering::SeqCst);
    }

    /// Whether the flag is set.
    pub(crate) fn is_set(&self) -> bool {
        self.flag.load(Ordering::SeqCst) != 0
    }

    /// The readiness wait of an async wait: until the flag is set, or
    /// `until`.
    pub(crate) fn wait_set(&self, until: Instant) {
        let _ = sleep_while(&self.flag, 0, &self.sleepers, until);
    }

    /// Waits until the flag is set or `deadline`; returns the flag.
    pub(crate) fn wait(&self, deadline: Option<Instant>) -> bool {
        // This side's word: nobody reads it (an event has no one peer).
        let mine = AtomicU64::new(0);
        let presence = Presence {
            mine: &mine,
            theirs: &self.setter,
        };
        wait_with(
            Waiter::with_hint(EVENT_POLICY, deadline, presence),
            &self.flag,
            0,
            &self.sleepers,
            || self.is_set(),
            || {},
        )
    }
}

/// A lock and a notification word: `Condition`.
///
/// A notification is a token: `notify(n)` issues at most `n`, and no more
/// than there are registered waiters without one; a waiter returns
/// notified only by taking a token, so `notify_one` wakes one waiter, not
/// all (Python's `test_notify`, `test_notify_n`). A waiter takes only a
/// token issued after it began to wait (it notes `seq` when it registers):
/// a token is meant for the waiters there when it was issued, and a
/// later waiter (the notifier itself, waiting right after its notify)
/// must not take it from them (Python's `test_waitfor`). A waiter that
/// gives up at its deadline leaves, and returns a token issued to it
/// meanwhile.
#[repr(C)]
#[derive(Debug, Default)]
pub(crate) struct ConditionState {
    magic: AtomicU32,
    /// Bumped by every notify that issued a token: what sleepers sleep on.
    seq: AtomicU32,
    sleepers: AtomicU32,
    /// Waiters registered and not yet gone.
    waiting: AtomicU32,
    /// Tokens issued and not yet taken.
    tokens: AtomicU32,
    _pad: AtomicU32,
    /// The condition's own lock.
    pub(crate) lock: LockState,
}

// SAFETY: a `#[repr(C)]` struct of atomics and nothing else: valid at every
// bit pattern (so whatever a peer writes into it, not only at zero), no
// pointers, and every access, ours or a peer's, is atomic.
unsafe impl ShmState for ConditionState {
    const MAGIC: u32 = 0x4d50_4332;
    fn magic(&self) -> &AtomicU32 {
        &self.magic
    }
}

/// Decrements `a` if it is above zero; true if it did.
fn take_one(a: &AtomicU32) -> bool {
    a.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1))
        .is_ok()
}

impl ConditionState {
    /// With the lock held: releases it, waits for a notification (or
    /// `deadline`), and takes the lock back (with the depth it had). True
    /// if notified; `None` for the lock if this process did not hold it
    /// (nothing was released, and nothing is taken back).
    pub(crate) fn wait(&self, deadline: Option<Instant>) -> (bool, Option<Acquired>) {
        if !self.lock.held_by_this_process() {
            return (false, None);
        }
        let start = self.register();
        let depth = self.lock.release_all();
        let mut notified = false;
        let mut waiter = Waiter::new(POLICY, deadline);
        loop {
            let seen = self.seq.load(Ordering::SeqCst);
            if self.take_token(start) {
                notified = true;
                break;
            }
            match waiter.pause() {
                Next::Check => continue,
                Next::TimedOut => break,
                Next::Sleep => {}
            }
            let slept = waiter.sleep(&self.seq, seen, Some(&self.sleepers), || {
                self.nothing_for(start, seen)
            });
            if slept == Slept::TimedOut {
                break;
            }
        }
        if !notified {
            // A token issued since the last look was meant for a waiter
            // that is still here: take it, rather than leave it to nobody.
            notified = self.take_token(start);
        }
        let _ = take_one(&self.waiting);
        if !notified {
            // Tokens never outnumber waiters: one issued to us after we
            // looked is withdrawn with us.
            let waiting = self.waiting.load(Ordering::SeqCst);
            let _ = self
                .tokens
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |t| {
                    (t > waiting).then_some(waiting)
                });
        }
        let acquired = self.lock.acquire(None).unwrap_or(Acquired::Clean);
        if acquired == Acquired::Clean && depth > 0 {
            self.lock.depth.store(depth, Ordering::Relaxed);
            self.lock.mark_thread();
        }
        (notified, Some(acquired))
    }

    /// Registers a waiter; returns the notification count it began at
    /// (read first, so that a notify that counted this waiter is never
    /// taken for an earlier one).
    fn register(&self) -> u32 {
        let start = self.seq.load(Ordering::SeqCst);
        let _ = self
            .waiting
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_add(1));
        start
    }

    /// Takes a token, if one was issued since the waiter began at `start`.
    fn take_token(&self, start: u32) -> bool {
        self.seq.load(Ordering::SeqCst) != start && take_one(&self.tokens)
    }

    /// Whether a waiter that began at `start` and last saw `seen` has no
    /// token to take: nothing issued since, or none left.
    fn nothing_for(&self, start: u32, seen: u32) -> bool {
        self.seq.load(Ordering::SeqCst) == seen
            && (seen == start || self.tokens.load(Ordering::SeqCst) == 0)
    }

    /// Begins an async wait (`crate::aio`): with the lock held by this
    /// process, registers a waiter and releases the lock. Returns the
    /// depth to restore when the lock is taken back and the count the
    /// waiter began at (for [`wait_take`](Self::wait_take) and
    /// [`wait_for_token`](Self::wait_for_token)); `None` if this process
    /// did not hold the lock (nothing was done).
    pub(crate) fn wait_begin(&self) -> Option<(u32, u32)> {
        if !self.lock.held_by_this_process() {
            return None;
        }
        let start = self.register();
        Some((self.lock.release_all(), start))
    }

    /// For an async wait that began at `start`: takes a notification if
    /// one was issued since, and then leaves the waiters. True if it took
    /// one.
    pub(crate) fn wait_take(&self, start: u32) -> bool {
        if self.take_token(start) {
            let _ = take_one(&self.waiting);
            return true;
        }
        false
    }

    /// The readiness wait of an async wait that began at `start`: sleeps
    /// until a notification for it may be there, or `until`; takes
    /// nothing.
    pub(crate) fn wait_for_token(&self, start: u32, until: Instant) {
        let seen = self.seq.load(Ordering::SeqCst);
        if !self.nothing_for(start, seen) {
            return;
        }
        let waiter = Waiter::new(Policy::counted(0, 0), Some(until));
        let _ = waiter.sleep(&self.seq, seen, Some(&self.sleepers), || {
            self.nothing_for(start, seen)
        });
    }

    /// An async wait that took no notification ends (its future was
    /// dropped): it leaves the waiters and takes none. A notification
    /// issued to it meanwhile goes to another waiter if there is one
    /// (woken here), or is withdrawn: tokens never outnumber waiters.
    pub(crate) fn wait_leave(&self) {
        let _ = take_one(&self.waiting);
        let waiting = self.waiting.load(Ordering::SeqCst);
        let _ = self
            .tokens
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |t| {
                (t > waiting).then_some(waiting)
            });
        if self.tokens.load(Ordering::SeqCst) > 0 {
            self.seq.fetch_add(1, Ordering::SeqCst);
            wait::wake(&self.seq, &self.sleepers, 1);
        }
    }

    /// An async wait took the lock back (`acquired`): restores the depth
    /// it had when the wait began.
    pub(crate) fn wait_relocked(&self, depth: u32, acquired: Acquired) {
        if acquired == Acquired::Clean && depth > 0 {
            self.lock.depth.store(depth, Ordering::Relaxed);
            self.lock.mark_thread();
        }
    }

    /// Wakes up to `n` waiters: issues as many tokens, at most one per
    /// waiter that has none yet.
    pub(crate) fn notify(&self, n: u32) {
        let mut issued = 0;
        let _ = self
            .tokens
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |t| {
                let free = self.waiting.load(Ordering::SeqCst).saturating_sub(t);
                issued = n.min(free);
                (issued > 0).then(|| t.saturating_add(issued))
            });
        if issued > 0 {
            self.seq.fetch_add(1, Ordering::SeqCst);
            wait::wake(&self.seq, &self.sleepers, issued);
        }
    }
}

/// Waiters a barrier can watch for death.
const BARRIER_WATCH: usize = 32;

/// A rendezvous of a fixed number of parties: `Barrier`.
#[repr(C)]
#[derive(Debug, Default)]
pub(crate) struct BarrierState {
    magic: AtomicU32,
    parties: AtomicU32,
    count: AtomicU32,
    generation: AtomicU32,
    broken: AtomicU32,
    sleepers: AtomicU32,
    _pad: AtomicU32,
    lock: RawLock,
    /// Process ids of waiting parties, and their identities.
    waiting: [AtomicU32; BARRIER_WATCH],
    waiting_ids: [AtomicU64; BARRIER_WATCH],
    /// How the last rounds ended: round `g` at `g % ROUNDS`, as
    /// `g << 1 | broken`. A waiter woken by a change of `generation` reads
    /// its own round's outcome here, not the current `broken` flag, which
    /// a `reset` clears before the waiters look.
    rounds: [AtomicU32; ROUNDS],
    /// `g << 1 | 1` while the action of round `g` runs (every party has
    /// arrived, none is released yet), 0 otherwise.
    acting: AtomicU32,
    /// Non-zero if the barrier was made with an action.
    has_action: AtomicU32,
    /// The default timeout of a wait, in nanoseconds; 0 for none.
    timeout_ns: AtomicU64,
}

/// Rounds whose outcome a barrier remembers.
const ROUNDS: usize = 32;

// SAFETY: a `#[repr(C)]` struct of atomics and nothing else: valid at every
// bit pattern (so whatever a peer writes into it, not only at zero), no
// pointers, and every access, ours or a peer's, is atomic.
unsafe impl ShmState for BarrierState {
    const MAGIC: u32 = 0x4d50_4232;
    fn magic(&self) -> &AtomicU32 {
        &self.magic
    }
}

/// Why a barrier wait failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BarrierFailure {
    /// Broken before or while waiting (abort, a timeout, a dead party).
    Broken,
    /// This wait timed out, which broke the barrier.
    TimedOut,
    /// This party ran the action, which failed: the barrier is broken.
    ActionFailed,
    /// This party tripped a barrier made with an action but was given
    /// none: the barrier is broken.
    NoAction,
}

impl BarrierState {
    /// Sets the number of parties, whether an action runs when the
    /// barrier trips, and the default timeout in nanoseconds (0: none).
    pub(crate) fn init(&self, parties: u32, has_action: bool, timeout_ns: u64) {
        self.parties.store(parties, Ordering::SeqCst);
        self.has_action
            .store(u32::from(has_action), Ordering::SeqCst);
        self.timeout_ns.store(timeout_ns, Ordering::SeqCst);
    }

    /// Whether the barrier was made with an action.
    pub(crate) fn has_action(&self) -> bool {
        self.has_action.load(Ordering::SeqCst) != 0
    }

    /// The default timeout in nanoseconds (0: none).
    pub(crate) fn timeout_ns(&self) -> u64 {
        self.timeout_ns.load(Ordering::SeqCst)
    }

    /// The number of parties.
    pub(crate) fn parties(&self) -> u32 {
        self.parties.load(Ordering::SeqCst)
    }

    /// Parties waiting now.
    pub(crate) fn n_waiting(&self) -> u32 {
        self.count.load(Ordering::SeqCst)
    }

    /// Whether the barrier is broken.
    pub(crate) fn is_broken(&self) -> bool {
        self.broken.load(Ordering::SeqCst) != 0
    }

    /// Ends the current round (the caller holds the barrier's lock),
    /// recording how, and wakes its waiters.
    fn end_round(&self, broken: bool) {
        let g = self.generation.load(Ordering::SeqCst);
        self.rounds[g as usize % ROUNDS].store(g << 1 | u32::from(broken), Ordering::SeqCst);
        self.acting.store(0, Ordering::SeqCst);
        self.generation.store(g.wrapping_add(1), Ordering::SeqCst);
        wait::wake(&self.generation, &self.sleepers, u32::MAX);
    }

    fn break_it(&self) {
        self.broken.store(1, Ordering::SeqCst);
        self.end_round(true);
    }

    /// How round `g` ended, for a party that waited in it: `Ok` if every
    /// party arrived; broken if it was broken (or is too old to tell).
    fn round_result(&self, g: u32, index: u32) -> Result<u32, BarrierFailure> {
        let entry = self.rounds[g as usize % ROUNDS].load(Ordering::SeqCst);
        if entry >> 1 == g & (u32::MAX >> 1) && entry & 1 == 0 {
            Ok(index)
        } else {
            Err(BarrierFailure::Broken)
        }
    }

    /// Breaks the barrier (Python's `abort`).
    pub(crate) fn abort(&self) {
        let _ = self.lock.lock();
        self.break_it();
        let _ = self.lock.unlock();
    }

    /// Makes a broken barrier usable again (Python's `reset`); parties
    /// waiting now fail with `Broken`.
    pub(crate) fn reset(&self) {
        let _ = self.lock.lock();
        if self.count.load(Ordering::SeqCst) > 0 {
            self.break_it();
        }
        self.count.store(0, Ordering::SeqCst);
        self.broken.store(0, Ordering::SeqCst);
        self.clear_waiting();
        let _ = self.lock.unlock();
    }

    fn clear_waiting(&self) {
        for (w, id) in self.waiting.iter().zip(&self.waiting_ids) {
            w.store(0, Ordering::SeqCst);
            id.store(0, Ordering::SeqCst);
        }
    }

    /// Whether a party recorded as waiting is certainly dead.
    fn a_party_died(&self) -> bool {
        self.waiting.iter().zip(&self.waiting_ids).any(|(w, id)| {
            let pid = w.load(Ordering::SeqCst);
            pid != 0 && !liveness::is_alive(pid, Identity(id.load(Ordering::SeqCst)))
        })
    }

    /// Records this process as a waiting party, so that the others notice
    /// if it dies (the caller holds the barrier's lock).
    fn watch_me(&self) {
        if let Some(slot) = self
            .waiting
            .iter()
            .position(|w| w.load(Ordering::SeqCst) == 0)
        {
            self.waiting[slot].store(liveness::pid(), Ordering::SeqCst);
            self.waiting_ids[slot].store(liveness::me().0, Ordering::SeqCst);
        }
    }

    /// Whether the action of round `g` is running.
    fn acting_in(&self, g: u32) -> bool {
        self.acting.load(Ordering::SeqCst) == g << 1 | 1
    }

    /// Waits, with no deadline, for round `g` to end (its action runs):
    /// until the generation changes, or a watched party dies (which breaks
    /// the round).
    fn wait_round_end(&self, g: u32) {
        wait_for(
            &self.generation,
            g,
            &self.sleepers,
            None,
            || self.generation.load(Ordering::SeqCst) != g,
            || self.break_if_a_party_died(g),
        );
    }

    /// Breaks round `g` if it is still on and a watched party died. (Only
    /// if the barrier's lock is free now: a holder that is stopped must not
    /// hold a waiter past its deadline; the next re-check tries again.)
    fn break_if_a_party_died(&self, g: u32) {
        if self.a_party_died() && self.lock.try_lock().is_some() {
            if self.generation.load(Ordering::SeqCst) == g {
                self.break_it();
            }
            let _ = self.lock.unlock();
        }
    }

    /// An async party arrives (`crate::aio`), without waiting: `None` if
    /// it could not now (the barrier's lock is busy, or the action of a
    /// full round runs: see [`arrival_blocked`](Self::arrival_blocked));
    /// `Some(Err(..))` or `Some(Ok(Err(index)))` when the round ended with
    /// this party (it was the last: the action, if any, ran here); else
    /// `Some(Ok(Ok((index, generation))))`: it waits in round
    /// `generation` (see [`round_over`](Self::round_over)).
    #[allow(clippy::type_complexity)]
    pub(crate) fn try_arrive(
        &self,
        action: Option<&dyn Fn() -> bool>,
    ) -> Option<Result<Result<(u32, u32), u32>, BarrierFailure>> {
        let _ = self.lock.try_lock()?;
        if self.is_broken() {
            let _ = self.lock.unlock();
            return Some(Err(BarrierFailure::Broken));
        }
        let generation = self.generation.load(Ordering::SeqCst);
        if self.acting_in(generation) {
            let _ = self.lock.unlock();
            return None;
        }
        let index = self.count.fetch_add(1, Ordering::SeqCst);
        if index.checked_add(1).is_none_or(|n| n >= self.parties()) {
            // The last party: the round ends here, as in `wait`.
            let index = index.min(self.parties().saturating_sub(1));
            if !self.has_action() {
                self.count.store(0, Ordering::SeqCst);
                self.clear_waiting();
                self.end_round(false);
                let _ = self.lock.unlock();
                return Some(Ok(Err(index)));
            }
            let Some(action) = action else {
                self.count.store(0, Ordering::SeqCst);
                self.clear_waiting();
                self.break_it();
                let _ = self.lock.unlock();
                return Some(Err(BarrierFailure::NoAction));
            };
            self.acting.store(generation << 1 | 1, Ordering::SeqCst);
            self.watch_me();
            let _ = self.lock.unlock();
            let ok = action();
            let _ = self.lock.lock();
            let still = self.generation.load(Ordering::SeqCst) == generation;
            if still {
                self.count.store(0, Ordering::SeqCst);
                self.clear_waiting();
                if ok {
                    self.end_round(false);
                } else {
                    self.break_it();
                }
            }
            let _ = self.lock.unlock();
            return Some(if !ok {
                Err(BarrierFailure::ActionFailed)
            } else if still {
                Ok(Err(index))
            } else {
                self.round_result(generation, index).map(Err)
            });
        }
        self.watch_me();
        let _ = self.lock.unlock();
        Some(Ok(Ok((index, generation))))
    }

    /// The readiness wait of an async party that could not arrive: until
    /// the barrier's lock is free or a round ends, or `until`.
    pub(crate) fn arrival_blocked(&self, until: Instant) {
        let g = self.generation.load(Ordering::SeqCst);
        if self.acting_in(g) {
            let _ = sleep_while(&self.generation, g, &self.sleepers, until);
        } else {
            let _ = self.lock.wait_free(until, Releases::Fenced);
        }
    }

    /// How round `g` ended for party `index`, once it has (`None` while it
    /// goes on).
    pub(crate) fn round_over(&self, g: u32, index: u32) -> Option<Result<u32, BarrierFailure>> {
        (self.generation.load(Ordering::SeqCst) != g).then(|| self.round_result(g, index))
    }

    /// The readiness wait of an async party in round `g`: until the round
    /// ends, or `until`; after a slice with no wake-up, breaks the round
    /// if a waiting party died (as a blocking wait does).
    pub(crate) fn wait_round(&self, g: u32, until: Instant) {
        if !sleep_while(&self.generation, g, &self.sleepers, until)
            && self.generation.load(Ordering::SeqCst) == g
        {
            self.break_if_a_party_died(g);
        }
    }

    /// An async party waiting in round `g` leaves (its future was
    /// dropped): as a wait that timed out, it breaks the round unless the
    /// round's action runs (every party arrived) or it ended. Waits for
    /// the barrier's lock (held for instants): the caller runs it where
    /// waiting does no harm if it cannot take the lock at once
    /// ([`try_leave`](Self::try_leave)).
    pub(crate) fn leave(&self, g: u32) {
        let _ = self.lock.lock();
        self.leave_locked(g);
    }

    /// [`leave`](Self::leave) if the barrier's lock is free now; false if
    /// not (nothing done).
    pub(crate) fn try_leave(&self, g: u32) -> bool {
        if self.lock.try_lock().is_none() {
            return false;
        }
        self.leave_locked(g);
        true
    }

    fn leave_locked(&self, g: u32) {
        if self.generation.load(Ordering::SeqCst) == g && !self.acting_in(g) {
            self.break_it();
        }
        let _ = self.lock.unlock();
    }

    /// Waits until every party has arrived; returns this party's arrival
    /// index (`0..parties`, unique per round).
    ///
    /// If the barrier has an action, the last party to arrive runs
    /// `action` (true: it succeeded) before any party is released, without
    /// the barrier's lock (so the action may use the barrier, and a party
    /// that dies in it is noticed like a waiter that died).
    pub(crate) fn wait(
        &self,
        deadline: Option<Instant>,
        action: Option<&dyn Fn() -> bool>,
    ) -> Result<u32, BarrierFailure> {
        let (index, generation) = loop {
            if self.lock.lock_until(deadline, Releases::Fenced).is_none() {
                return Err(BarrierFailure::TimedOut);
            }
            if self.is_broken() {
                let _ = self.lock.unlock();
                return Err(BarrierFailure::Broken);
            }
            let generation = self.generation.load(Ordering::SeqCst);
            if !self.acting_in(generation) {
                break (self.count.fetch_add(1, Ordering::SeqCst), generation);
            }
            // A party beyond the number of parties, arriving while the
            // action of a full round runs: it joins the next round.
            let _ = self.lock.unlock();
            self.wait_round_end(generation);
        };
        if index.checked_add(1).is_none_or(|n| n >= self.parties()) {
            // The last party (or a count a corrupt peer pushed past the
            // number of parties): the barrier trips.
            let index = index.min(self.parties().saturating_sub(1));
            if !self.has_action() {
                self.count.store(0, Ordering::SeqCst);
                self.clear_waiting();
                self.end_round(false);
                let _ = self.lock.unlock();
                return Ok(index);
            }
            let Some(action) = action else {
                self.count.store(0, Ordering::SeqCst);
                self.clear_waiting();
                self.break_it();
                let _ = self.lock.unlock();
                return Err(BarrierFailure::NoAction);
            };
            self.acting.store(generation << 1 | 1, Ordering::SeqCst);
            self.watch_me();
            let _ = self.lock.unlock();
            let ok = action();
            let _ = self.lock.lock();
            // Still this round, unless an abort, a reset or a dead party
            // broke it while the action ran.
            let still = self.generation.load(Ordering::SeqCst) == generation;
            if still {
                self.count.store(0, Ordering::SeqCst);
                self.clear_waiting();
                if ok {
                    self.end_round(false);
                } else {
                    self.break_it();
                }
            }
            let _ = self.lock.unlock();
            return if !ok {
                Err(BarrierFailure::ActionFailed)
            } else if still {
                Ok(index)
            } else {
                self.round_result(generation, index)
            };
        }
        self.watch_me();
        let _ = self.lock.unlock();
        let tripped = wait_for(
            &self.generation,
            generation,
            &self.sleepers,
            deadline,
            || self.generation.load(Ordering::SeqCst) != generation,
            // A waiting party that died will never arrive again.
            || self.break_if_a_party_died(generation),
        );
        if tripped {
            return self.round_result(generation, index);
        }
        // Timed out while the action runs: every party arrived, so (as in
        // Python, whose waiter needs the lock the action holds) the round
        // is not broken by a timeout now; wait for its end.
        if self.acting_in(generation) {
            self.wait_round_end(generation);
            return self.round_result(generation, index);
        }
        // Timed out: this wait breaks the barrier, unless it tripped just
        // now. The lock is waited for briefly only: if a stopped process
        // holds it, the barrier is marked broken without it (its other
        // waiters see that at their own deadlines) and this wait returns.
        let grace = Instant::now() + std::time::Duration::from_millis(20);
        if self
            .lock
            .lock_until(Some(grace), Releases::Fenced)
            .is_none()
        {
            self.broken.store(1, Ordering::SeqCst);
            return Err(BarrierFailure::TimedOut);
        }
        let still = self.generation.load(Ordering::SeqCst) == generation;
        if still && self.acting_in(generation) {
            let _ = self.lock.unlock();
            self.wait_round_end(generation);
            return self.round_result(generation, index);
        }
        if still {
            self.break_it();
        }
        let _ = self.lock.unlock();
        if still {
            Err(BarrierFailure::TimedOut)
        } else {
            self.round_result(generation, index)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_setter_leaves_where_it_ran_and_any_word_there_leaves_waits_correct() {
        let ev = EventState::default();
        ev.set();
        let left = ev.setter.load(Ordering::Relaxed);
        if wait::running_here_cheaply().is_some() {
            // Running (bit 31), on a processor (the bits below), nothing
            // else.
            assert_eq!(left >> 31, 1, "{left:#x}");
            assert!(left & 0x7fff_ffff < 1 << 20, "{left:#x}");
        } else {
            assert_eq!(left, 0, "no hint where asking is a system call");
        }
        ev.clear();
        // Whatever a peer writes there: a wait still ends by its deadline
        // unset, and at once when set.
        for word in [0, u64::MAX, 1 << 31, 1 << 32, left, left ^ 1] {
            ev.setter.store(word, Ordering::Relaxed);
            let start = Instant::now();
            assert!(
                !ev.wait(Some(start + Duration::from_millis(20))),
                "{word:#x}"
            );
            let took = start.elapsed();
            assert!(took >= Duration::from_millis(20), "{word:#x}: {took:?}");
            assert!(took < Duration::from_secs(2), "{word:#x}: {took:?}");
            ev.flag.store(1, Ordering::SeqCst);
            assert!(
                ev.wait(Some(Instant::now() + Duration::from_secs(5))),
                "{word:#x}"
            );
            ev.clear();
        }
    }
}
