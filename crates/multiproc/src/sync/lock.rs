//! `Lock` and `RLock`: mutual exclusion between processes, robust to a
//! holder that dies.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Shared, shared_handle};
use crate::shm::lock::NotSend;
use crate::shm::states::{Acquired, LockState};

/// A holder of the lock died holding it, and nobody has repaired the data
/// it protects since: the data may be half updated.
///
/// The call that returns it holds nothing: it took the lock and let go of
/// it at once, and every later locker is told the same, until one takes the
/// lock with `lock_recover` (`get_lock_recover` on a `Value` or an `Array`),
/// repairs the data and calls `make_consistent` on the guard. The error
/// holds no guard, so `?` carries it into `Box<dyn Error>` or
/// `anyhow::Error`:
///
/// ```
/// fn add_one(lock: &multiproc::Lock) -> Result<(), Box<dyn std::error::Error>> {
///     let _guard = lock.lock()?;
///     Ok(())
/// }
/// add_one(&multiproc::Lock::new()?)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[error(
    "a holder of the lock died holding it; the data it protects may be inconsistent \
     (repair it under `lock_recover`, then call `make_consistent`)"
)]
pub struct OwnerDied;

/// [`Lock::try_lock`] did not take the lock.
///
/// `E` says why taking it failed: [`OwnerDied`] for a local lock; a
/// Manager's lock proxy uses the same type with its
/// [`ProxyError`](crate::ProxyError).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TryLockError<E = OwnerDied> {
    /// Another holder has it.
    #[error("the lock is held")]
    WouldBlock,
    /// Taking it failed; a local lock is not held (see [`OwnerDied`]).
    #[error(transparent)]
    Failed(#[from] E),
}

/// [`Lock::lock_timeout`] did not take the lock (`E` as for
/// [`TryLockError`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LockTimeoutError<E = OwnerDied> {
    /// Still held at the deadline.
    #[error("the lock stayed held")]
    Timeout,
    /// Taking it failed; a local lock is not held (see [`OwnerDied`]).
    #[error(transparent)]
    Failed(#[from] E),
}

/// The guard, or [`OwnerDied`] after letting go of the lock (the drop
/// releases it; the state stays inconsistent for the next locker).
#[inline]
pub(super) fn wrap<G>(guard: G, how: Acquired) -> Result<G, OwnerDied> {
    match how {
        Acquired::Clean => Ok(guard),
        Acquired::OwnerDied => {
            drop(guard);
            Err(OwnerDied)
        }
    }
}

/// A lock shared between processes (Python's `multiprocessing.Lock`).
///
/// ```
/// use multiproc::{Lock, Process};
///
/// fn careful(lock: Lock) -> bool {
///     let _guard = lock.lock().unwrap();
///     true
/// }
///
/// let lock = Lock::new()?;
/// let child = Process::spawn(careful, lock.clone())?;
/// {
///     let _guard = lock.lock().unwrap();
///     // the child waits here until the guard is dropped
/// }
/// assert!(child.join()?);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Lock {
    shared: Arc<Shared<LockState>>,
}

shared_handle!(Lock);

/// Holds a [`Lock`]; releases it when dropped.
///
/// The lock belongs to this process, not to a thread: it is released by
/// the guard's drop, and recovered by another process only once this whole
/// process has ended. A guard cannot move to another thread (it is not
/// `Send`, like `std::sync::MutexGuard`), nor into a forked child's body:
///
/// ```compile_fail
/// let lock = multiproc::Lock::new().unwrap();
/// let guard = lock.lock().unwrap();
/// std::thread::scope(|s| {
///     s.spawn(move || drop(guard));
/// });
/// ```
///
/// ```compile_fail
/// let lock: &'static multiproc::Lock = Box::leak(Box::new(multiproc::Lock::new().unwrap()));
/// let guard = lock.lock().unwrap();
/// let child = multiproc::Process::fork(move || drop(guard));
/// ```
///
/// A guard leaked with `std::mem::forget` keeps the lock held until this
/// process exits; a guard that a forked child inherited releases nothing.
#[derive(Debug)]
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct LockGuard<'a> {
    lock: &'a Lock,
    _not_send: NotSend,
}

impl LockGuard<'_> {
    /// Declares the protected data consistent again after [`OwnerDied`]:
    /// later lockers take the lock cleanly.
    pub fn make_consistent(&self) {
        self.lock.shared.state().make_consistent();
    }

    /// Whether a holder died with the lock and nobody has called
    /// [`make_consistent`](Self::make_consistent) since: the data may be
    /// half updated. Only a guard from
    /// [`lock_recover`](Lock::lock_recover) can see `true`.
    pub fn owner_died(&self) -> bool {
        self.lock.shared.state().is_inconsistent()
    }
}

impl Drop for LockGuard<'_> {
    #[inline]
    fn drop(&mut self) {
        self.lock.shared.state().release();
    }
}

impl Lock {
    fn from_shared(shared: Arc<Shared<LockState>>) -> Self {
        Lock { shared }
    }

    /// A new, unlocked lock.
    pub fn new() -> std::io::Result<Lock> {
        Ok(Lock::from_shared(Shared::create("multiproc-lock", 0, 0)?))
    }

    /// Takes the lock, waiting as long as needed (never for a dead holder).
    ///
    /// Fails with [`OwnerDied`], holding nothing, while the data is marked
    /// inconsistent; [`lock_recover`](Self::lock_recover) takes it anyway.
    #[inline]
    pub fn lock(&self) -> Result<LockGuard<'_>, OwnerDied> {
        let how = self.shared.state().acquire(None).unwrap_or(Acquired::Clean);
        wrap(
            LockGuard {
                lock: self,
                _not_send: NotSend::default(),
            },
            how,
        )
    }

    /// Takes the lock, waiting as long as needed, whether or not a holder
    /// died with it: the way to repair the data after [`OwnerDied`].
    /// [`LockGuard::owner_died`] says whether the data needs repair; repair
    /// it, then call [`LockGuard::make_consistent`].
    ///
    /// ```
    /// let lock = multiproc::Lock::new()?;
    /// let guard = lock.lock_recover();
    /// if guard.owner_died() {
    ///     // repair the data the lock protects, then:
    ///     guard.make_consistent();
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn lock_recover(&self) -> LockGuard<'_> {
        self.shared.state().acquire(None);
        LockGuard {
            lock: self,
            _not_send: NotSend::default(),
        }
    }

    /// Whether some process holds the lock now (Python's `locked()`): a
    /// hint, which may change at once.
    pub fn is_locked(&self) -> bool {
        self.shared.state().is_held()
    }

    /// Takes the lock if it is free (or its holder died).
    pub fn try_lock(&self) -> Result<LockGuard<'_>, TryLockError> {
        match self.shared.state().try_acquire() {
            None => Err(TryLockError::WouldBlock),
            Some(how) => wrap(
                LockGuard {
                    lock: self,
                    _not_send: NotSend::default(),
                },
                how,
            )
            .map_err(TryLockError::Failed),
        }
    }

    /// Takes the lock, waiting at most `timeout`.
    pub fn lock_timeout(&self, timeout: Duration) -> Result<LockGuard<'_>, LockTimeoutError> {
        match self
            .shared
            .state()
            .acquire(crate::shm::wait::after(timeout))
        {
            None => Err(LockTimeoutError::Timeout),
            Some(how) => wrap(
                LockGuard {
                    lock: self,
                    _not_send: NotSend::default(),
                },
                how,
            )
            .map_err(LockTimeoutError::Failed),
        }
    }
}

/// A re-entrant lock (Python's `RLock`): the thread that holds it may take
/// it again; it is released when every guard is dropped.
///
/// ```
/// let lock = multiproc::RLock::new()?;
/// let outer = lock.lock().unwrap();
/// let inner = lock.lock().unwrap(); // same thread: no deadlock
/// drop((inner, outer));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct RLock {
    shared: Arc<Shared<LockState>>,
}

shared_handle!(RLock);

/// Holds an [`RLock`] once; releases that level when dropped.
#[derive(Debug)]
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct RLockGuard<'a> {
    lock: &'a RLock,
    _not_send: NotSend,
}

impl RLockGuard<'_> {
    /// Declares the protected data consistent again after [`OwnerDied`]:
    /// later lockers take the lock cleanly.
    pub fn make_consistent(&self) {
        self.lock.shared.state().make_consistent();
    }

    /// Whether a holder died with the lock and nobody has called
    /// [`make_consistent`](Self::make_consistent) since: the data may be
    /// half updated. Only a guard from
    /// [`lock_recover`](RLock::lock_recover) can see `true`.
    pub fn owner_died(&self) -> bool {
        self.lock.shared.state().is_inconsistent()
    }
}

impl Drop for RLockGuard<'_> {
    #[inline]
    fn drop(&mut self) {
        self.lock.shared.state().release();
    }
}

impl RLock {
    fn from_shared(shared: Arc<Shared<LockState>>) -> Self {
        RLock { shared }
    }

    /// A new, unlocked re-entrant lock.
    pub fn new() -> std::io::Result<RLock> {
        Ok(RLock::from_shared(Shared::create("multiproc-rlock", 0, 0)?))
    }

    /// Takes the lock (again, if this thread holds it).
    #[inline]
    pub fn lock(&self) -> Result<RLockGuard<'_>, OwnerDied> {
        let state = self.shared.state();
        if state.reenter() {
            return Ok(RLockGuard {
                lock: self,
                _not_send: NotSend::default(),
            });
        }
        let how = state.acquire(None).unwrap_or(Acquired::Clean);
        state.mark_thread();
        wrap(
            RLockGuard {
                lock: self,
                _not_send: NotSend::default(),
            },
            how,
        )
    }

    /// Takes the lock (again), whether or not a holder died with it (see
    /// [`Lock::lock_recover`]).
    pub fn lock_recover(&self) -> RLockGuard<'_> {
        let state = self.shared.state();
        if !state.reenter() {
            state.acquire(None);
            state.mark_thread();
        }
        RLockGuard {
            lock: self,
            _not_send: NotSend::default(),
        }
    }

    /// Whether some process holds the lock now: a hint, which may change at
    /// once.
    pub fn is_locked(&self) -> bool {
        self.shared.state().is_held()
    }

    /// Takes the lock (again) if that needs no waiting.
    pub fn try_lock(&self) -> Result<RLockGuard<'_>, TryLockError> {
        let state = self.shared.state();
        if state.reenter() {
            return Ok(RLockGuard {
                lock: self,
                _not_send: NotSend::default(),
            });
        }
        match state.try_acquire() {
            None => Err(TryLockError::WouldBlock),
            Some(how) => {
                state.mark_thread();
                wrap(
                    RLockGuard {
                        lock: self,
                        _not_send: NotSend::default(),
                    },
                    how,
                )
                .map_err(TryLockError::Failed)
            }
        }
    }

    /// Takes the lock (again), waiting at most `timeout`.
    pub fn lock_timeout(&self, timeout: Duration) -> Result<RLockGuard<'_>, LockTimeoutError> {
        let state = self.shared.state();
        if state.reenter() {
            return Ok(RLockGuard {
                lock: self,
                _not_send: NotSend::default(),
            });
        }
        match state.acquire(crate::shm::wait::after(timeout)) {
            None => Err(LockTimeoutError::Timeout),
            Some(how) => {
                state.mark_thread();
                wrap(
                    RLockGuard {
                        lock: self,
                        _not_send: NotSend::default(),
                    },
                    how,
                )
                .map_err(LockTimeoutError::Failed)
            }
        }
    }
}

/// The readiness wait of an async locker, and its try: shared by `Lock`
/// and `RLock` (see `docs/async.md`).
fn lock_async_with<G>(
    shared: &Arc<Shared<LockState>>,
    mut attempt: impl FnMut(bool) -> Option<Result<G, OwnerDied>>,
) -> impl Future<Output = Result<G, OwnerDied>> {
    let mut pass_on = {
        let shared = Arc::clone(shared);
        crate::aio::PassOn::new(move || shared.state().wake_one())
    };
    crate::aio::retry(
        move |w| {
            let got = attempt(w.has_slept());
            pass_on.arm(got.is_none() && w.may_sleep());
            got
        },
        move || {
            let shared = Arc::clone(shared);
            move |until: Instant, ticket: &crate::aio::Ticket| {
                let state = shared.state();
                if state.wait_free(until) && !ticket.wanted() {
                    state.wake_one();
                }
            }
        },
    )
}

impl Lock {
    /// [`lock`](Self::lock), as a future: waits without blocking the
    /// thread (see `docs/async.md`). Dropping it before it is ready leaves
    /// the lock as it was: a future that has not returned a guard holds
    /// nothing. The guard is not `Send`, as ever: drop it before an
    /// `.await` in a task that may move between threads.
    ///
    /// ```
    /// let lock = multiproc::Lock::new()?;
    /// let guard = futures::executor::block_on(lock.lock_async()).unwrap();
    /// assert!(lock.try_lock().is_err());
    /// drop(guard);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn lock_async(&self) -> impl Future<Output = Result<LockGuard<'_>, OwnerDied>> + Send + '_ {
        lock_async_with(&self.shared, move |slept| {
            let state = self.shared.state();
            let how = if slept {
                state.try_acquire_marked()
            } else {
                state.try_acquire()
            }?;
            Some(wrap(
                LockGuard {
                    lock: self,
                    _not_send: NotSend::default(),
                },
                how,
            ))
        })
    }
}

impl RLock {
    /// [`lock`](Self::lock), as a future (see [`Lock::lock_async`]). The
    /// thread that holds the lock takes it again at once; a task that
    /// moves between threads is not one thread, so do not count on
    /// re-entry across an `.await`.
    pub fn lock_async(
        &self,
    ) -> impl Future<Output = Result<RLockGuard<'_>, OwnerDied>> + Send + '_ {
        lock_async_with(&self.shared, move |slept| {
            let state = self.shared.state();
            let guard = || RLockGuard {
                lock: self,
                _not_send: NotSend::default(),
            };
            if state.reenter() {
                return Some(Ok(guard()));
            }
            let how = if slept {
                state.try_acquire_marked()
            } else {
                state.try_acquire()
            }?;
            state.mark_thread();
            Some(wrap(guard(), how))
        })
    }
}
