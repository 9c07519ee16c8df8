//! The server's blocking objects: queue, lock, condition, semaphore,
//! event and barrier.
//!
//! A blocking method waits on a condition variable in slices of
//! [`LIVENESS_SLICE`]: between slices it checks that the client is still
//! connected, so a client killed while it waits does not hold a server
//! thread (or, for a barrier, the other parties) forever. Each client has
//! its own server thread, so one client's wait never blocks another's call.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::super::error::RemoteError;
use super::super::protocol::{
    BarrierOp, Blob, ConditionOp, EventOp, LockOp, Owner, Payload, QueueOp, Reply, SemaphoreOp,
    TimeoutMs,
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
        Ok(match op {
            QueueOp::Put(item, timeout) => {
                let max = self.max_items;
                let items = lock(&self.items);
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
                let items = lock(&self.items);
                let (mut items, ok) =
                    wait_until(&self.not_empty, items, timeout, ctx, |q| !q.is_empty());
                let item = if ok { items.pop_front() } else { None };
                if item.is_some() {
                    self.not_full.notify_one();
                }
                Payload::MaybeValue(item.map(Blob))
            }
            QueueOp::Len => Payload::Count(lock(&self.items).len() as u64),
            QueueOp::Full => {
                let max = self.max_items;
                Payload::Bool(max != 0 && lock(&self.items).len() as u64 >= max)
            }
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
                Payload::Unit
            }
            QueueOp::Join(timeout) => {
                let unfinished = lock(&self.unfinished);
                Payload::Bool(wait_until(&self.all_done, unfinished, timeout, ctx, |n| *n == 0).1)
            }
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

    /// Whether `owner` holds the lock.
    pub(crate) fn held_by(&self, owner: Owner) -> bool {
        lock(&self.holder).is_some_and(|h| h.owner == owner)
    }

    /// Releases the lock completely for a condition wait by `owner`, who
    /// must hold it; returns how deep it held it (for an `RLock`).
    fn release_for_wait(&self, owner: Owner) -> Result<u64, RemoteError> {
        let mut holder = lock(&self.holder);
        match *holder {
            Some(h) if h.owner == owner => {
                *holder = None;
                self.released.notify_one();
                Ok(h.depth)
            }
            _ => Err(RemoteError::NotOwner),
        }
    }

    /// Takes the lock back after a condition wait, as deep as before,
    /// waiting as long as it takes; false if the client left first.
    fn reacquire(&self, owner: Owner, depth: u64, ctx: &Ctx<'_>) -> bool {
        let holder = lock(&self.holder);
        let (mut holder, ok) = wait_until(&self.released, holder, None, ctx, |h| h.is_none());
        if ok {
            *holder = Some(Holder {
                owner,
                session: ctx.session,
                depth,
            });
        }
        ok
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

/// The waiters of a condition, by ticket.
#[derive(Debug, Default)]
struct Waiters {
    next: u64,
    /// Waiting and not yet notified, oldest first.
    waiting: VecDeque<u64>,
    /// Notified, and not yet back from their wait.
    woken: HashSet<u64>,
}

/// A condition variable over a manager lock (Python's `Condition`): its
/// own `RLock`, or a lock object it shares with a `LockProxy`.
#[derive(Debug)]
pub(crate) struct ConditionObject {
    lock: Arc<LockObject>,
    waiters: Mutex<Waiters>,
    notified: Condvar,
}

impl ConditionObject {
    /// A condition over `lock`.
    pub(crate) fn new(lock: Arc<LockObject>) -> Self {
        ConditionObject {
            lock,
            waiters: Mutex::default(),
            notified: Condvar::new(),
        }
    }

    /// The lock it waits with.
    pub(crate) fn lock(&self) -> &LockObject {
        &self.lock
    }

    /// Runs one condition method.
    pub(crate) fn call(&self, op: ConditionOp, ctx: &Ctx<'_>) -> Reply {
        match op {
            ConditionOp::Lock(op) => self.lock.call(op, ctx),
            ConditionOp::Wait(owner, timeout) => self.wait(owner, timeout, ctx),
            ConditionOp::Notify(owner, n) => self.notify(owner, n),
            ConditionOp::NotifyAll(owner) => self.notify(owner, u64::MAX),
        }
    }

    /// Releases the lock, waits for a notification (or the timeout), and
    /// takes the lock back: whether it was notified.
    fn wait(&self, owner: Owner, timeout: TimeoutMs, ctx: &Ctx<'_>) -> Reply {
        // Registered before the lock is released: a notifier must take the
        // lock first, so it sees this waiter.
        let ticket = {
            let mut w = lock(&self.waiters);
            let ticket = w.next;
            w.next += 1;
            w.waiting.push_back(ticket);
            ticket
        };
        let depth = match self.lock.release_for_wait(owner) {
            Ok(depth) => depth,
            Err(e) => {
                lock(&self.waiters).waiting.retain(|t| *t != ticket);
                return Err(e);
            }
        };
        let notified = {
            let waiters = lock(&self.waiters);
            let (mut w, _) = wait_until(&self.notified, waiters, timeout, ctx, |w| {
                w.woken.contains(&ticket)
            });
            // Decided under the waiters' lock: a notification either came
            // before the timeout (and is taken) or goes to another waiter.
            let notified = w.woken.remove(&ticket);
            if !notified {
                w.waiting.retain(|t| *t != ticket);
            }
            notified
        };
        // A client that left takes nothing back; its answer goes nowhere.
        let back = self.lock.reacquire(owner, depth, ctx);
        Ok(Payload::Bool(notified && back))
    }

    /// Wakes up to `n` waiters; the caller must hold the lock.
    fn notify(&self, owner: Owner, n: u64) -> Reply {
        if !self.lock.held_by(owner) {
            return Err(RemoteError::NotOwner);
        }
        let mut w = lock(&self.waiters);
        let n = usize::try_from(n)
            .unwrap_or(usize::MAX)
            .min(w.waiting.len());
        let woken: Vec<u64> = w.waiting.drain(..n).collect();
        if !woken.is_empty() {
            w.woken.extend(woken);
            self.notified.notify_all();
        }
        Ok(Payload::Unit)
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
