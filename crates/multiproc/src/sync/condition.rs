//! `Condition`: wait until notified, with a lock around the shared state.

use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use super::lock::{OwnerDied, wrap};
use super::{Shared, shared_handle};
use crate::shm::lock::NotSend;
use crate::shm::states::{Acquired, ConditionState};

/// A condition variable shared between processes, with its own lock
/// (Python's `Condition`). Take the lock with [`lock`](Self::lock), then
/// [`ConditionGuard::wait`] releases it while waiting for a notification
/// and takes it back. Spurious wake-ups are possible, as everywhere: use
/// [`ConditionGuard::wait_for`] to wait for a predicate.
///
/// ```
/// use multiproc::{Condition, Process, Value};
///
/// fn producer((cond, ready): (Condition, Value<u32>)) {
///     let _g = cond.lock().unwrap();
///     ready.set(1);
///     cond.notify_all();
/// }
///
/// let cond = Condition::new()?;
/// let ready = Value::new(0u32)?;
/// let child = Process::spawn(producer, (cond.clone(), ready.clone()))?;
/// let guard = cond.lock().unwrap();
/// let _guard = guard.wait_for(|| ready.get() != 0);
/// assert_eq!(ready.get(), 1);
/// drop(_guard);
/// child.join()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Condition {
    shared: Arc<Shared<ConditionState>>,
}

shared_handle!(Condition);

/// Holds a [`Condition`]'s lock.
#[derive(Debug)]
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct ConditionGuard<'a> {
    cond: &'a Condition,
    _not_send: NotSend,
}

impl<'a> ConditionGuard<'a> {
    /// Releases the lock, waits for a notification, takes the lock back.
    pub fn wait(self) -> ConditionGuard<'a> {
        let cond = self.cond;
        std::mem::forget(self);
        let _ = cond.shared.state().wait(None);
        ConditionGuard {
            cond,
            _not_send: NotSend::default(),
        }
    }

    /// Like [`wait`](Self::wait), giving up at `timeout`; the flag says
    /// whether a notification came.
    pub fn wait_timeout(self, timeout: Duration) -> (ConditionGuard<'a>, bool) {
        let cond = self.cond;
        std::mem::forget(self);
        let (notified, _) = cond.shared.state().wait(crate::shm::wait::after(timeout));
        (
            ConditionGuard {
                cond,
                _not_send: NotSend::default(),
            },
            notified,
        )
    }

    /// Waits until `predicate` holds, checking it first and after every
    /// notification (Python's `wait_for(predicate)`).
    pub fn wait_for(self, mut predicate: impl FnMut() -> bool) -> ConditionGuard<'a> {
        let mut guard = self;
        while !predicate() {
            guard = guard.wait();
        }
        guard
    }

    /// Like [`wait_for`](Self::wait_for), for at most `timeout` in all;
    /// the flag is the predicate's last value (Python's
    /// `wait_for(predicate, timeout)`).
    pub fn wait_for_timeout(
        self,
        timeout: Duration,
        mut predicate: impl FnMut() -> bool,
    ) -> (ConditionGuard<'a>, bool) {
        let end = crate::shm::wait::after(timeout);
        let mut guard = self;
        loop {
            if predicate() {
                return (guard, true);
            }
            let left = end.map_or(timeout, |end| {
                end.saturating_duration_since(std::time::Instant::now())
            });
            if left.is_zero() {
                return (guard, false);
            }
            guard = guard.wait_timeout(left).0;
        }
    }

    /// [`wait`](Self::wait), as a future: releases the lock at once (when
    /// called), waits for a notification without blocking the thread,
    /// then takes the lock back (see `docs/async.md`). Dropping the future
    /// before it is ready leaves the lock released and takes no
    /// notification (one issued to it goes to another waiter). The guard
    /// is not `Send`: in a task that may move between threads, the
    /// future that yields it is for a task that awaits it to the end.
    pub fn wait_async(self) -> impl Future<Output = ConditionGuard<'a>> + Send + 'a {
        let cond = self.cond;
        std::mem::forget(self);
        let state = cond.shared.state();
        // `None`: this process did not hold the lock (a guard a forked
        // child inherited): nothing to wait for, as the sync form.
        let begun = state.wait_begin();
        let depth = begun.map(|(depth, _)| depth);
        let start = begun.map_or(0, |(_, start)| start);
        /// Leaves the waiters if dropped before notified.
        struct Registered<'c> {
            cond: &'c Condition,
            on: bool,
        }
        impl Drop for Registered<'_> {
            fn drop(&mut self) {
                if self.on {
                    self.cond.shared.state().wait_leave();
                }
            }
        }
        let mut registered = Registered {
            cond,
            on: depth.is_some(),
        };
        let mut waiting = crate::aio::Waiting::new();
        let mut relock = {
            let shared = Arc::clone(&cond.shared);
            crate::aio::PassOn::new(move || shared.state().lock.wake_one())
        };
        std::future::poll_fn(move |cx| {
            // The whole guard moves into the closure (not a copy of its
            // field), so that dropping the future drops it.
            let registered = &mut registered;
            let state = cond.shared.state();
            if registered.on {
                if !state.wait_take(start) {
                    let shared = Arc::clone(&cond.shared);
                    return waiting.pending(cx, move || {
                        move |until: Instant, _: &crate::aio::Ticket| {
                            shared.state().wait_for_token(start, until)
                        }
                    });
                }
                registered.on = false;
                waiting.done();
            }
            let Some(depth) = depth else {
                return Poll::Ready(ConditionGuard {
                    cond,
                    _not_send: NotSend::default(),
                });
            };
            let taken = if waiting.has_slept() {
                state.lock.try_acquire_marked()
            } else {
                state.lock.try_acquire()
            };
            relock.arm(taken.is_none() && waiting.may_sleep());
            match taken {
                Some(how) => {
                    state.wait_relocked(depth, how);
                    Poll::Ready(ConditionGuard {
                        cond,
                        _not_send: NotSend::default(),
                    })
                }
                None => {
                    let shared = Arc::clone(&cond.shared);
                    waiting.pending(cx, move || {
                        move |until: Instant, ticket: &crate::aio::Ticket| {
                            let lock = &shared.state().lock;
                            if lock.wait_free(until) && !ticket.wanted() {
                                lock.wake_one();
                            }
                        }
                    })
                }
            }
        })
    }

    /// Declares the protected data consistent again after [`OwnerDied`]:
    /// later lockers take the lock cleanly.
    pub fn make_consistent(&self) {
        self.cond.shared.state().lock.make_consistent();
    }

    /// Whether a holder died with the lock and nobody has called
    /// [`make_consistent`](Self::make_consistent) since (only a guard from
    /// [`Condition::lock_recover`] can see `true`).
    pub fn owner_died(&self) -> bool {
        self.cond.shared.state().lock.is_inconsistent()
    }
}

impl Drop for ConditionGuard<'_> {
    fn drop(&mut self) {
        self.cond.shared.state().lock.release();
    }
}

impl Condition {
    fn from_shared(shared: Arc<Shared<ConditionState>>) -> Self {
        Condition { shared }
    }

    /// A new condition with its own lock.
    pub fn new() -> std::io::Result<Condition> {
        Ok(Condition::from_shared(Shared::create(
            "multiproc-condition",
            0,
            0,
        )?))
    }

    /// Takes the condition's lock whether or not a holder died with it (see
    /// [`Lock::lock_recover`](crate::Lock::lock_recover)).
    pub fn lock_recover(&self) -> ConditionGuard<'_> {
        self.shared.state().lock.acquire(None);
        ConditionGuard {
            cond: self,
            _not_send: NotSend::default(),
        }
    }

    /// Takes the condition's lock; [`OwnerDied`] (holding nothing) while
    /// the data is marked inconsistent.
    pub fn lock(&self) -> Result<ConditionGuard<'_>, OwnerDied> {
        let how = self
            .shared
            .state()
            .lock
            .acquire(None)
            .unwrap_or(Acquired::Clean);
        let guard = ConditionGuard {
            cond: self,
            _not_send: NotSend::default(),
        };
        wrap(guard, how)
    }

    /// Wakes one waiter.
    pub fn notify_one(&self) {
        self.shared.state().notify(1);
    }

    /// Wakes up to `n` waiters.
    pub fn notify(&self, n: u32) {
        self.shared.state().notify(n);
    }

    /// Wakes every waiter.
    pub fn notify_all(&self) {
        self.shared.state().notify(u32::MAX);
    }
}
