//! A lock biased to the one thread that keeps taking it: the lock of
//! `Lock`, `RLock`, `Condition` and the locked shared objects
//! ([`super::states::LockState`]).
//!
//! Taking and releasing a [`RawLock`] costs two locked instructions, most
//! of an uncontended lock and unlock (about 4.5 of 5 ns on the project's
//! AMD machines). Most locks are taken by one thread at a time for long
//! stretches. Once one thread has taken the lock [`STREAK`] times in a row
//! with nobody waiting, its release keeps the lock word and records the
//! thread's id in [`Bias::key`]: the lock is *biased* to that thread. Its
//! next entries are a store to [`Bias::busy`], a compiler fence and a
//! re-read of the key; its exits a store, a compiler fence and a read.
//!
//! Anyone else who wants the lock revokes the bias: it replaces the key by
//! a revocation mark (`REVOKED`, a count, the holder's pid), makes a heavy
//! barrier ([`barrier::heavy`], `membarrier(2)`), waits until `busy` is 0
//! (the holder has left), or the holder's process is dead, then removes
//! the mark and releases the word on the holder's behalf
//! ([`RawLock::release_for`]); then it takes the word as usual. The barrier
//! is what makes the plain fast path correct: after it, either the revoker
//! sees the holder's `busy`, or the holder's re-read of the key sees the
//! mark and it backs off. The same pair guards the exit: a holder that
//! leaves reads the key after clearing `busy` and wakes the revokers
//! sleeping on `busy` if it is marked; a revoker sleeps only after its
//! barrier, so either it sees `busy` clear or the holder sees the mark. A
//! revocation that cannot finish by the caller's deadline stays marked,
//! and the next caller who wants the lock (the holder too) finishes it.
//!
//! A holder that dies inside leaves `busy` set: the revoker finds its
//! process gone, leaves the word to the plain path, which recovers it
//! (`OwnerDied`). One that dies outside, biased but not inside, held
//! nothing: the word is released and the next taker finds the lock clean.
//!
//! A locker that waits on the word looks at the key before every wait, and
//! again after it marks the word contended and before it sleeps
//! ([`RawLock::lock_until_unless`]); a releaser about to keep its lock
//! stores the key, fences, and keeps the lock only if the word is not
//! marked (all `SeqCst`): so a locker either sees the key and revokes, or
//! the releaser sees the mark and releases, and no locker sleeps on a word
//! nobody will release.
//!
//! What a corrupt peer can do: write any key, count or `busy`. The lock
//! then excludes nothing (as with a garbage lock word), a wait on it may
//! last until its deadline, and nothing here touches memory on the
//! strength of those words.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

use super::lock::{Gave, Locked, RawLock};
use super::wait::{Next, Policy, Slept, Waiter};
use crate::sys::{barrier, futex, liveness};

/// Plain entries in a row by one thread, with nobody waiting, before the
/// lock is biased to it. A revocation costs a system call that interrupts
/// every processor running a registered process (microseconds): threads
/// or processes that take turns never bias the lock, and one that works
/// alone re-biases it only after this many entries.
const STREAK: u32 = 1024;
/// Most doublings of the streak needed to bias a lock again after
/// revocations (see [`Bias::keep`]): at most 16 M entries in a row.
const MAX_DOUBLINGS: u32 = 14;
/// The key's mark of a revocation under way: `REVOKED | count << 32 | pid`.
const REVOKED: u64 = 1 << 63;
/// How a revoker waits for the holder to leave (as a contended locker
/// waits for a holder: see `super::lock`).
const LEAVE: Policy = Policy::backoff(16, 32, 4);

/// The bias of one [`RawLock`], beside it in shared memory.
#[repr(C)]
#[derive(Debug, Default)]
pub(crate) struct Bias {
    /// 0, the id of the thread the lock is biased to, or a revocation mark.
    key: AtomicU64,
    /// 1 while the biased thread is inside.
    busy: AtomicU32,
    /// `tid << 32 | n`: thread `tid` made the last `n + 1` plain entries.
    run: AtomicU64,
    /// Revocations so far (in the mark, against a finisher that slept
    /// through a whole revocation and the next).
    revocations: AtomicU32,
    _pad: u32,
}

/// Takes the lock: the biased fast path if the lock is biased to this
/// thread; otherwise revokes another thread's bias and takes the word as
/// [`RawLock::lock_until`] does, waiting until `deadline` (`None`: as long
/// as needed, never for a dead holder).
#[inline(always)]
pub(crate) fn lock(lock: &RawLock, bias: &Bias, deadline: Option<Instant>) -> Option<Locked> {
    let key = bias.key.load(Ordering::Relaxed);
    if key == 0 {
        if lock.try_free() {
            return Some(Locked::Clean);
        }
    } else if bias.fast(lock, key) {
        return Some(Locked::Clean);
    }
    bias.slow(lock, deadline)
}

/// Takes the lock if that needs no waiting: the biased fast path, the word
/// free now (or its holder dead), or a bias whose holder is not inside
/// (revoked).
#[inline]
pub(crate) fn try_lock(lock: &RawLock, bias: &Bias) -> Option<Locked> {
    if bias.fast(lock, bias.key.load(Ordering::Relaxed)) {
        return Some(Locked::Clean);
    }
    if bias.key.load(Ordering::SeqCst) != 0 && !bias.unbias(lock, Some(Instant::now())) {
        return None;
    }
    lock.try_lock()
}

/// [`try_lock`] for an async locker that has slept (see
/// [`RawLock::try_lock_marked`]).
pub(crate) fn try_lock_marked(lock: &RawLock, bias: &Bias) -> Option<Locked> {
    if bias.fast(lock, bias.key.load(Ordering::Relaxed)) {
        return Some(Locked::Clean);
    }
    if bias.key.load(Ordering::SeqCst) != 0 && !bias.unbias(lock, Some(Instant::now())) {
        return None;
    }
    lock.try_lock_marked()
}

/// The readiness wait of an async locker ([`RawLock::wait_free`]): sleeps
/// until the lock may be free, or `until`; takes nothing. A bias held by
/// another thread is revoked first, and the wait lasts until its holder
/// has left (the locker's next try finishes the revocation). True if an
/// unlock's wake-up meant for one sleeper ended the sleep.
pub(crate) fn wait_free(lock: &RawLock, bias: &Bias, until: Instant) -> bool {
    loop {
        let key = bias.key.load(Ordering::SeqCst);
        if key == 0 {
            return lock.wait_free_unless(until, &|| bias.key.load(Ordering::SeqCst) != 0);
        }
        if key & REVOKED == 0 {
            bias.revoke(lock, key);
            continue;
        }
        let _ = bias.wait_left(lock, key, Some(until));
        return false;
    }
}

/// Releases a lock this process holds (the caller checked that the word
/// names it): leaves a biased hold, or releases the word, or (with
/// `may_bias`, after a long enough streak) keeps it biased to this thread.
#[inline(always)]
pub(crate) fn unlock(lock: &RawLock, bias: &Bias, may_bias: bool) {
    // Only the biased thread sets `busy` (and only while the key names
    // it): set, the caller is that thread, inside.
    if bias.busy.load(Ordering::Relaxed) != 0 && bias.key.load(Ordering::Relaxed) != 0 {
        bias.leave();
        return;
    }
    if !(may_bias && bias.keep(lock)) {
        lock.release_named();
    }
}

/// Whether this process holds the lock now: the word names it and, if the
/// lock is biased, the biased thread is inside.
pub(crate) fn held_here(lock: &RawLock, bias: &Bias) -> bool {
    lock.held_by_this_process() && bias.inside_if_biased()
}

/// Whether any process holds the lock now (a hint).
pub(crate) fn held(lock: &RawLock, bias: &Bias) -> bool {
    lock.is_held() && bias.inside_if_biased()
}

impl Bias {
    /// True unless the lock is biased (or being revoked) with nobody
    /// inside.
    fn inside_if_biased(&self) -> bool {
        self.key.load(Ordering::SeqCst) == 0 || self.busy.load(Ordering::SeqCst) != 0
    }

    /// The fast path, for a lock whose key read `key`: true if the lock is
    /// biased to this thread, which was not inside and now is.
    #[inline(always)]
    fn fast(&self, lock: &RawLock, key: u64) -> bool {
        if key == 0 {
            return false;
        }
        let me = u64::from(futex::tid());
        if key != me || self.busy.load(Ordering::Relaxed) != 0 || !lock.held_by_this_process() {
            return false;
        }
        self.busy.store(1, Ordering::Relaxed);
        // With a revoker's heavy barrier: either it sees `busy`, or the
        // load below sees its mark.
        barrier::light();
        if self.key.load(Ordering::Acquire) == me {
            return true;
        }
        self.leave();
        false
    }

    /// The biased thread leaves: clears `busy`, then wakes the revokers
    /// sleeping on it if the key is marked.
    #[inline(always)]
    fn leave(&self) {
        self.busy.store(0, Ordering::Release);
        // With a revoker's heavy barrier: either it sees `busy` clear, or
        // the load below sees its mark.
        barrier::light();
        if self.key.load(Ordering::Relaxed) & REVOKED != 0 {
            futex::wake(&self.busy, u32::MAX);
        }
    }

    /// The slow path: removes any bias, then takes the word, starting over
    /// if the lock is biased meanwhile. `None` if `deadline` passed first.
    #[cold]
    #[inline(never)]
    fn slow(&self, lock: &RawLock, deadline: Option<Instant>) -> Option<Locked> {
        loop {
            if !self.unbias(lock, deadline) {
                return None;
            }
            match lock.lock_until_unless(deadline, &|| self.key.load(Ordering::SeqCst) != 0) {
                Ok(how) => return Some(how),
                Err(Gave::TimedOut) => return None,
                Err(Gave::Up) => {}
            }
        }
    }

    /// Revokes the bias and finishes the revocation until the key is 0.
    /// False if `deadline` passed first.
    fn unbias(&self, lock: &RawLock, deadline: Option<Instant>) -> bool {
        loop {
            let key = self.key.load(Ordering::SeqCst);
            if key == 0 {
                return true;
            }
            if key & REVOKED == 0 {
                self.revoke(lock, key);
                continue;
            }
            match self.wait_left(lock, key, deadline) {
                None => return false,
                Some(live) => self.finish(lock, key, live),
            }
        }
    }

    /// Replaces the key of a biased holder by a revocation mark and makes
    /// the heavy barrier. (Nothing if the key changed meanwhile.)
    fn revoke(&self, lock: &RawLock, key: u64) {
        let Some((pid, _)) = lock.holder() else {
            // A key with the word free: only a corrupt peer leaves that.
            let _ = self
                .key
                .compare_exchange(key, 0, Ordering::SeqCst, Ordering::Relaxed);
            return;
        };
        let n = self.revocations.fetch_add(1, Ordering::Relaxed) & 0x7fff_ffff;
        let mark = REVOKED | u64::from(n) << 32 | u64::from(pid);
        if self
            .key
            .compare_exchange(key, mark, Ordering::SeqCst, Ordering::Relaxed)
            .is_ok()
        {
            barrier::heavy();
        }
    }

    /// Waits until the holder named by revocation `mark` has left: `true`
    /// if it has and the word still names its live process, `false` if
    /// the word has no hold of it to release (its process died, or the
    /// word names someone else), `None` if `deadline` passed first.
    fn wait_left(&self, lock: &RawLock, mark: u64, deadline: Option<Instant>) -> Option<bool> {
        let pid = mark as u32;
        let mut waiter = Waiter::new(LEAVE, deadline);
        loop {
            if self.busy.load(Ordering::Acquire) == 0 {
                return Some(lock.holder().is_some_and(|(h, _)| h == pid));
            }
            let Some((_, id)) = lock.holder().filter(|&(h, _)| h == pid) else {
                return Some(false);
            };
            match waiter.pause() {
                Next::Check => continue,
                Next::TimedOut => return None,
                Next::Sleep => {}
            }
            // The holder's exit wakes this sleep (see `leave`).
            match waiter.sleep(&self.busy, 1, None, || {
                self.busy.load(Ordering::SeqCst) == 1
            }) {
                Slept::Woken => {}
                Slept::TimedOut => return None,
                Slept::Recheck => {
                    if !liveness::is_alive(pid, id) {
                        return Some(false);
                    }
                }
            }
        }
    }

    /// Ends revocation `mark` once its holder has left: removes the mark
    /// and, if `live`, releases the holder's word. (Nothing if another
    /// finisher got there first.) A dead holder's word is left to the
    /// plain path, which recovers it.
    fn finish(&self, lock: &RawLock, mark: u64, live: bool) {
        if self
            .key
            .compare_exchange(mark, 0, Ordering::SeqCst, Ordering::Relaxed)
            .is_ok()
            && live
            && let Some((holder, id)) = lock.holder()
            && holder == mark as u32
        {
            lock.release_for(holder, id);
        }
    }

    /// At a plain release, under the lock: counts the entry and, after
    /// [`STREAK`] in a row by this thread with nobody waiting, keeps the
    /// lock biased to it. True if it keeps the word (the caller must not
    /// release it).
    #[inline]
    fn keep(&self, lock: &RawLock) -> bool {
        let me = futex::tid();
        let run = self.run.load(Ordering::Relaxed);
        let streak = if (run >> 32) as u32 == me {
            (run as u32).saturating_add(1)
        } else {
            0
        };
        self.run
            .store(u64::from(me) << 32 | u64::from(streak), Ordering::Relaxed);
        if streak < STREAK {
            return false;
        }
        self.keep_biased(lock, me, streak)
    }

    /// [`keep`](Bias::keep) after a streak of `STREAK` or more.
    #[cold]
    fn keep_biased(&self, lock: &RawLock, me: u32, streak: u32) -> bool {
        // Each revocation so far doubles the streak needed (up to
        // `STREAK << MAX_DOUBLINGS`): a lock that processes fight over,
        // whose holder often wins many times in a row while the others
        // spin, soon stops being biased, and stops paying revocations.
        let doublings = self.revocations.load(Ordering::Relaxed).min(MAX_DOUBLINGS);
        if streak < STREAK << doublings || lock.has_sleepers() || !barrier::register() {
            return false;
        }
        self.busy.store(0, Ordering::Relaxed);
        self.key.store(u64::from(me), Ordering::SeqCst);
        std::sync::atomic::fence(Ordering::SeqCst);
        if !lock.has_sleepers() {
            return true;
        }
        // Somebody is about to sleep: release as usual, unless a revoker
        // has already marked the key (it then releases the word for this
        // process).
        self.run.store(0, Ordering::Relaxed);
        self.key
            .compare_exchange(u64::from(me), 0, Ordering::SeqCst, Ordering::Relaxed)
            .is_err()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    /// A lock, its bias and a count updated under them in two steps (a
    /// load, then a store): two threads inside at once lose an update.
    #[derive(Debug, Default)]
    struct Counted {
        lock: RawLock,
        bias: Bias,
        count: AtomicU64,
    }

    impl Counted {
        fn add(&self, n: u64) {
            for _ in 0..n {
                assert_eq!(lock(&self.lock, &self.bias, None), Some(Locked::Clean));
                let v = self.count.load(Ordering::Relaxed);
                std::hint::black_box(v);
                self.count.store(v + 1, Ordering::Relaxed);
                unlock(&self.lock, &self.bias, true);
            }
        }

        fn key(&self) -> u64 {
            self.bias.key.load(Ordering::SeqCst)
        }
    }

    #[test]
    fn a_lock_one_thread_keeps_taking_is_biased_to_it_and_another_thread_revokes_it() {
        let c = Arc::new(Counted::default());
        c.add(u64::from(STREAK) + 8);
        assert_eq!(c.key(), u64::from(futex::tid()), "never biased");
        // Biased, nobody inside: free to everyone who asks.
        assert!(!held(&c.lock, &c.bias));
        assert!(!held_here(&c.lock, &c.bias));
        let other = Arc::clone(&c);
        std::thread::spawn(move || {
            assert_eq!(try_lock(&other.lock, &other.bias), Some(Locked::Clean));
            assert!(held_here(&other.lock, &other.bias));
            assert_eq!(other.key(), 0, "the bias outlived a revocation");
            unlock(&other.lock, &other.bias, true);
        })
        .join()
        .unwrap();
        assert_eq!(c.bias.revocations.load(Ordering::SeqCst), 1);
        assert!(!held(&c.lock, &c.bias));
        c.add(1);
        assert_eq!(c.count.load(Ordering::SeqCst), u64::from(STREAK) + 9);
    }

    #[test]
    fn threads_that_take_turns_in_long_runs_never_lose_an_update() {
        // Runs long enough to bias the lock, so that the others revoke it
        // again and again.
        let c = Arc::new(Counted::default());
        let threads: Vec<_> = (0..3)
            .map(|_| {
                let c = Arc::clone(&c);
                std::thread::spawn(move || {
                    for _ in 0..40 {
                        c.add(u64::from(STREAK) * 3);
                        std::thread::yield_now();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(
            c.count.load(Ordering::SeqCst),
            3 * 40 * 3 * u64::from(STREAK)
        );
        assert!(
            c.bias.revocations.load(Ordering::SeqCst) > 0,
            "never revoked: this test proved nothing"
        );
    }

    /// Biases a lock to this thread and enters it; on another thread,
    /// `take` takes it (waiting) and releases it. The lock is released
    /// after 260 ms: held across several of the taker's 50 ms sleeps, and
    /// released 40 ms before the next one would end, so that a lost
    /// wake-up shows as ~40 ms. Returns how long after the release `take`
    /// had the lock.
    fn handover_delay(take: fn(&Counted)) -> Duration {
        let c = Arc::new(Counted::default());
        c.add(u64::from(STREAK) + 8);
        assert_eq!(lock(&c.lock, &c.bias, None), Some(Locked::Clean));
        assert_eq!(c.bias.busy.load(Ordering::SeqCst), 1, "not the biased path");
        let other = Arc::clone(&c);
        let taker = std::thread::spawn(move || {
            take(&other);
            let got = Instant::now();
            unlock(&other.lock, &other.bias, true);
            got
        });
        std::thread::sleep(Duration::from_millis(260));
        let released = Instant::now();
        unlock(&c.lock, &c.bias, true);
        taker.join().unwrap().saturating_duration_since(released)
    }

    #[test]
    fn a_revoker_waiting_for_the_biased_holder_gets_the_lock_as_soon_as_it_leaves() {
        let delay = handover_delay(|c| {
            assert_eq!(lock(&c.lock, &c.bias, None), Some(Locked::Clean));
        });
        assert!(
            delay < Duration::from_millis(20),
            "handed over after {delay:?}"
        );
    }

    #[test]
    fn an_async_lockers_wait_ends_when_the_biased_holder_leaves() {
        // What an async locker does: try, wait for readiness, try again.
        let delay = handover_delay(|c| {
            let start = Instant::now();
            assert_eq!(try_lock(&c.lock, &c.bias), None);
            while try_lock_marked(&c.lock, &c.bias).is_none() {
                let _ = wait_free(&c.lock, &c.bias, start + Duration::from_secs(5));
                assert!(start.elapsed() < Duration::from_secs(5), "never ready");
            }
        });
        assert!(delay < Duration::from_millis(20), "ready after {delay:?}");
    }

    #[test]
    fn a_bias_left_by_a_thread_that_ended_is_revoked_and_the_lock_is_clean() {
        let c = Arc::new(Counted::default());
        let other = Arc::clone(&c);
        let tid = std::thread::spawn(move || {
            other.add(u64::from(STREAK) + 8);
            futex::tid()
        })
        .join()
        .unwrap();
        assert_eq!(c.key(), u64::from(tid));
        assert_eq!(
            lock(
                &c.lock,
                &c.bias,
                Some(Instant::now() + Duration::from_secs(5))
            ),
            Some(Locked::Clean)
        );
        unlock(&c.lock, &c.bias, true);
        assert_eq!(c.key(), 0);
    }

    #[test]
    fn a_thread_inside_its_biased_lock_cannot_take_it_again() {
        let c = Counted::default();
        c.add(u64::from(STREAK) + 8);
        assert_eq!(lock(&c.lock, &c.bias, None), Some(Locked::Clean));
        // Not re-entrant (an `RLock` counts its depth above this): a second
        // entry by the same thread is refused, and the lock stays held.
        assert_eq!(try_lock(&c.lock, &c.bias), None);
        let soon = Instant::now() + Duration::from_millis(30);
        assert_eq!(lock(&c.lock, &c.bias, Some(soon)), None);
        assert!(held_here(&c.lock, &c.bias));
        unlock(&c.lock, &c.bias, true);
        // The refused tries left a revocation behind: the next entry
        // finishes it.
        assert!(!held(&c.lock, &c.bias));
        c.add(1);
        assert_eq!(c.key(), 0);
    }

    #[test]
    fn garbage_in_the_bias_makes_no_wait_outlast_its_deadline() {
        let c = Counted::default();
        for (key, busy) in [(7u64, 0u32), (7, 1), (REVOKED | 12345, 1), (u64::MAX, 1)] {
            c.bias.key.store(key, Ordering::SeqCst);
            c.bias.busy.store(busy, Ordering::SeqCst);
            let soon = Instant::now() + Duration::from_millis(100);
            if let Some(how) = lock(&c.lock, &c.bias, Some(soon)) {
                assert_eq!(how, Locked::Clean);
                unlock(&c.lock, &c.bias, false);
            }
            assert!(Instant::now() < soon + Duration::from_millis(200));
            let _ = try_lock(&c.lock, &c.bias).map(|_| unlock(&c.lock, &c.bias, false));
        }
    }
}
