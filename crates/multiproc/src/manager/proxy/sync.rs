//! Synchronisation objects hosted by the manager: [`LockProxy`],
//! [`ConditionProxy`], [`SemaphoreProxy`], [`EventProxy`] and
//! [`BarrierProxy`] (Python: `Manager().Lock()`, `RLock()`, `Condition()`,
//! `Semaphore()`, `BoundedSemaphore()`, `Event()`, `Barrier()`).
//!
//! They cost a round trip per call; the shared-memory [`Lock`](crate::Lock),
//! [`Event`](crate::Event) and [`Barrier`](crate::Barrier) are much faster
//! between processes of one family. These are for processes that reach the
//! manager by address, or over TCP.

use crate::sync::{LockTimeoutError, TryLockError};
use std::marker::PhantomData;
use std::time::Duration;

use super::super::error::ProxyError;
use super::super::protocol::{
    BarrierOp, ConditionOp, EventOp, LockOp, Op, Owner, Payload, SemaphoreOp, TimeoutMs,
};
use super::{Handle, boolean, count, millis, proxy_type, unit};
use crate::sys::futex;

/// A lock hosted by the manager; [`Manager::lock`](crate::Manager::lock)
/// makes a plain one and [`Manager::rlock`](crate::Manager::rlock) a
/// reentrant one.
///
/// If the client that holds it dies (or its connection is cut), the
/// manager releases it.
///
/// ```
/// let manager = multiproc::Manager::start()?;
/// let lock = manager.lock()?;
/// let guard = lock.lock()?;
/// assert!(lock.try_lock().is_err()); // TryLockError::WouldBlock
/// guard.release()?;
/// assert!(lock.try_lock().is_ok());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct LockProxy {
    handle: Handle,
    _types: PhantomData<fn() -> ()>,
}

proxy_type!(LockProxy);

fn me() -> Owner {
    Owner {
        pid: futex::pid(),
        tid: futex::tid(),
    }
}

impl LockProxy {
    /// The link to its manager.
    pub(crate) fn handle_link(&self) -> &super::super::client::Link {
        self.handle.link()
    }

    fn acquire_within(&self, timeout: TimeoutMs) -> Result<Option<ProxyLockGuard<'_>>, ProxyError> {
        let got = boolean(self.handle.call(Op::Lock(LockOp::Acquire(me(), timeout)))?)?;
        // Not `then_some`: a guard built and dropped would release the lock.
        Ok(got.then(|| ProxyLockGuard {
            lock: self,
            owner: me(),
            released: false,
        }))
    }

    /// [`lock`](Self::lock), as a future (see `docs/async.md`): the
    /// call runs on a waiter thread, in slices of at most 100 ms on the
    /// server, on behalf of the thread that made the future (the owner
    /// its guard releases for, wherever it is dropped). Dropping the
    /// future leaves the lock as it was: a call in flight that acquired
    /// it releases it again.
    pub fn lock_async(
        &self,
    ) -> impl Future<Output = Result<ProxyLockGuard<'_>, ProxyError>> + Send + '_ {
        let owner = me();
        let got = super::sliced(
            &self.handle,
            move |h, ms| match h.call(Op::Lock(LockOp::Acquire(owner, ms))) {
                Ok(Payload::Bool(false)) => None,
                other => Some(other),
            },
            move |h, acquired| {
                if let Ok(Payload::Bool(true)) = acquired {
                    let _ = h.call(Op::Lock(LockOp::Release(owner)));
                }
            },
        );
        async move {
            boolean(got.await?)?;
            Ok(ProxyLockGuard {
                lock: self,
                owner,
                released: false,
            })
        }
    }

    /// Takes the lock, waiting as long as it takes.
    pub fn lock(&self) -> Result<ProxyLockGuard<'_>, ProxyError> {
        self.acquire_within(None)?
            .ok_or_else(|| ProxyError::Protocol("an unbounded acquire came back empty".into()))
    }

    /// Takes the lock if it is free now.
    pub fn try_lock(&self) -> Result<ProxyLockGuard<'_>, TryLockError<ProxyError>> {
        self.acquire_within(Some(0))?
            .ok_or(TryLockError::WouldBlock)
    }

    /// Takes the lock if it comes free within `timeout`.
    pub fn lock_timeout(
        &self,
        timeout: Duration,
    ) -> Result<ProxyLockGuard<'_>, LockTimeoutError<ProxyError>> {
        self.acquire_within(Some(millis(timeout)))?
            .ok_or(LockTimeoutError::Timeout)
    }
}

/// Holds a [`LockProxy`]; releases it when dropped (or with
/// [`release`](Self::release), which reports a failure).
#[must_use = "the lock is released as soon as the guard is dropped"]
#[derive(Debug)]
pub struct ProxyLockGuard<'a> {
    lock: &'a LockProxy,
    /// Who acquired it (a reentrant lock is released by its owner only).
    owner: Owner,
    released: bool,
}

impl ProxyLockGuard<'_> {
    /// Releases the lock now, and says whether the manager agreed.
    pub fn release(mut self) -> Result<(), ProxyError> {
        self.released = true;
        unit(
            self.lock
                .handle
                .call(Op::Lock(LockOp::Release(self.owner)))?,
        )
    }
}

impl Drop for ProxyLockGuard<'_> {
    fn drop(&mut self) {
        if !self.released {
            let _ = self.lock.handle.call(Op::Lock(LockOp::Release(self.owner)));
        }
    }
}

/// An event hosted by the manager: a flag that processes wait for.
///
/// ```
/// let manager = multiproc::Manager::start()?;
/// let ready = manager.event()?;
/// assert!(!ready.wait_timeout(std::time::Duration::from_millis(1))?);
/// ready.set()?;
/// ready.wait()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct EventProxy {
    handle: Handle,
    _types: PhantomData<fn() -> ()>,
}

proxy_type!(EventProxy);

impl EventProxy {
    fn call(&self, op: EventOp) -> Result<super::super::protocol::Payload, ProxyError> {
        self.handle.call(Op::Event(op))
    }

    /// Sets the flag and wakes every waiter.
    pub fn set(&self) -> Result<(), ProxyError> {
        unit(self.call(EventOp::Set)?)
    }

    /// Clears the flag.
    pub fn clear(&self) -> Result<(), ProxyError> {
        unit(self.call(EventOp::Clear)?)
    }

    /// Whether the flag is set.
    pub fn is_set(&self) -> Result<bool, ProxyError> {
        boolean(self.call(EventOp::IsSet)?)
    }

    /// Waits until the flag is set.
    pub fn wait(&self) -> Result<(), ProxyError> {
        boolean(self.call(EventOp::Wait(None))?).map(drop)
    }

    /// Waits until the flag is set or `timeout` passes; whether it is set.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<bool, ProxyError> {
        boolean(self.call(EventOp::Wait(Some(millis(timeout))))?)
    }

    /// [`wait`](Self::wait), as a future (see `docs/async.md`): the wait
    /// runs on a waiter thread in slices of at most 100 ms on the server.
    /// Dropping the future changes nothing.
    pub fn wait_async(&self) -> impl Future<Output = Result<(), ProxyError>> + Send + use<> {
        let set = super::sliced(
            &self.handle,
            |h, ms| match h.call(Op::Event(EventOp::Wait(ms))) {
                Ok(Payload::Bool(false)) => None,
                other => Some(other),
            },
            |_, _| {},
        );
        async move { boolean(set.await?).map(drop) }
    }
}

/// A barrier hosted by the manager: each cycle, `parties` callers of
/// [`wait`](Self::wait) wait for each other.
///
/// A wait that times out, a waiter whose client dies, and
/// [`abort`](Self::abort) break the barrier: every waiter then gets
/// [`RemoteError::BrokenBarrier`](crate::RemoteError::BrokenBarrier),
/// until [`reset`](Self::reset).
///
/// ```
/// let manager = multiproc::Manager::start()?;
/// let barrier = manager.barrier(1)?;
/// assert_eq!(barrier.wait()?, 0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct BarrierProxy {
    handle: Handle,
    _types: PhantomData<fn() -> ()>,
}

proxy_type!(BarrierProxy);

impl BarrierProxy {
    fn call(&self, op: BarrierOp) -> Result<super::super::protocol::Payload, ProxyError> {
        self.handle.call(Op::Barrier(op))
    }

    /// Waits for the other parties; returns this caller's arrival index
    /// (0 for the first).
    pub fn wait(&self) -> Result<usize, ProxyError> {
        count(self.call(BarrierOp::Wait(None))?)
    }

    /// Like [`wait`](Self::wait), but breaks the barrier if the others do
    /// not come within `timeout`.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<usize, ProxyError> {
        count(self.call(BarrierOp::Wait(Some(millis(timeout))))?)
    }

    /// [`wait`](Self::wait), as a future (see `docs/async.md`): the wait
    /// runs on a waiter thread, as one call (a barrier's wait cannot be
    /// cut into slices: a timeout breaks it). **Dropping the future after
    /// its first poll breaks the barrier**, as the local
    /// [`Barrier::wait_async`](crate::Barrier::wait_async) does: a party
    /// that left cannot be waited for.
    pub fn wait_async(&self) -> impl Future<Output = Result<usize, ProxyError>> + Send + use<> {
        /// Breaks the barrier if the wait is dropped before it ended.
        struct Leave(Option<std::sync::Arc<Handle>>);
        impl Drop for Leave {
            fn drop(&mut self) {
                if let Some(h) = self.0.take() {
                    let abort = move || {
                        let _ = h.call(Op::Barrier(BarrierOp::Abort));
                    };
                    if let Err(job) = crate::aio::run(Box::new(abort)) {
                        job();
                    }
                }
            }
        }
        let h = std::sync::Arc::new(self.handle.unowned());
        async move {
            let mut leave = Leave(Some(std::sync::Arc::clone(&h)));
            let waited = std::sync::Arc::clone(&h);
            let outcome = super::sliced(
                &h,
                move |_, _| Some(waited.call(Op::Barrier(BarrierOp::Wait(None)))),
                |_, _| {},
            )
            .await;
            leave.0 = None;
            count(outcome?)
        }
    }

    /// Makes a broken barrier usable again; current waiters are told it
    /// broke.
    pub fn reset(&self) -> Result<(), ProxyError> {
        unit(self.call(BarrierOp::Reset)?)
    }

    /// Breaks the barrier.
    pub fn abort(&self) -> Result<(), ProxyError> {
        unit(self.call(BarrierOp::Abort)?)
    }

    /// How many parties a cycle needs.
    pub fn parties(&self) -> Result<usize, ProxyError> {
        count(self.call(BarrierOp::Parties)?)
    }

    /// How many parties wait now.
    pub fn n_waiting(&self) -> Result<usize, ProxyError> {
        count(self.call(BarrierOp::Waiting)?)
    }

    /// Whether the barrier is broken.
    pub fn is_broken(&self) -> Result<bool, ProxyError> {
        boolean(self.call(BarrierOp::Broken)?)
    }
}

/// A semaphore hosted by the manager: a count of units that `acquire`
/// takes (waiting while there are none) and `release` gives back.
/// [`Manager::semaphore`](crate::Manager::semaphore) makes a plain one,
/// [`Manager::bounded_semaphore`](crate::Manager::bounded_semaphore) one
/// that refuses to be released past its starting value.
///
/// Units have no owner: those a client held when it died are lost, as in
/// Python.
///
/// ```
/// let manager = multiproc::Manager::start()?;
/// let slots = manager.bounded_semaphore(1)?;
/// slots.acquire()?;
/// assert!(!slots.try_acquire()?);
/// slots.release()?;
/// assert!(slots.release().is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct SemaphoreProxy {
    handle: Handle,
    _types: PhantomData<fn() -> ()>,
}

proxy_type!(SemaphoreProxy);

impl SemaphoreProxy {
    fn acquire_within(&self, timeout: TimeoutMs) -> Result<bool, ProxyError> {
        boolean(
            self.handle
                .call(Op::Semaphore(SemaphoreOp::Acquire(timeout)))?,
        )
    }

    /// Takes a unit, waiting for one as long as it takes.
    pub fn acquire(&self) -> Result<(), ProxyError> {
        self.acquire_within(None).map(drop)
    }

    /// Takes a unit if one is free now; whether it did.
    pub fn try_acquire(&self) -> Result<bool, ProxyError> {
        self.acquire_within(Some(0))
    }

    /// Takes a unit if one comes free within `timeout`; whether it did.
    pub fn acquire_timeout(&self, timeout: Duration) -> Result<bool, ProxyError> {
        self.acquire_within(Some(millis(timeout)))
    }

    /// [`acquire`](Self::acquire), as a future (see `docs/async.md`): the
    /// wait runs on a waiter thread in slices of at most 100 ms on the
    /// server. Dropping the future takes nothing: a unit that a call in
    /// flight took is released again.
    pub fn acquire_async(&self) -> impl Future<Output = Result<(), ProxyError>> + Send + use<> {
        let got = super::sliced(
            &self.handle,
            |h, ms| match h.call(Op::Semaphore(SemaphoreOp::Acquire(ms))) {
                Ok(Payload::Bool(false)) => None,
                other => Some(other),
            },
            |h, taken| {
                if let Ok(Payload::Bool(true)) = taken {
                    let _ = h.call(Op::Semaphore(SemaphoreOp::Release));
                }
            },
        );
        async move { boolean(got.await?).map(drop) }
    }

    /// Gives a unit back; a bounded semaphore already at its starting value
    /// refuses ([`RemoteError::OverReleased`](crate::RemoteError::OverReleased)).
    pub fn release(&self) -> Result<(), ProxyError> {
        unit(self.handle.call(Op::Semaphore(SemaphoreOp::Release))?)
    }

    /// The free units now.
    pub fn value(&self) -> Result<usize, ProxyError> {
        count(self.handle.call(Op::Semaphore(SemaphoreOp::Value))?)
    }
}

/// A condition variable hosted by the manager (Python:
/// `Manager().Condition()`): a lock, plus waiting for a notification while
/// the lock is released. [`Manager::condition`](crate::Manager::condition)
/// makes one over its own reentrant lock (as Python's default `RLock`),
/// [`Manager::condition_with`](crate::Manager::condition_with) one over an
/// existing [`LockProxy`], which then is the same lock.
///
/// The lock behaves as a [`LockProxy`]'s: held by a client thread,
/// released by the manager if its client dies. [`lock`](Self::lock)
/// returns a guard, and waiting and notifying are the guard's methods, as
/// they need the lock held. A waiter blocks in the manager on its own
/// session, so it never holds up another client; a waiter whose client
/// dies is forgotten (a notification that reached it before is lost, as
/// one given to a thread that then dies in Python).
///
/// ```
/// use multiproc::{ConditionProxy, Manager, Process, ValueProxy};
///
/// fn produce((cond, ready): (ConditionProxy, ValueProxy<bool>)) {
///     let guard = cond.lock().unwrap();
///     ready.set(true).unwrap();
///     guard.notify_all().unwrap();
/// }
///
/// let manager = Manager::start()?;
/// let cond = manager.condition()?;
/// let ready = manager.value(false)?;
/// let child = Process::spawn(produce, (cond.clone(), ready.clone()))?;
/// let guard = cond.lock()?;
/// guard.wait_for(|| ready.get().unwrap())?;
/// guard.release()?;
/// child.join()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct ConditionProxy {
    handle: Handle,
    _types: PhantomData<fn() -> ()>,
}

proxy_type!(ConditionProxy);

impl ConditionProxy {
    fn call(&self, op: ConditionOp) -> Result<super::super::protocol::Payload, ProxyError> {
        self.handle.call(Op::Condition(op))
    }

    fn acquire_within(
        &self,
        timeout: TimeoutMs,
    ) -> Result<Option<ProxyConditionGuard<'_>>, ProxyError> {
        let got = boolean(self.call(ConditionOp::Lock(LockOp::Acquire(me(), timeout)))?)?;
        // Not `then_some`: a guard built and dropped would release the lock.
        Ok(got.then(|| ProxyConditionGuard {
            cond: self,
            owner: me(),
            released: false,
        }))
    }

    /// [`lock`](Self::lock), as a future, as
    /// [`LockProxy::lock_async`]: on behalf of the thread that made the
    /// future; dropping it leaves the lock as it was.
    pub fn lock_async(
        &self,
    ) -> impl Future<Output = Result<ProxyConditionGuard<'_>, ProxyError>> + Send + '_ {
        let owner = me();
        let got = super::sliced(
            &self.handle,
            move |h, ms| match h.call(Op::Condition(ConditionOp::Lock(LockOp::Acquire(owner, ms))))
            {
                Ok(Payload::Bool(false)) => None,
                other => Some(other),
            },
            move |h, acquired| {
                if let Ok(Payload::Bool(true)) = acquired {
                    let _ = h.call(Op::Condition(ConditionOp::Lock(LockOp::Release(owner))));
                }
            },
        );
        async move {
            boolean(got.await?)?;
            Ok(ProxyConditionGuard {
                cond: self,
                owner,
                released: false,
            })
        }
    }

    /// Takes the lock, waiting as long as it takes.
    pub fn lock(&self) -> Result<ProxyConditionGuard<'_>, ProxyError> {
        self.acquire_within(None)?
            .ok_or_else(|| ProxyError::Protocol("an unbounded acquire came back empty".into()))
    }

    /// Takes the lock if it is free now (or, for the default reentrant
    /// lock, held by this thread).
    pub fn try_lock(&self) -> Result<ProxyConditionGuard<'_>, TryLockError<ProxyError>> {
        self.acquire_within(Some(0))?
            .ok_or(TryLockError::WouldBlock)
    }

    /// Takes the lock if it comes free within `timeout`.
    pub fn lock_timeout(
        &self,
        timeout: Duration,
    ) -> Result<ProxyConditionGuard<'_>, LockTimeoutError<ProxyError>> {
        self.acquire_within(Some(millis(timeout)))?
            .ok_or(LockTimeoutError::Timeout)
    }
}

/// Holds a [`ConditionProxy`]'s lock: wait and notify through it. Releases
/// the lock when dropped (or with [`release`](Self::release), which
/// reports a failure).
#[must_use = "the lock is released as soon as the guard is dropped"]
#[derive(Debug)]
pub struct ProxyConditionGuard<'a> {
    cond: &'a ConditionProxy,
    /// Who took it: the lock is released, and waited on, for that thread.
    owner: Owner,
    released: bool,
}

impl<'a> ProxyConditionGuard<'a> {
    fn wait_within(&self, timeout: TimeoutMs) -> Result<bool, ProxyError> {
        boolean(self.cond.call(ConditionOp::Wait(self.owner, timeout))?)
    }

    /// Releases the lock, waits for a notification, and takes the lock
    /// back (Python: `wait()`). As in Python, a wait may end without the
    /// condition you wait for being true: check it again, or use
    /// [`wait_for`](Self::wait_for).
    pub fn wait(&self) -> Result<(), ProxyError> {
        self.wait_within(None).map(drop)
    }

    /// Like [`wait`](Self::wait), for at most `timeout`; whether it was
    /// notified (false: it timed out). The lock is held again either way.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<bool, ProxyError> {
        self.wait_within(Some(millis(timeout)))
    }

    /// Waits until `predicate` is true, checking it with the lock held
    /// before the first wait and after every notification (Python:
    /// `wait_for(predicate)`).
    pub fn wait_for(&self, mut predicate: impl FnMut() -> bool) -> Result<(), ProxyError> {
        while !predicate() {
            self.wait()?;
        }
        Ok(())
    }

    /// Like [`wait_for`](Self::wait_for), for at most `timeout` in all;
    /// the predicate's last value (Python: `wait_for(predicate, timeout)`).
    pub fn wait_for_timeout(
        &self,
        timeout: Duration,
        mut predicate: impl FnMut() -> bool,
    ) -> Result<bool, ProxyError> {
        let deadline = std::time::Instant::now().checked_add(timeout);
        loop {
            if predicate() {
                return Ok(true);
            }
            let left = match deadline {
                Some(d) => d.saturating_duration_since(std::time::Instant::now()),
                None => return self.wait_for(predicate).map(|()| true),
            };
            if left.is_zero() {
                return Ok(false);
            }
            self.wait_timeout(left)?;
        }
    }

    /// [`wait`](Self::wait), as a future (see `docs/async.md`): it takes
    /// the guard and gives it back once notified, with the lock held
    /// again. The wait runs on a waiter thread in slices of at most 100 ms
    /// on the server (each slice gives the lock up and takes it back: a
    /// notification can only come while it is given up, so none is
    /// missed; spurious wake-ups are possible, as ever). Dropping the
    /// future releases the lock: at once if it was never polled, else when
    /// the slice in flight ends.
    pub fn wait_async(
        self,
    ) -> impl Future<Output = Result<ProxyConditionGuard<'a>, ProxyError>> + Send + 'a {
        let (cond, owner) = (self.cond, self.owner);
        async move {
            // From here the lock is the future's to release.
            std::mem::forget(self);
            let notified = super::sliced(
                &cond.handle,
                move |h, ms| match h.call(Op::Condition(ConditionOp::Wait(owner, ms))) {
                    Ok(Payload::Bool(false)) => None,
                    other => Some(other),
                },
                move |h, _| {
                    let _ = h.call(Op::Condition(ConditionOp::Lock(LockOp::Release(owner))));
                },
            )
            .await;
            let guard = ProxyConditionGuard {
                cond,
                owner,
                released: false,
            };
            boolean(notified?)?;
            Ok(guard)
        }
    }

    /// Wakes up to `n` waiters (Python: `notify(n)`); they return once
    /// this guard's lock is released.
    pub fn notify(&self, n: usize) -> Result<(), ProxyError> {
        unit(self.cond.call(ConditionOp::Notify(self.owner, n as u64))?)
    }

    /// Wakes every waiter (Python: `notify_all()`).
    pub fn notify_all(&self) -> Result<(), ProxyError> {
        unit(self.cond.call(ConditionOp::NotifyAll(self.owner))?)
    }

    /// Releases the lock now, and says whether the manager agreed.
    pub fn release(mut self) -> Result<(), ProxyError> {
        self.released = true;
        unit(
            self.cond
                .call(ConditionOp::Lock(LockOp::Release(self.owner)))?,
        )
    }
}

impl Drop for ProxyConditionGuard<'_> {
    fn drop(&mut self) {
        if !self.released {
            let _ = self
                .cond
                .call(ConditionOp::Lock(LockOp::Release(self.owner)));
        }
    }
}
