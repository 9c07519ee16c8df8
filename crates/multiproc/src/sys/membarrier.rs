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
//! Only a process registered before its first plain release is covered,
//! so [`registered`] registers (once per process and fork generation) and
//! says whether a plain release is allowed; where the kernel refuses, the
//! release stays a locked swap, which needs nothing from the locker.

use std::sync::atomic::{AtomicU64, Ordering, fence};

use rustix::thread::{MembarrierCommand, membarrier};

use super::futex;

/// `state << 32 | generation`: what [`registered`] found in the process of
/// that fork generation (0 before it ever asked).
static STATE: AtomicU64 = AtomicU64::new(0);
/// Registered for `MEMBARRIER_CMD_GLOBAL_EXPEDITED`.
const REGISTERED: u64 = 1;
/// The kernel refused the registration.
const REFUSED: u64 = 2;

/// Whether this process is registered for the barrier of [`heavy`], so
/// that its releases may be plain stores. Registers on the first call in
/// each process (a forked child asks again); false where the kernel has
/// no `membarrier` or refuses it.
#[inline]
pub(crate) fn registered() -> bool {
    let s = STATE.load(Ordering::Acquire);
    if s as u32 == futex::generation_unchecked() {
        return s >> 32 == REGISTERED;
    }
    register()
}

#[cold]
fn register() -> bool {
    let generation = futex::generation();
    let ok = membarrier(MembarrierCommand::RegisterGlobalExpedited).is_ok();
    // A locker whose `heavy` ran before the kernel recorded this process
    // skipped its processor; this fence, between the registration and the
    // first plain release, makes that locker's raised flag visible to the
    // release's load (the registration's store and the locker's flag,
    // each followed by a full fence and a read of the other).
    fence(Ordering::SeqCst);
    let state = if ok { REGISTERED } else { REFUSED };
    STATE.store(state << 32 | u64::from(generation), Ordering::Release);
    ok
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
    fn registration_is_cached_and_the_barrier_works_where_it_is_offered() {
        let first = registered();
        assert_eq!(registered(), first);
        if first {
            assert!(heavy());
        }
    }
}
