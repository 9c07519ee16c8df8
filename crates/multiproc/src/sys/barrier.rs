//! Asymmetric memory barriers between processes (`membarrier(2)`).
//!
//! A pair of threads that each store one word and then load the other's
//! (Dekker's pattern) needs a full fence on both sides, or each may read
//! the other's old value. When one side runs millions of times a second
//! and the other rarely, the frequent side can use [`light`] (only the
//! compiler is kept from reordering) and the rare side [`heavy`], which
//! makes every processor running a [`register`]ed process pass a full
//! barrier before it returns: afterwards, either the rare side sees the
//! frequent side's store, or the frequent side's next load sees the rare
//! side's. The biased lock of `Lock`, `RLock` and the locked shared objects
//! uses it (`shm::biased`).

use std::sync::atomic::{AtomicU64, Ordering};

use rustix::thread::{MembarrierCommand, membarrier, membarrier_query};

use super::futex;

/// `generation << 32 | state`: 1 registered, 2 refused, for this process
/// (a forked child asks again).
static REGISTERED: AtomicU64 = AtomicU64::new(0);
const YES: u64 = 1;
const NO: u64 = 2;

/// Registers this process for [`heavy`] barriers made by any process.
/// True if it is (cached per process): only then may a frequent side in
/// this process rely on [`light`].
pub(crate) fn register() -> bool {
    let cached = REGISTERED.load(Ordering::Relaxed);
    if (cached >> 32) as u32 == futex::generation_unchecked() {
        return cached & 0xffff_ffff == YES;
    }
    let g = futex::generation();
    let supported = membarrier_query();
    let ok = supported.contains_command(MembarrierCommand::GlobalExpedited)
        && supported.contains_command(MembarrierCommand::RegisterGlobalExpedited)
        && membarrier(MembarrierCommand::RegisterGlobalExpedited).is_ok();
    REGISTERED.store(
        u64::from(g) << 32 | if ok { YES } else { NO },
        Ordering::Relaxed,
    );
    ok
}

/// The frequent side's barrier: the compiler keeps this thread's memory
/// accesses on their side of it; the processor may still reorder a store
/// before a later load, which [`heavy`] makes up for.
#[inline]
pub(crate) fn light() {
    std::sync::atomic::compiler_fence(Ordering::SeqCst);
}

/// The rare side's barrier: returns once every processor running a
/// registered process has passed a full memory barrier (and this thread
/// has made one). Falls back to the non-expedited global barrier, which
/// waits for every processor, if the expedited one is refused.
pub(crate) fn heavy() {
    std::sync::atomic::fence(Ordering::SeqCst);
    if membarrier(MembarrierCommand::GlobalExpedited).is_ok() {
        return;
    }
    if membarrier(MembarrierCommand::Global).is_ok() {
        return;
    }
    // Neither barrier is allowed here (a seccomp filter on this process
    // only: the frequent side registered, so the kernel has them). A
    // processor's stores leave its store buffer within microseconds; a
    // millisecond is a wide margin, not a proof. What the barrier guards
    // is a lock's exclusion, never memory safety (see `shm::biased`).
    std::thread::sleep(std::time::Duration::from_millis(1));
    std::sync::atomic::fence(Ordering::SeqCst);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_is_cached_and_a_heavy_barrier_returns() {
        let first = register();
        assert_eq!(register(), first);
        heavy();
    }
}
