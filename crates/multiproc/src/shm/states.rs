//! The shared state of each synchronisation primitive, and the algorithms
//! on it. Everything here is atomics and futexes; the public handles in
//! `sync/` wrap these types and hold no `unsafe`.
//!
//! Waiting follows one pattern: read the word, increment a sleeper count,
//! re-check the condition, sleep on the word (never longer than the lock
//! re-check interval, so a dead peer is noticed); the waker changes the
//! word and wakes only when the sleeper count is non-zero. `SeqCst` on both
//! sides, so no wake-up is lost.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use super::lock::{Locked, RECHECK, RawLock};
use super::object::ShmState;
use crate::sys::futex;

fn until(deadline: Option<Instant>) -> Instant {
    let recheck = Instant::now() + RECHECK;
    deadline.map_or(recheck, |d| d.min(recheck))
}

fn passed(deadline: Option<Instant>) -> bool {
    deadline.is_some_and(|d| Instant::now() >= d)
}

/// Sleeps on `word` while it holds `seen`, counting itself in `sleepers`.
fn sleep_on(
    word: &AtomicU32,
    seen: u32,
    sleepers: &AtomicU32,
    deadline: Option<Instant>,
) -> futex::Wake {
    sleepers.fetch_add(1, Ordering::SeqCst);
    let r = if word.load(Ordering::SeqCst) == seen {
        futex::wait(word, seen, Some(until(deadline)))
    } else {
        futex::Wake::Woken
    };
    sleepers.fetch_sub(1, Ordering::SeqCst);
    r
}

/// Spins, then yields, checking `ready` each time: most waits between
/// processes on two cores end within microseconds, far sooner than a futex
/// sleep and wake-up (several microseconds each here). True if it became
/// ready.
fn spin_until(mut ready: impl FnMut() -> bool) -> bool {
    for i in 0..SPINS + YIELDS {
        if ready() {
            return true;
        }
        if i < SPINS {
            std::hint::spin_loop();
        } else {
            futex::yield_now();
        }
    }
    ready()
}

const SPINS: u32 = 128;
const YIELDS: u32 = 8;

fn wake_if_sleeping(word: &AtomicU32, sleepers: &AtomicU32, n: u32) {
    if sleepers.load(Ordering::SeqCst) > 0 {
        futex::wake(word, n);
    }
}

/// A lock whose holder may die: `Lock`, `RLock`, the lock of a `Value`,
/// an `Array` or a `Condition`.
#[repr(C)]
#[derive(Debug, Default)]
pub(crate) struct LockState {
    magic: AtomicU32,
    lock: RawLock,
    /// Set when a holder died; cleared by `make_consistent`.
    inconsistent: AtomicU32,
    /// Recursion depth of an `RLock`.
    depth: AtomicU32,
}

// SAFETY: all atomics, valid at zero, no pointers.
unsafe impl ShmState for LockState {
    const MAGIC: u32 = 0x4d50_4c4b;
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
    pub(crate) fn acquire(&self, deadline: Option<Instant>) -> Option<Acquired> {
        self.lock.lock_until(deadline).map(|l| self.outcome(l))
    }

    /// Takes the lock if that needs no waiting.
    pub(crate) fn try_acquire(&self) -> Option<Acquired> {
        self.lock.try_lock().map(|l| self.outcome(l))
    }

    /// Takes the lock again if the caller holds it (an `RLock`); returns
    /// false if it does not.
    pub(crate) fn reenter(&self) -> bool {
        if self.lock.held_by_me() {
            self.depth.fetch_add(1, Ordering::Relaxed);
            true
        } else {
            false
        }
    }

    /// Releases one level; the lock itself when the depth reaches zero.
    pub(crate) fn release(&self) {
        if self.depth.load(Ordering::Relaxed) > 0 {
            self.depth.fetch_sub(1, Ordering::Relaxed);
        } else {
            self.lock.unlock();
        }
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

// SAFETY: all atomics, valid at zero, no pointers.
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
        if deadline.is_none_or(|d| d > Instant::now()) && spin_until(|| self.try_take()) {
            return true;
        }
        loop {
            if self.try_take() {
                return true;
            }
            if passed(deadline) {
                return false;
            }
            let _ = sleep_on(&self.value, 0, &self.sleepers, deadline);
        }
    }

    /// Increments; false if that would pass the bound.
    pub(crate) fn release(&self) -> bool {
        let bound = self.bound.load(Ordering::Relaxed);
        let mut v = self.value.load(Ordering::Relaxed);
        loop {
            if bound != 0 && v + 1 >= bound {
                return false;
            }
            match self
                .value
                .compare_exchange_weak(v, v + 1, Ordering::SeqCst, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(now) => v = now,
            }
        }
        wake_if_sleeping(&self.value, &self.sleepers, 1);
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
}

// SAFETY: all atomics, valid at zero, no pointers.
unsafe impl ShmState for EventState {
    const MAGIC: u32 = 0x4d50_4556;
    fn magic(&self) -> &AtomicU32 {
        &self.magic
    }
}

impl EventState {
    /// Sets the flag and wakes every waiter.
    pub(crate) fn set(&self) {
        self.flag.store(1, Ordering::SeqCst);
        wake_if_sleeping(&self.flag, &self.sleepers, u32::MAX);
    }

    /// Clears the flag.
    pub(crate) fn clear(&self) {
        self.flag.store(0, Ordering::SeqCst);
    }

    /// Whether the flag is set.
    pub(crate) fn is_set(&self) -> bool {
        self.flag.load(Ordering::SeqCst) != 0
    }

    /// Waits until the flag is set or `deadline`; returns the flag.
    pub(crate) fn wait(&self, deadline: Option<Instant>) -> bool {
        if deadline.is_none_or(|d| d > Instant::now()) && spin_until(|| self.is_set()) {
            return true;
        }
        loop {
            if self.is_set() {
                return true;
            }
            if passed(deadline) {
                return false;
            }
            let _ = sleep_on(&self.flag, 0, &self.sleepers, deadline);
        }
    }
}

/// A lock and a notification word: `Condition`.
#[repr(C)]
#[derive(Debug, Default)]
pub(crate) struct ConditionState {
    magic: AtomicU32,
    seq: AtomicU32,
    sleepers: AtomicU32,
    _pad: u32,
    /// The condition's own lock.
    pub(crate) lock: LockState,
}

// SAFETY: all atomics, valid at zero, no pointers.
unsafe impl ShmState for ConditionState {
    const MAGIC: u32 = 0x4d50_4356;
    fn magic(&self) -> &AtomicU32 {
        &self.magic
    }
}

impl ConditionState {
    /// With the lock held: releases it, waits for a notification (or
    /// `deadline`), and takes the lock back. True if notified.
    pub(crate) fn wait(&self, deadline: Option<Instant>) -> (bool, Acquired) {
        let seen = self.seq.load(Ordering::SeqCst);
        self.sleepers.fetch_add(1, Ordering::SeqCst);
        self.lock.lock.unlock();
        let notified = loop {
            if self.seq.load(Ordering::SeqCst) != seen {
                break true;
            }
            if passed(deadline) {
                break false;
            }
            let _ = futex::wait(&self.seq, seen, Some(until(deadline)));
        };
        self.sleepers.fetch_sub(1, Ordering::SeqCst);
        let acquired = self.lock.acquire(None).unwrap_or(Acquired::Clean);
        (notified, acquired)
    }

    /// Wakes up to `n` waiters.
    pub(crate) fn notify(&self, n: u32) {
        self.seq.fetch_add(1, Ordering::SeqCst);
        wake_if_sleeping(&self.seq, &self.sleepers, n);
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
    lock: RawLock,
    _pad: u32,
    waiting: [AtomicU32; BARRIER_WATCH],
}

// SAFETY: all atomics, valid at zero, no pointers.
unsafe impl ShmState for BarrierState {
    const MAGIC: u32 = 0x4d50_4252;
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
}

impl BarrierState {
    /// Sets the number of parties.
    pub(crate) fn init(&self, parties: u32) {
        self.parties.store(parties, Ordering::SeqCst);
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

    fn break_it(&self) {
        self.broken.store(1, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
        futex::wake(&self.generation, u32::MAX);
    }

    /// Breaks the barrier (Python's `abort`).
    pub(crate) fn abort(&self) {
        let _ = self.lock.lock();
        self.break_it();
        self.lock.unlock();
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
        for w in &self.waiting {
            w.store(0, Ordering::SeqCst);
        }
        self.lock.unlock();
    }

    /// Waits until every party has arrived; returns this party's arrival
    /// index (`0..parties`, unique per round).
    pub(crate) fn wait(&self, deadline: Option<Instant>) -> Result<u32, BarrierFailure> {
        let me = futex::pid();
        let _ = self.lock.lock();
        if self.is_broken() {
            self.lock.unlock();
            return Err(BarrierFailure::Broken);
        }
        let index = self.count.fetch_add(1, Ordering::SeqCst);
        let generation = self.generation.load(Ordering::SeqCst);
        if index + 1 == self.parties() {
            self.count.store(0, Ordering::SeqCst);
            for w in &self.waiting {
                w.store(0, Ordering::SeqCst);
            }
            self.generation.fetch_add(1, Ordering::SeqCst);
            self.lock.unlock();
            wake_if_sleeping(&self.generation, &self.sleepers, u32::MAX);
            return Ok(index);
        }
        if let Some(slot) = self.waiting.iter().find(|w| w.load(Ordering::SeqCst) == 0) {
            slot.store(me, Ordering::SeqCst);
        }
        self.lock.unlock();
        spin_until(|| self.generation.load(Ordering::SeqCst) != generation);
        loop {
            if self.generation.load(Ordering::SeqCst) != generation {
                return if self.is_broken() {
                    Err(BarrierFailure::Broken)
                } else {
                    Ok(index)
                };
            }
            if passed(deadline) {
                let _ = self.lock.lock();
                let still = self.generation.load(Ordering::SeqCst) == generation;
                if still {
                    self.break_it();
                }
                self.lock.unlock();
                return if still {
                    Err(BarrierFailure::TimedOut)
                } else {
                    self.wait_result(index)
                };
            }
            if sleep_on(&self.generation, generation, &self.sleepers, deadline)
                == futex::Wake::TimedOut
            {
                // A waiting party that died will never arrive again.
                let dead = self.waiting.iter().any(|w| {
                    let pid = w.load(Ordering::SeqCst);
                    pid != 0 && !futex::is_alive(pid)
                });
                if dead {
                    let _ = self.lock.lock();
                    if self.generation.load(Ordering::SeqCst) == generation {
                        self.break_it();
                    }
                    self.lock.unlock();
                }
            }
        }
    }

    fn wait_result(&self, index: u32) -> Result<u32, BarrierFailure> {
        if self.is_broken() {
            Err(BarrierFailure::Broken)
        } else {
            Ok(index)
        }
    }
}
