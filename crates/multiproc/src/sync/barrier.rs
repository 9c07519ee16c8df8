//! `Barrier`: a rendezvous of a fixed number of processes.

use std::fmt;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use super::Shared;
use crate::shm::states::{BarrierFailure, BarrierState};

/// A barrier wait failed.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize,
)]
#[non_exhaustive]
pub enum BarrierError {
    /// The barrier is broken (Python's `BrokenBarrierError`): aborted, reset
    /// while this party waited, a party timed out, or a waiting party died.
    /// [`Barrier::reset`] makes it usable again.
    #[error("the barrier is broken")]
    Broken,
    /// This wait timed out, which broke the barrier for every party.
    #[error("the barrier wait timed out (the barrier is now broken)")]
    TimedOut,
    /// This party tripped the barrier and ran its action, which panicked:
    /// the barrier is now broken (the other parties get `Broken`). Python
    /// re-raises the action's exception in this party instead; the panic
    /// message was printed by the panic hook as usual.
    #[error("the barrier's action panicked (the barrier is now broken)")]
    ActionPanicked,
    /// This party tripped a barrier made with an action, but its handle
    /// was given none ([`Barrier::with_action`]): the barrier is now broken
    /// (the other parties get `Broken`).
    #[error("the barrier has an action but this handle was given none (the barrier is now broken)")]
    NoAction,
}

/// The action of a barrier, as one handle holds it.
type Action = Arc<dyn Fn() + Send + Sync + 'static>;

/// A barrier for `parties` processes (or threads) (Python's `Barrier`).
/// Each `wait` returns when all parties have called it, with an index
/// unique within the round.
///
/// ```
/// use multiproc::{Barrier, Process};
///
/// fn party(b: Barrier) -> usize {
///     b.wait().unwrap()
/// }
///
/// let b = Barrier::new(2)?;
/// let child = Process::spawn(party, b.clone())?;
/// let mine = b.wait()?;
/// let theirs = child.join()?;
/// assert_eq!(mine + theirs, 1); // indices 0 and 1
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Action and default timeout
///
/// [`Barrier::builder`] gives the barrier a default timeout (used by
/// [`wait`](Barrier::wait); it travels with the barrier to every process)
/// and an *action* (Python's `Barrier(parties, action, timeout)`): when the
/// barrier trips, the last party to arrive runs the action once, before any
/// party is released; every party returns from `wait` after it.
///
/// A closure cannot travel to another process, and naming a function in
/// shared memory would let any process holding that memory make the others
/// jump to an address of its choosing. So the action belongs to the
/// *handle*: a handle received by another process (as a child's argument,
/// through a queue...) has none until that process gives it one with
/// [`with_action`](Barrier::with_action). Clones of a handle share its
/// action. Give every handle that may trip the barrier the same action: a
/// handle without one that trips a barrier made with one breaks it and gets
/// [`BarrierError::NoAction`].
///
/// ```
/// use multiproc::{Barrier, Process, RawValue};
///
/// // One party at a time runs the action: a plain read and write is enough.
/// fn action(rounds: &RawValue<u32>) {
///     rounds.set(rounds.get() + 1);
/// }
///
/// fn party((b, rounds): (Barrier, RawValue<u32>)) {
///     let b = b.with_action(move || action(&rounds));
///     b.wait().unwrap();
///     b.wait().unwrap();
/// }
///
/// let rounds = RawValue::new(0u32)?;
/// let r = rounds.clone();
/// let b = Barrier::builder(2)
///     .timeout(std::time::Duration::from_secs(30))
///     .action(move || action(&r))
///     .build()?;
/// let child = Process::spawn(party, (b.clone(), rounds.clone()))?;
/// b.wait()?;
/// b.wait()?;
/// child.join()?;
/// assert_eq!(rounds.get(), 2); // once per trip, in one process or the other
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// If the action panics, the barrier breaks: the party that ran it gets
/// [`BarrierError::ActionPanicked`], the others [`BarrierError::Broken`].
/// The action runs without the barrier's lock, so it may call
/// [`abort`](Barrier::abort) (the round then fails with `Broken`) or
/// [`n_waiting`](Barrier::n_waiting); a party whose timeout passes while
/// the action runs waits for the action to end, as in Python (all parties
/// have arrived, so no timeout breaks that round); a party that dies in the
/// action breaks the barrier like a waiting party that dies. An action
/// must not [`wait`](Barrier::wait) at its own barrier: the round it would
/// join is the one it holds up (Python's deadlocks there too).
#[derive(Clone)]
pub struct Barrier {
    shared: Arc<Shared<BarrierState>>,
    action: Option<Action>,
}

impl fmt::Debug for Barrier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Barrier")
            .field("shared", &self.shared)
            .field("action", &self.action.as_ref().map(|_| "Fn()"))
            .finish()
    }
}

impl serde::Serialize for Barrier {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.shared.serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for Barrier {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Shared::deserialize(d).map(Barrier::from_shared)
    }
}

fn map(r: Result<u32, BarrierFailure>) -> Result<usize, BarrierError> {
    r.map(|i| i as usize).map_err(|e| match e {
        BarrierFailure::Broken => BarrierError::Broken,
        BarrierFailure::TimedOut => BarrierError::TimedOut,
        BarrierFailure::ActionFailed => BarrierError::ActionPanicked,
        BarrierFailure::NoAction => BarrierError::NoAction,
    })
}

/// Builds a [`Barrier`] with an action or a default timeout
/// ([`Barrier::builder`]).
pub struct BarrierBuilder {
    parties: usize,
    action: Option<Action>,
    timeout: Option<Duration>,
}

impl fmt::Debug for BarrierBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BarrierBuilder")
            .field("parties", &self.parties)
            .field("action", &self.action.as_ref().map(|_| "Fn()"))
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl BarrierBuilder {
    /// The action the last party to arrive runs when the barrier trips
    /// (this handle's: see [`Barrier::with_action`] for the others).
    pub fn action(mut self, action: impl Fn() + Send + Sync + 'static) -> Self {
        self.action = Some(Arc::new(action));
        self
    }

    /// The timeout of [`Barrier::wait`] (none by default). A zero timeout
    /// times out at once unless the barrier trips.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Makes the barrier.
    pub fn build(self) -> std::io::Result<Barrier> {
        if self.parties == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "a barrier needs at least one party",
            ));
        }
        let Ok(parties) = u32::try_from(self.parties) else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "a barrier has at most 4294967295 parties",
            ));
        };
        // 0 means "no timeout": a zero timeout is stored as 1 ns.
        let timeout_ns = self.timeout.map_or(0, |t| {
            u64::try_from(t.as_nanos()).unwrap_or(u64::MAX).max(1)
        });
        let shared = Shared::<BarrierState>::create("multiproc-barrier", 0, 0)?;
        shared
            .state()
            .init(parties, self.action.is_some(), timeout_ns);
        Ok(Barrier {
            shared,
            action: self.action,
        })
    }
}

impl Barrier {
    fn from_shared(shared: Arc<Shared<BarrierState>>) -> Self {
        Barrier {
            shared,
            action: None,
        }
    }

    /// A barrier for `parties` parties (at least 1), with no action and no
    /// default timeout.
    pub fn new(parties: usize) -> std::io::Result<Barrier> {
        Barrier::builder(parties).build()
    }

    /// A builder for a barrier with an action or a default timeout
    /// (Python's `Barrier(parties, action, timeout)`).
    pub fn builder(parties: usize) -> BarrierBuilder {
        BarrierBuilder {
            parties,
            action: None,
            timeout: None,
        }
    }

    /// This handle, running `action` when this handle's party trips the
    /// barrier. For a handle received from another process: the action does
    /// not travel (see [the type's docs](Barrier#action-and-default-timeout)).
    /// On a barrier made without an action, the action is never run.
    pub fn with_action(mut self, action: impl Fn() + Send + Sync + 'static) -> Barrier {
        self.action = Some(Arc::new(action));
        self
    }

    /// The default timeout of [`wait`](Barrier::wait), if the barrier has
    /// one.
    pub fn timeout(&self) -> Option<Duration> {
        match self.shared.state().timeout_ns() {
            0 => None,
            ns => Some(Duration::from_nanos(ns)),
        }
    }

    fn wait_until(&self, deadline: Option<std::time::Instant>) -> Result<usize, BarrierError> {
        let run = |action: &Action| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| action())).is_ok()
        };
        let action = self.action.as_ref().map(|a| move || run(a));
        map(self
            .shared
            .state()
            .wait(deadline, action.as_ref().map(|a| a as &dyn Fn() -> bool)))
    }

    /// Waits for every party, at most the barrier's default timeout if it
    /// has one (a timeout breaks the barrier).
    pub fn wait(&self) -> Result<usize, BarrierError> {
        match self.timeout() {
            Some(t) => self.wait_timeout(t),
            None => self.wait_until(None),
        }
    }

    /// Waits at most `timeout`; a timeout breaks the barrier.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<usize, BarrierError> {
        self.wait_until(crate::shm::wait::after(timeout))
    }

    /// [`wait`](Self::wait), as a future: arrives at the first poll, then
    /// waits without blocking the thread (see `docs/async.md`). The
    /// barrier's default timeout does not apply: wrap the future in your
    /// runtime's timeout instead. **Dropping it after it arrived and
    /// before the barrier tripped breaks the barrier**, as a timeout does
    /// (the other parties get [`BarrierError::Broken`]): a party that
    /// left cannot be waited for. If this party is the last, the action
    /// (if any) runs in the poll.
    pub fn wait_async(&self) -> impl Future<Output = Result<usize, BarrierError>> + Send + '_ {
        /// Leaves the round when dropped before it ended.
        struct InRound {
            shared: Arc<Shared<BarrierState>>,
            generation: Option<u32>,
        }
        impl Drop for InRound {
            fn drop(&mut self) {
                let Some(g) = self.generation else { return };
                if !self.shared.state().try_leave(g) {
                    // The barrier's lock is busy for an instant: leave
                    // from a waiter thread rather than wait here.
                    let shared = Arc::clone(&self.shared);
                    let _ = crate::aio::run(Box::new(move || shared.state().leave(g)));
                }
            }
        }
        let mut round = InRound {
            shared: Arc::clone(&self.shared),
            generation: None,
        };
        let mut index = 0;
        let mut waiting = crate::aio::Waiting::new();
        std::future::poll_fn(move |cx| {
            // The whole guard moves into the closure (not a copy of its
            // field), so that dropping the future drops it.
            let round = &mut round;
            let state = self.shared.state();
            if let Some(g) = round.generation {
                if let Some(r) = state.round_over(g, index) {
                    round.generation = None;
                    return Poll::Ready(map(r));
                }
                let shared = Arc::clone(&self.shared);
                return waiting.pending(cx, move || {
                    move |until: Instant, _: &crate::aio::Ticket| {
                        shared.state().wait_round(g, until)
                    }
                });
            }
            let run = |action: &Action| {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| action())).is_ok()
            };
            let action = self.action.as_ref().map(|a| move || run(a));
            match state.try_arrive(action.as_ref().map(|a| a as &dyn Fn() -> bool)) {
                Some(Err(e)) => Poll::Ready(map(Err(e))),
                Some(Ok(Err(i))) => Poll::Ready(Ok(i as usize)),
                Some(Ok(Ok((i, g)))) => {
                    index = i;
                    round.generation = Some(g);
                    waiting.done();
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
                None => {
                    let shared = Arc::clone(&self.shared);
                    waiting.pending(cx, move || {
                        move |until: Instant, _: &crate::aio::Ticket| {
                            shared.state().arrival_blocked(until)
                        }
                    })
                }
            }
        })
    }

    /// Breaks the barrier: every waiter, now and later, gets `Broken`.
    pub fn abort(&self) {
        self.shared.state().abort();
    }

    /// Makes the barrier usable again; parties waiting now get `Broken`.
    pub fn reset(&self) {
        self.shared.state().reset();
    }

    /// The number of parties.
    pub fn parties(&self) -> usize {
        self.shared.state().parties() as usize
    }

    /// Parties waiting now.
    pub fn n_waiting(&self) -> usize {
        self.shared.state().n_waiting() as usize
    }

    /// Whether the barrier is broken.
    pub fn is_broken(&self) -> bool {
        self.shared.state().is_broken()
    }
}
