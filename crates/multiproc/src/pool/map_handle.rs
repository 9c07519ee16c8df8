//! A whole map's result handle (`map_async`).

use super::callback::{Callback, Runner, Slot};
use super::job::Job;
use super::*;
use serde::de::DeserializeOwned;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// Where a map's results wait once its callbacks ran.
pub(super) type MapSlot<R> = Arc<Slot<Result<Vec<R>, TaskError>>>;

/// The results of [`Pool::map_async`].
pub struct MapHandle<R> {
    pub(super) job: Arc<Job<R>>,
    pub(super) callbacks: Arc<Runner>,
    /// Given callbacks: the results, once they ran.
    pub(super) after: Option<MapSlot<R>>,
}

impl<R> fmt::Debug for MapHandle<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MapHandle")
            .field("ready", &self.job.is_complete())
            .finish()
    }
}

impl<R: DeserializeOwned + Send + 'static> MapHandle<R> {
    pub(super) fn take(&self) -> Result<Vec<R>, TaskError> {
        match &self.after {
            Some(slot) => {
                slot.wait(None);
                slot.take().unwrap_or(Err(TaskError::Cancelled))
            }
            None => self.job.take_values(),
        }
    }

    pub(super) fn wait_until(&self, deadline: Option<std::time::Instant>) -> bool {
        match &self.after {
            Some(slot) => slot.wait(deadline),
            None => self.job.wait_done(deadline),
        }
    }

    /// Waits for every result, in order; the first failure is the error.
    pub fn get(self) -> Result<Vec<R>, TaskError> {
        self.wait_until(None);
        self.take()
    }

    /// Waits at most `timeout`; on timeout the handle comes back.
    pub fn get_timeout(self, timeout: Duration) -> Result<Vec<R>, ResultTimeoutError<Self>> {
        if self.wait_until(crate::shm::wait::after(timeout)) {
            self.take().map_err(ResultTimeoutError::Failed)
        } else {
            Err(ResultTimeoutError::Timeout(self))
        }
    }

    /// Waits until every result is ready (or one failed).
    pub fn wait(&self) {
        self.wait_until(None);
    }

    /// Waits until every result is ready (or one failed), at most
    /// `timeout`; returns whether they are (Python's `wait(timeout)`
    /// followed by `ready()`).
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.wait_until(crate::shm::wait::after(timeout))
    }

    /// Whether the results are ready (or one failed); with callbacks: and
    /// they have run.
    pub fn ready(&self) -> bool {
        match &self.after {
            Some(slot) => slot.is_filled(),
            None => self.job.is_complete() || self.job.first_error().is_some(),
        }
    }

    /// Whether every item succeeded: `None` until ready.
    pub fn successful(&self) -> Option<bool> {
        match &self.after {
            Some(slot) => slot.inspect(Result::is_ok),
            None => self.ready().then(|| self.job.first_error().is_none()),
        }
    }

    /// Runs `callback` on every result, in order, or `error_callback` on
    /// the first failure, when the map finishes (Python's `map_async(...,
    /// callback, error_callback)`), in the parent on the pool's callback
    /// thread (`multiproc-pool-callbacks`), never on a worker. Dropping the
    /// handle then no longer stops the map: the callbacks get its results.
    /// Otherwise as [`TaskHandle::with_callbacks`].
    ///
    /// ```
    /// use std::sync::mpsc;
    /// use multiproc::Pool;
    ///
    /// fn add((a, b): (u64, u64)) -> u64 {
    ///     a + b
    /// }
    ///
    /// let pool = Pool::new(2)?;
    /// let (tx, rx) = mpsc::channel();
    /// let on_err = tx.clone();
    /// pool.starmap_async(add, [(1, 2), (3, 4)]).with_callbacks(
    ///     move |sums: &[u64]| tx.send(Ok(sums.to_vec())).unwrap(),
    ///     move |e| on_err.send(Err(e.clone())).unwrap(),
    /// );
    /// assert_eq!(rx.recv()?, Ok(vec![3, 7]));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn with_callbacks(
        mut self,
        callback: impl FnOnce(&[R]) + Send + 'static,
        error_callback: impl FnOnce(&TaskError) + Send + 'static,
    ) -> Self {
        let both: Callback<Result<Vec<R>, TaskError>> = Box::new(move |r| match r {
            Ok(v) => callback(v),
            Err(e) => error_callback(e),
        });
        match &self.after {
            None => {
                let slot = Slot::new(both);
                let (job, s) = (Arc::clone(&self.job), Arc::clone(&slot));
                self.callbacks.when_settled(
                    |n, key| self.job.listen(n, key),
                    Box::new(move || s.deliver(job.take_values())),
                );
                self.after = Some(slot);
            }
            Some(slot) => {
                if let Some(value) = slot.add(both) {
                    let s = Arc::clone(slot);
                    self.callbacks.soon(Box::new(move || s.deliver(value)));
                }
            }
        }
        self
    }
}

/// A `MapHandle` is a [`Future`] of [`get`](MapHandle::get)'s result:
/// `.await` it on any executor (the job wakes the task when it is done).
/// Dropping it stops the map, as dropping the handle does.
///
/// ```
/// use multiproc::Pool;
///
/// fn square(x: u64) -> u64 {
///     x * x
/// }
///
/// let pool = Pool::new(2)?;
/// let squares = futures::executor::block_on(pool.map_async(square, 0..5))?;
/// assert_eq!(squares, [0, 1, 4, 9, 16]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
impl<R: DeserializeOwned + Send + 'static> Future for MapHandle<R> {
    type Output = Result<Vec<R>, TaskError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Some(slot) = &self.after {
            slot.set_waker(cx.waker());
        } else {
            self.job.set_waker(cx.waker());
        }
        if self.ready() {
            Poll::Ready(self.take())
        } else {
            Poll::Pending
        }
    }
}

impl<R> Drop for MapHandle<R> {
    fn drop(&mut self) {
        // With callbacks, they want the results.
        if self.after.is_none() {
            self.job.abandon();
        }
    }
}
