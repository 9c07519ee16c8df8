//! `Semaphore` and `BoundedSemaphore`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Shared, shared_handle};
use crate::shm::states::SemaphoreState;

/// [`BoundedSemaphore::release`] would raise the value past its initial
/// value (Python's `ValueError`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize,
)]
#[error("the semaphore was released more times than it was acquired")]
pub struct ReleaseError;

/// A counter shared between processes (Python's `Semaphore`): `acquire`
/// takes one unit, waiting while there is none; `release` returns one.
///
/// A semaphore has no owner: a process that dies holding units does not
/// give them back (as in Python).
///
/// ```
/// let slots = multiproc::Semaphore::new(2)?;
/// slots.acquire();
/// assert!(slots.try_acquire());
/// assert!(!slots.try_acquire());
/// slots.release();
/// assert_eq!(slots.value(), 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Semaphore {
    shared: Arc<Shared<SemaphoreState>>,
}

shared_handle!(Semaphore);

impl Semaphore {
    fn from_shared(shared: Arc<Shared<SemaphoreState>>) -> Self {
        Semaphore { shared }
    }

    /// A semaphore holding `value` units.
    pub fn new(value: u32) -> std::io::Result<Semaphore> {
        let shared = Shared::<SemaphoreState>::create("multiproc-semaphore", 0, 0)?;
        shared.state().init(value, None);
        Ok(Semaphore::from_shared(shared))
    }

    /// Takes a unit, waiting while there is none.
    pub fn acquire(&self) {
        self.shared.state().acquire(None);
    }

    /// Takes a unit if one is there now.
    pub fn try_acquire(&self) -> bool {
        self.shared.state().acquire(Some(Instant::now()))
    }

    /// Takes a unit, waiting at most `timeout`; false if none came.
    pub fn acquire_timeout(&self, timeout: Duration) -> bool {
        self.shared
            .state()
            .acquire(crate::shm::wait::after(timeout))
    }

    /// [`acquire`](Self::acquire), as a future: waits without blocking
    /// the thread (see `docs/async.md`). Dropping it before it is ready
    /// takes nothing: a future that has not completed holds no permit.
    ///
    /// ```
    /// let sem = multiproc::Semaphore::new(1)?;
    /// futures::executor::block_on(sem.acquire_async());
    /// assert_eq!(sem.value(), 0);
    /// sem.release();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn acquire_async(&self) -> impl Future<Output = ()> + Send + '_ {
        crate::aio::retry(
            move |_| self.shared.state().try_acquire().then_some(()),
            move || {
                let shared = Arc::clone(&self.shared);
                move |until: Instant, ticket: &crate::aio::Ticket| {
                    let state = shared.state();
                    if state.wait_positive(until) && !ticket.wanted() {
                        state.wake_one();
                    }
                }
            },
        )
    }

    /// Returns a unit and wakes one waiter.
    pub fn release(&self) {
        let _ = self.shared.state().release();
    }

    /// Units available now (approximate while others work).
    pub fn value(&self) -> u32 {
        self.shared.state().value()
    }
}

/// A [`Semaphore`] that refuses to be released past its initial value
/// (Python's `BoundedSemaphore`).
///
/// ```
/// let s = multiproc::BoundedSemaphore::new(1)?;
/// s.acquire();
/// s.release()?;
/// assert!(s.release().is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct BoundedSemaphore(Semaphore);

impl BoundedSemaphore {
    /// A semaphore holding, and bounded by, `value` units.
    pub fn new(value: u32) -> std::io::Result<BoundedSemaphore> {
        let shared = Shared::<SemaphoreState>::create("multiproc-semaphore", 0, 0)?;
        shared.state().init(value, Some(value));
        Ok(BoundedSemaphore(Semaphore::from_shared(shared)))
    }

    /// Returns a unit; an error if that would pass the initial value.
    pub fn release(&self) -> Result<(), ReleaseError> {
        if self.0.shared.state().release() {
            Ok(())
        } else {
            Err(ReleaseError)
        }
    }
}

/// `acquire`, `try_acquire`, `acquire_timeout` and `value` are those of
/// the underlying [`Semaphore`].
impl std::ops::Deref for BoundedSemaphore {
    type Target = Semaphore;
    fn deref(&self) -> &Semaphore {
        &self.0
    }
}
