//! Asymmetric fences between processes (`membarrier(2)`).
//!
//! A [`Lock`](crate::Lock) is released far more often than anyone sleeps
//! on it. The release is therefore a plain store of the lock word followed
//! by a load of the word's waiter flag, with no fence between them (a
//! processor may then let the load overtake the store), and the fence that
//! a store-then-load handshake needs is made on the other side, by the
//! rare locker about to sleep: it raises the flag, then calls [`heavy`],
//! which has every processor that runs a [`registered`] process execute a
//! full memory barrier before it returns, then reads the word again. For
//! each releaser, that barrier falls between two of its instructions:
//! - before its store: the store is visible when [`heavy`] returns, and
//!   the locker reads the released word instead of sleeping;
//! - after it: its load of the flag comes after the barrier, so it sees
//!   the raised flag and wakes the locker.
//!
//! Only a process registered before its first plain release is covered.
//! Registering can take milliseconds (in a process with threads the kernel
//! waits for an RCU grace period: 6 to 14 ms measured here), so it is never
//! made by a releaser while it holds the lock: the first release in each
//! process (and fork generation) starts it after releasing, on a thread of
//! its own if the process has others ([`register_soon`]), and
//! releases stay locked swaps, which need nothing from the locker, until
//! [`registered`] says it is done; where the kernel refuses, they stay
//! swaps.

use std::sync::atomic::{AtomicU64, Ordering, fence};

use rustix::thread::{MembarrierCommand, membarrier};

use super::futex;

/// `state << 32 | generation`: where the registration of the process of
/// that fork generation stands (0 before anything was asked).
static STATE: AtomicU64 = AtomicU64::new(0);
/// Registered for `MEMBARRIER_CMD_GLOBAL_EXPEDITED`.
const REGISTERED: u64 = 1;
/// The kernel refused the registration.
const REFUSED: u64 = 2;
/// The registration is under way.
const PENDING: u64 = 3;

/// Whether this process is registered for the barrier of [`heavy`], so
/// that its releases may be plain stores (one load and a comparison).
#[inline]
pub(crate) fn registered() -> bool {
    let s = STATE.load(Ordering::Acquire);
    s as u32 == futex::generation_unchecked() && s >> 32 == REGISTERED
}

/// Starts the registration of this process, unless it has started already
/// in this fork generation (a forked child starts its own): on the calling
/// thread if it is the process's only one (the kernel is quick then), else
/// on a thread of its own (or on the calling one, if none can be made).
#[cold]
pub(crate) fn register_soon() {
    let generation = futex::generation();
    let s = STATE.load(Ordering::Acquire);
    if s as u32 == generation {
        return;
    }
    let pending = PENDING << 32 | u64::from(generation);
    if STATE
        .compare_exchange(s, pending, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        return;
    }
    // Alone in its process, the kernel registers at once (microseconds),
    // and a thread made for it would end glibc's single-threaded mode for
    // good (which the fork start method reads).
    if super::process::surely_single_threaded() {
        register(generation);
        return;
    }
    let started = std::thread::Builder::new()
        .name("multiproc-membarrier".into())
        .stack_size(128 * 1024)
        .spawn(move || register(generation));
    if started.is_err() {
        register(generation);
    }
}

/// Registers on the calling thread, at once: for a test's forked child,
/// which must not start threads.
#[cfg(test)]
pub(crate) fn register_now() -> bool {
    let generation = futex::generation();
    let pending = PENDING << 32 | u64::from(generation);
    STATE.store(pending, Ordering::Release);
    register(generation);
    registered()
}

fn register(generation: u32) {
    let ok = membarrier(MembarrierCommand::RegisterGlobalExpedited).is_ok();
    // A locker whose `heavy` ran before the kernel recorded this process
    // skipped its processors; this fence, between the registration and
    // the store that lets releases be plain, makes that locker's raised
    // flag visible to those releases' loads (the registration's store and
    // the locker's flag, each followed by a full fence and a read of the
    // other).
    fence(Ordering::SeqCst);
    let state = if ok { REGISTERED } else { REFUSED };
    // Only if this is still the generation that asked: a child forked
    // meanwhile has its own.
    let _ = STATE.compare_exchange(
        PENDING << 32 | u64::from(generation),
        state << 32 | u64::from(generation),
        Ordering::AcqRel,
        Ordering::Relaxed,
    );
}

/// Has every processor that runs a [`registered`] process execute a full
/// memory barrier before this returns (it interrupts them). False if the
/// kernel refused: then no barrier was made, and a plain release may still
/// be unseen.
pub(crate) fn heavy() -> bool {
    membarrier(MembarrierCommand::GlobalExpedited).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_ends_registered_or_refused_and_the_barrier_works_where_it_is_offered() {
        register_soon();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let state = loop {
            let s = STATE.load(Ordering::Acquire);
            if s >> 32 != PENDING || std::time::Instant::now() >= deadline {
                break s >> 32;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        };
        assert!(state == REGISTERED || state == REFUSED, "state {state}");
        assert_eq!(registered(), state == REGISTERED);
        if registered() {
            assert!(heavy());
        }
        // Asking again starts nothing.
        register_soon();
        assert_eq!(STATE.load(Ordering::Acquire) >> 32, state);
    }
}
