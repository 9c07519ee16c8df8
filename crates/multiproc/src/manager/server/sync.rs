//! The server's blocking objects: queue, lock, event and barrier.
//!
//! A blocking method waits on a condition variable in slices of
//! [`LIVENESS_SLICE`]: between slices it checks that the client is still
//! connected, so a client killed while it waits does not hold a server
//! thread (or, for a barrier, the other parties) forever. Each client has
//! its own server thread, so one client's wait never blocks another's call.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::super::error::RemoteError;
use super::super::protocol::{
    BarrierOp, Blob, EventOp, LockOp, Owner, Payload, QueueOp, Reply, SemaphoreOp, TimeoutMs,
};
use super::super::transport::LIVENESS_SLICE;
use super::{Ctx, lock};

/// Waits until `ready` holds, the timeout passes, or the client goes.
/// Returns the guard and whether `ready` held.
fn wait_until<'a, T>(
    cv: &Condvar,
    mut guard: MutexGuard<'a, T>,
    timeout: TimeoutMs,
    ctx: &Ctx<'_>,
    mut ready: impl FnMut(&mut T) -> bool,
) -> (MutexGuard<'a, T>, bool) {
    // A bound too far to represent is no bound.
    let deadline = timeout.and_then(|ms| Instant::now().checked_add(Duration::from_millis(ms)));
    loop {
        if ready(&mut guard) {
            return (guard, true);
        }
        let now = Instant::now();
        let slice = match deadline {
            Some(d) if d <= now => return (guard, false),
            Some(d) => (d - now).min(LIVENESS_SLICE),
            None => LIVENESS_SLICE,
        };
        guard = cv
            .wait_timeout(guard, slice)
            .unwrap_or_else(|e| e.into_inner())
            .0;
        if !(ctx.alive)() {
            return (guard, false);
        }
    }
}

/// A FIFO queue of encoded items, optionally bounded; a joinable one also
/// counts the items put and not yet marked done (Python's
/// `JoinableQueue`).
#[derive(Debug, Default)]
pub(crate) struct QueueObject {
    items: Mutex<VecDeque<Vec<u8>>>,
    max_items: u64,
    not_empty: Condvar,
    not_full: Condvar,
    /// Whether `task_done` and `join` are allowed.
    joinable: bool,
    /// Items put and not yet marked done. Taken after `items` when both
    /// are held (a put counts its item before any getter can see it).
    unfinished: Mutex<u64>,
    all_done: Condvar,
}

impl QueueObject {
    /// A queue of at most `max_items` items (0: no bound).
    pub(crate) fn new(max_items: u64) -> Self {
        QueueObject {
            max_items,
            ..QueueObject::default()
        }
    }

    /// A joinable queue of at most `max_items` items (0: no bound).
    pub(crate) fn joinable(max_items: u64) -> Self {
        QueueObject {
            max_items,
            joinable: true,
            ..QueueObject::default()
        }
    }

    /// Runs one queue method.
    pub(crate) fn call(&self, op: QueueOp, ctx: &Ctx<'_>) -> Reply {
        match op {
            QueueOp::TaskDone | QueueOp::Join(_) if !self.joinable => {
                return Err(RemoteError::NoSuchMethod {
                    object: "queue".into(),
                    method: "joinable queue".into(),
                });
            }
            QueueOp::TaskDone => {
                let mut unfinished = lock(&self.unfinished);
                if *unfinished == 0 {
                    return Err(RemoteError::TaskDoneTooOften);
                }
                *unfinished -= 1;
                if *unfinished == 0 {
                    self.all_done.notify_all();
                }
                return Ok(Payload::Unit);
            }
            QueueOp::Join(timeout) => {
                let unfinished = lock(&self.unfinished);
                let done = wait_until(&self.all_done, unfinished, timeout, ctx, |n| *n == 0).1;
                return Ok(Payload::Bool(done));
            }
            _ => {}
        }
        let items = lock(&self.items);
        Ok(match op {
            QueueOp::Put(item, timeout) => {
                let max = self.max_items;
                let (mut items, ok) = wait_until(&self.not_full, items, timeout, ctx, |q| {
                    max == 0 || (q.len() as u64) < max
                });
                if ok {
                    if self.joinable {
                        *lock(&self.unfinished) += 1;
                    }
                    items.push_back(item.0);
                    self.not_empty.notify_one();
                }
                Payload::Bool(ok)
            }
            QueueOp::Get(timeout) => {
                let (mut items, ok) =
                    wait_until(&self.not_empty, items, timeout, ctx, |q| !q.is_empty());
                let item = if ok { items.pop_front() } else { None };
                if item.is_some() {
                    self.not_full.notify_one();
                }
                Payload::MaybeValue(item.map(Blob))
            }
            QueueOp::Len => Payload::Count(items.len() as u64),
            QueueOp::TaskDone | QueueOp::Join(_) => unreachable!("answered above"),
        })
    }
}

#[derive(Debug, Clone, Copy)]
struct Holder {
    owner: Owner,
    session: u64,
    depth: u64,
}

/// A lock, reentrant or not, whose holder is a client thread.
#[derive(Debug, Default)]
pub(crate) struct LockObject {
    reentrant: bool,
    holder: Mutex<Option<Holder>>,
    released: Condvar,
}

impl LockObject {
    /// A lock; a reentrant one may be acquired again by its holder.
    pub(crate) fn new(reentrant: bool) -> Self {
        LockObject {
            reentrant,
            ..LockObject::default()
        }
    }

    /// Runs one lock method for a client on `ctx.session`.
    pub(crate) fn call(&self, op: LockOp, ctx: &Ctx<'_>) -> Reply {
        let holder = lock(&self.holder);
        match op {
            LockOp::Acquire(owner, timeout) => {
                let reentrant = self.reentrant;
                let (mut holder, ok) = wait_until(&self.released, holder, timeout, ctx, |h| {
                    h.is_none_or(|h| reentrant && h.owner == owner)
                });
                if ok {
                    match &mut *holder {
                        Some(h) => h.depth += 1,
                        None => {
                            *holder = Some(Holder {
                                owner,
                                session: ctx.session,
                                depth: 1,
                            })
                        }
                    }
                }
                Ok(Payload::Bool(ok))
            }
            LockOp::Release(owner) => {
                let mut holder = holder;
                match &mut *holder {
                    // Python lets any thread release a plain Lock.
                    Some(h) if !self.reentrant || h.owner == owner => {
                        h.depth -= 1;
                        if h.depth == 0 {
                            *holder = None;
                            self.released.notify_one();
                        }
                        Ok(Payload::Unit)
                    }
                    _ => Err(RemoteError::NotOwner),
                }
            }
        }
    }

    /// Releases the lock if it was acquired through `session`, which has
    /// ended (its client closed the connection, or died).
    pub(crate) fn session_ended(&self, session: u64) {
        let mut holder = lock(&self.holder);
        if holder.is_some_and(|h| h.session == session) {
            *holder = None;
            self.released.notify_one();
        }
    }
}

/// A semaphore: a count of units, optionally bounded by its start.
#[derive(Debug, Default)]
pub(crate) struct SemaphoreObject {
    units: Mutex<u64>,
    /// The most units a release may bring it to, for a bounded one.
    bound: Option<u64>,
    released: Condvar,
}

impl SemaphoreObject {
    /// A semaphore of `value` units.
    pub(crate) fn new(value: u64, bounded: bool) -> Self {
        SemaphoreObject {
            units: Mutex::new(value),
            bound: bounded.then_some(value),
            released: Condvar::new(),
        }
    }

    /// Runs one semaphore method.
    pub(crate) fn call(&self, op: SemaphoreOp, ctx: &Ctx<'_>) -> Reply {
        let units = lock(&self.units);
        match op {
            SemaphoreOp::Acquire(timeout) => {
                let (mut units, ok) = wait_until(&self.released, units, timeout, ctx, |n| *n > 0);
                if ok {
                    *units -= 1;
                }
                Ok(Payload::Bool(ok))
            }
            SemaphoreOp::Release => {
                let mut units = units;
                if self.bound.is_some_and(|b| *units >= b) {
                    return Err(RemoteError::OverReleased);
                }
                *units += 1;
                self.released.notify_one();
                Ok(Payload::Unit)
            }
            SemaphoreOp::Value => Ok(Payload::Count(*units)),
        }
    }
}

/// An event: a flag that waiters wait for.
#[derive(Debug, Default)]
pub(crate) struct EventObject {
    flag: Mutex<bool>,
    changed: Condvar,
}

impl EventObject {
    /// Runs one event method.
    pub(crate) fn call(&self, op: EventOp, ctx: &Ctx<'_>) -> Reply {
        let mut flag = lock(&self.flag);
        Ok(match op {
            EventOp::Set => {
                *flag = true;
                self.changed.notify_all();
                Payload::Unit
            }
            EventOp::Clear => {
                *flag = false;
                Payload::Unit
            }
            EventOp::IsSet => Payload::Bool(*flag),
            EventOp::Wait(timeout) => {
                Payload::Bool(wait_until(&self.changed, flag, timeout, ctx, |f| *f).1)
            }
        })
    }
}

/// How many ended cycles a barrier remembers, for waiters that wake late.
const ENDS_KEPT: usize = 16;

#[derive(Debug, Default)]
struct BarrierState {
    /// Parties waiting in the current cycle.
    count: u64,
    /// The current cycle's number.
    generation: u64,
    /// Broken until reset.
    broken: bool,
    /// How recent cycles ended: (generation, whether all parties came).
    ends: VecDeque<(u64, bool)>,
}

impl BarrierState {
    /// Ends the current cycle, tripped or failed.
    fn end(&mut self, tripped: bool) {
        if self.ends.len() == ENDS_KEPT {
            self.ends.pop_front();
        }
        self.ends.push_back((self.generation, tripped));
        self.generation += 1;
        self.count = 0;
    }
}

/// A barrier for a fixed number of parties (Python's `Barrier`).
#[derive(Debug, Default)]
pub(crate) struct BarrierObject {
    parties: u64,
    state: Mutex<BarrierState>,
    changed: Condvar,
}

impl BarrierObject {
    /// A barrier for `parties` parties.
    pub(crate) fn new(parties: u32) -> Result<Self, RemoteError> {
        if parties == 0 {
            return Err(RemoteError::NoParties);
        }
        Ok(BarrierObject {
            parties: u64::from(parties),
            ..BarrierObject::default()
        })
    }

    /// Runs one barrier method.
    pub(crate) fn call(&self, op: BarrierOp, ctx: &Ctx<'_>) -> Reply {
        let mut state = lock(&self.state);
        match op {
            BarrierOp::Wait(timeout) => {
                if state.broken {
                    return Err(RemoteError::BrokenBarrier);
                }
                let generation = state.generation;
                let index = state.count;
                state.count += 1;
                if state.count == self.parties {
                    state.end(true);
                    self.changed.notify_all();
                    return Ok(Payload::Count(index));
                }
                let (mut state, _) = wait_until(&self.changed, state, timeout, ctx, |s| {
                    s.generation != generation
                });
                if state.generation == generation {
                    // Timed out, or the client left: the barrier breaks, as
                    // Python's does, and every other waiter is told.
                    state.broken = true;
                    state.end(false);
                    self.changed.notify_all();
                    return Err(RemoteError::BrokenBarrier);
                }
                match state.ends.iter().find(|(g, _)| *g == generation) {
                    Some((_, true)) => Ok(Payload::Count(index)),
                    _ => Err(RemoteError::BrokenBarrier),
                }
            }
            BarrierOp::Reset => {
                if state.count > 0 {
                    state.end(false);
                }
                state.broken = false;
                self.changed.notify_all();
                Ok(Payload::Unit)
            }
            BarrierOp::Abort => {
                state.broken = true;
                if state.count > 0 {
                    state.end(false);
                }
                self.changed.notify_all();
                Ok(Payload::Unit)
            }
            BarrierOp::Parties => Ok(Payload::Count(self.parties)),
            BarrierOp::Waiting => Ok(Payload::Count(state.count)),
            BarrierOp::Broken => Ok(Payload::Bool(state.broken)),
        }
    }
}
