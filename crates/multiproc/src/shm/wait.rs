//! The one way a shared-memory structure waits for another process.
//!
//! Every lock, semaphore, event, condition, barrier, queue ring and pipe
//! waits through a [`Waiter`]; only what the sleep is made of differs. The
//! structures here sleep on a futex word ([`Waiter::sleep`]); the
//! shared-memory pipe sleeps in `poll` on its wake-up socket instead, so
//! that `wait()` can watch many connections at once, with the same
//! counting protocol.
//!
//! A waiter first re-checks its condition a few times with a `pause`
//! between checks (spins), then a number of times giving the processor away
//! between checks (yields), then sleeps on a futex word. Each sleep lasts
//! at most [`RECHECK`], so that a waiter whose peer died notices it (the
//! caller asks [`crate::sys::liveness`] then), and never past the caller's
//! deadline: every wait here returns by its deadline, whatever the other
//! processes do or write.
//!
//! A sleeper counts itself in a sleeper count before its last re-check, and
//! the side that changes the condition reads that count after changing it
//! (both `SeqCst`), so either the sleeper sees the change or the changer
//! sees the sleeper and wakes it: no wake-up is lost. The lock and the
//! ring refine the re-check with [`RawLock::observe`](super::lock::RawLock::observe).

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::sys::futex;

/// How long a sleeper sleeps at most before it checks its peers again.
pub(crate) const RECHECK: Duration = Duration::from_millis(50);

/// How many checks a waiter makes before it sleeps: counted, or by the
/// clock.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Policy {
    /// `spins` checks separated by a `pause` instruction, then `yields`
    /// checks separated by a yield of the processor.
    Counted {
        /// Checks separated by a `pause`.
        spins: u32,
        /// Most `pause`s between two checks: the n-th spin pauses
        /// `min(2^n, backoff)` times.
        backoff: u32,
        /// Checks separated by a yield.
        yields: u32,
    },
    /// Checks separated by a `pause` for `spin`, then separated by yields
    /// until `spin + yields` has passed since the first failed check (the
    /// clock is read every [`CLOCK_EVERY`] spins): for a peer that answers
    /// within microseconds when it runs (the pipe's round trip).
    Timed {
        /// How long to spin.
        spin: Duration,
        /// How long to yield after that.
        yields: Duration,
    },
}

impl Policy {
    /// A counted policy (see [`Policy::Counted`]).
    pub(crate) const fn counted(spins: u32, yields: u32) -> Policy {
        Policy::Counted {
            spins,
            backoff: 1,
            yields,
        }
    }

    /// A counted policy whose spins back off exponentially up to
    /// `backoff` pauses between two checks.
    pub(crate) const fn backoff(spins: u32, backoff: u32, yields: u32) -> Policy {
        Policy::Counted {
            spins,
            backoff,
            yields,
        }
    }
}

/// Spins between two readings of the clock, for [`Policy::Timed`].
const CLOCK_EVERY: u32 = 32;

/// What the caller should do after a check of its condition failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// Check again (the waiter paused or yielded).
    Check,
    /// Spinning and yielding are over: sleep (see [`Waiter::sleep`]).
    Sleep,
    /// The deadline passed.
    TimedOut,
}

/// How a sleep ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slept {
    /// Woken, or the word had changed: check again.
    Woken,
    /// [`RECHECK`] passed with no wake-up: check the peers' liveness, then
    /// check again.
    Recheck,
    /// The deadline passed.
    TimedOut,
}

/// One wait, from its first failed check to its end.
#[derive(Debug)]
pub(crate) struct Waiter {
    policy: Policy,
    deadline: Option<Instant>,
    round: u32,
    /// For [`Policy::Timed`]: when the first failed check was made, and
    /// whether the spinning is over.
    started: Option<Instant>,
    yielding: bool,
}

impl Waiter {
    /// A wait that gives up at `deadline` (never, for `None`).
    pub(crate) fn new(policy: Policy, deadline: Option<Instant>) -> Waiter {
        Waiter {
            policy,
            deadline,
            round: 0,
            started: None,
            yielding: false,
        }
    }

    /// Whether the deadline has passed.
    pub(crate) fn passed(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// After a failed check: pause or yield and return [`Next::Check`]
    /// while the policy allows, then [`Next::Sleep`]. The deadline is read
    /// before every yield and sleep (not between spins, which take
    /// nanoseconds).
    pub(crate) fn pause(&mut self) -> Next {
        let round = self.round;
        self.round = self.round.saturating_add(1);
        match self.policy {
            Policy::Counted {
                spins,
                backoff,
                yields,
            } => {
                if round < spins {
                    let pauses = 1u32.checked_shl(round).unwrap_or(u32::MAX).min(backoff);
                    for _ in 0..pauses.max(1) {
                        std::hint::spin_loop();
                    }
                    return Next::Check;
                }
                if self.passed() {
                    return Next::TimedOut;
                }
                if round < spins.saturating_add(yields) {
                    futex::yield_now();
                    return Next::Check;
                }
                Next::Sleep
            }
            Policy::Timed { spin, yields } => {
                if !self.yielding && round % CLOCK_EVERY != 0 {
                    std::hint::spin_loop();
                    return Next::Check;
                }
                let started = *self.started.get_or_insert_with(Instant::now);
                let spent = started.elapsed();
                if spent < spin {
                    std::hint::spin_loop();
                    return Next::Check;
                }
                if self.passed() {
                    return Next::TimedOut;
                }
                if spent < spin.saturating_add(yields) {
                    self.yielding = true;
                    futex::yield_now();
                    return Next::Check;
                }
                Next::Sleep
            }
        }
    }

    /// Sleeps while `word` holds `seen`: counts itself in `sleepers` (if
    /// any), runs `blocked` (the caller's last re-check, which must be made
    /// after the count is raised) and sleeps only if it still says
    /// blocked, for at most [`RECHECK`] and never past the deadline.
    pub(crate) fn sleep(
        &self,
        word: &AtomicU32,
        seen: u32,
        sleepers: Option<&AtomicU32>,
        blocked: impl FnOnce() -> bool,
    ) -> Slept {
        if let Some(s) = sleepers {
            s.fetch_add(1, Ordering::SeqCst);
        }
        let woke = if blocked() {
            let recheck = Instant::now() + RECHECK;
            let until = self.deadline.map_or(recheck, |d| d.min(recheck));
            futex::wait(word, seen, Some(until))
        } else {
            futex::Wake::Woken
        };
        if let Some(s) = sleepers {
            s.fetch_sub(1, Ordering::SeqCst);
        }
        match woke {
            futex::Wake::Woken => Slept::Woken,
            futex::Wake::TimedOut if self.passed() => Slept::TimedOut,
            futex::Wake::TimedOut => Slept::Recheck,
        }
    }
}

/// The deadline `timeout` from now; `None` (no deadline) for a timeout so
/// long that the clock cannot express its end (`Duration::MAX`), instead
/// of a panic.
pub(crate) fn after(timeout: Duration) -> Option<Instant> {
    Instant::now().checked_add(timeout)
}

/// Wakes up to `n` sleepers on `word`, if `sleepers` says there are any.
pub(crate) fn wake(word: &AtomicU32, sleepers: &AtomicU32, n: u32) {
    if sleepers.load(Ordering::SeqCst) > 0 {
        futex::wake(word, n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backing_off_policy_checks_as_often_as_a_plain_one_then_sleeps() {
        for policy in [Policy::counted(16, 3), Policy::backoff(16, 32, 3)] {
            let mut w = Waiter::new(policy, None);
            let checks = std::iter::from_fn(|| match w.pause() {
                Next::Check => Some(()),
                _ => None,
            })
            .count();
            assert_eq!(checks, 16 + 3, "{policy:?}");
        }
    }

    #[test]
    fn a_wait_with_nothing_to_wait_for_returns_by_its_deadline() {
        let word = AtomicU32::new(0);
        let sleepers = AtomicU32::new(0);
        let start = Instant::now();
        let mut w = Waiter::new(
            Policy::counted(4, 4),
            Some(start + Duration::from_millis(120)),
        );
        let mut rechecks = 0;
        loop {
            match w.pause() {
                Next::Check => continue,
                Next::TimedOut => break,
                Next::Sleep => {}
            }
            match w.sleep(&word, 0, Some(&sleepers), || true) {
                Slept::Woken => {}
                Slept::Recheck => rechecks += 1,
                Slept::TimedOut => break,
            }
        }
        assert!(start.elapsed() >= Duration::from_millis(120));
        assert!(start.elapsed() < Duration::from_secs(10));
        assert!(rechecks >= 1, "a 120 ms wait re-checks its peers");
        assert_eq!(sleepers.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_timed_policy_spins_then_yields_then_sleeps_and_keeps_the_deadline() {
        let start = Instant::now();
        let mut w = Waiter::new(
            Policy::Timed {
                spin: Duration::from_micros(50),
                yields: Duration::from_micros(500),
            },
            None,
        );
        let mut checks = 0u32;
        while w.pause() == Next::Check {
            checks += 1;
        }
        assert!(start.elapsed() >= Duration::from_micros(550));
        assert!(checks > CLOCK_EVERY);
        let mut w = Waiter::new(
            Policy::Timed {
                spin: Duration::ZERO,
                yields: Duration::from_secs(60),
            },
            Some(Instant::now() + Duration::from_millis(20)),
        );
        while w.pause() == Next::Check {}
        assert!(w.passed());
    }

    #[test]
    fn a_changed_word_wakes_a_sleeper() {
        let word = std::sync::Arc::new(AtomicU32::new(0));
        let sleepers = std::sync::Arc::new(AtomicU32::new(0));
        let (w2, s2) = (word.clone(), sleepers.clone());
        let t = std::thread::spawn(move || {
            let w = Waiter::new(Policy::counted(0, 0), None);
            while w2.load(Ordering::SeqCst) == 0 {
                let _ = w.sleep(&w2, 0, Some(&s2), || w2.load(Ordering::SeqCst) == 0);
            }
        });
        std::thread::sleep(Duration::from_millis(5));
        word.store(1, Ordering::SeqCst);
        wake(&word, &sleepers, 1);
        t.join().expect("sleeper");
    }
}
