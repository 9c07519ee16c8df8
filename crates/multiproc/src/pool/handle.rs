//! One task's result handle, and `as_completed` over several.

use super::backend::Backend;
use super::callback::{Callback, Runner, Slot};
use super::job::{Job, Notifier};
use super::*;
use serde::de::DeserializeOwned;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// The result of one task started with [`Pool::submit`] or
/// [`Pool::apply_async`]. Wait for it with [`get`](Self::get), or `.await`
/// it.
///
/// **Dropping it detaches the task**: a task not finished goes on running
/// on its worker, and its result is dropped, as with
/// [`std::thread::JoinHandle`] and tokio's `JoinHandle`. A future dropped
/// by `select!` or a timeout is dropped so too. To stop the task, call
/// [`cancel`](Self::cancel); for a handle that cancels when it is
/// dropped, use [`cancel_on_drop`](Self::cancel_on_drop).
///
/// ```
/// use std::time::Duration;
/// use multiproc::Pool;
///
/// fn nap(ms: u64) -> u64 {
///     std::thread::sleep(Duration::from_millis(ms));
///     ms
/// }
///
/// let pool = Pool::new(1)?;
/// // Detached: it runs to the end, its result unread.
/// drop(pool.submit(nap, 10));
/// // Cancelled when dropped: its worker is killed and replaced.
/// let guarded = pool.submit(nap, 60_000).cancel_on_drop();
/// drop(guarded);
/// assert_eq!(pool.apply(nap, 1)?, 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct TaskHandle<R> {
    pub(super) job: Arc<Job<R>>,
    pub(super) backend: Arc<dyn Backend>,
    pub(super) callbacks: Arc<Runner>,
    /// Given callbacks: the result, once they ran.
    pub(super) after: Option<Arc<Slot<Result<R, TaskError>>>>,
}

impl<R> fmt::Debug for TaskHandle<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskHandle")
            .field("ready", &self.job.is_complete())
            .finish()
    }
}

impl<R: DeserializeOwned + Send + 'static> TaskHandle<R> {
    pub(super) fn take(&self) -> Result<R, TaskError> {
        match &self.after {
            Some(slot) => {
                slot.wait(None);
                slot.take().unwrap_or(Err(TaskError::Cancelled))
            }
            None => take_one(&self.job),
        }
    }

    pub(super) fn wait_until(&self, deadline: Option<std::time::Instant>) -> bool {
        match &self.after {
            Some(slot) => slot.wait(deadline),
            None => self.job.wait_done(deadline),
        }
    }

    /// Waits for the result.
    pub fn get(self) -> Result<R, TaskError> {
        self.wait_until(None);
        self.take()
    }

    /// Waits at most `timeout`; on timeout the handle comes back in
    /// [`ResultTimeoutError::Timeout`] and the task goes on.
    pub fn get_timeout(self, timeout: Duration) -> Result<R, ResultTimeoutError<Self>> {
        if self.wait_until(crate::shm::wait::after(timeout)) {
            self.take().map_err(ResultTimeoutError::Failed)
        } else {
            Err(ResultTimeoutError::Timeout(self))
        }
    }

    /// Waits until the result is ready, at most `timeout`; returns whether
    /// it is.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.wait_until(crate::shm::wait::after(timeout))
    }

    /// Waits until the result is ready.
    pub fn wait(&self) {
        self.wait_until(None);
    }

    /// Whether the result is ready (with callbacks: and they have run).
    pub fn ready(&self) -> bool {
        match &self.after {
            Some(slot) => slot.is_filled(),
            None => self.job.is_complete(),
        }
    }

    /// Whether it succeeded: `None` until it is ready.
    pub fn successful(&self) -> Option<bool> {
        match &self.after {
            Some(slot) => slot.inspect(Result::is_ok),
            None => self.ready().then(|| self.job.first_error().is_none()),
        }
    }

    /// Runs `callback` on the value, or `error_callback` on the error, when
    /// the task finishes (Python's `apply_async(..., callback,
    /// error_callback)`), in the parent on the pool's callback thread
    /// (named `multiproc-pool-callbacks`), never on a worker. See
    /// [`Pool::apply_async`] for an example.
    ///
    /// The handle then returns its result once the callbacks ran, as
    /// Python's `AsyncResult.get` does; it may still be dropped, which no
    /// longer affects the callbacks. Callbacks given again run after the
    /// first ones. If the task finished before this call, they run at
    /// once (still on that thread).
    ///
    /// A panic in a callback is caught on that thread (the panic hook
    /// prints it as usual): the other callbacks still run, the handle
    /// still gets its result, and the pool goes on. A callback runs while
    /// no other callback of the pool can: one that blocks holds up every
    /// other (and the pool's drop, which waits for them), and one that waits for another handle with callbacks of the
    /// same pool waits forever (as in Python, whose result-handler thread
    /// runs them). If the pool ends first, the pool's end runs them with
    /// the error the handle would get ([`TaskError::Terminated`]).
    pub fn with_callbacks(
        mut self,
        callback: impl FnOnce(&R) + Send + 'static,
        error_callback: impl FnOnce(&TaskError) + Send + 'static,
    ) -> Self {
        let both: Callback<Result<R, TaskError>> = Box::new(move |r| match r {
            Ok(v) => callback(v),
            Err(e) => error_callback(e),
        });
        match &self.after {
            None => {
                let slot = Slot::new(both);
                let (job, s) = (Arc::clone(&self.job), Arc::clone(&slot));
                self.callbacks.when_settled(
                    |n, key| self.job.listen(n, key),
                    Box::new(move || s.deliver(take_one(&job))),
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

    /// Cancels the task: if queued, it never runs; if running, its worker
    /// is killed and replaced. Either way the result is
    /// [`TaskError::Cancelled`].
    pub fn cancel(&self) {
        if self.job.is_complete() {
            return;
        }
        self.job.cancel();
        self.backend.cancelled();
    }

    /// This handle, but dropping it before the task finished cancels the
    /// task (see [`cancel`](Self::cancel)) instead of detaching it: for a
    /// future that `select!` or a timeout may drop, when the work is
    /// worthless without someone waiting for it.
    pub fn cancel_on_drop(self) -> CancelOnDrop<R> {
        CancelOnDrop { handle: Some(self) }
    }
}

impl<R: DeserializeOwned + Send + 'static> Future for TaskHandle<R> {
    type Output = Result<R, TaskError>;

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

/// The outcome of a one-item job.
pub(super) fn take_one<R>(job: &Job<R>) -> Result<R, TaskError> {
    job.take_all()
        .into_iter()
        .next()
        .unwrap_or(Err(TaskError::Cancelled))
}

/// A [`TaskHandle`] that cancels its task when dropped before the task
/// finished: a queued task never runs; a running one's worker is killed
/// and replaced, as [`TaskHandle::cancel`] does. Made by
/// [`TaskHandle::cancel_on_drop`]. It is a [`Future`] too, and derefs to
/// the handle for [`ready`](TaskHandle::ready), [`wait`](TaskHandle::wait)
/// and the rest.
///
/// ```
/// use std::time::Duration;
/// use multiproc::{Pool, TaskError};
///
/// fn nap(ms: u64) -> u64 {
///     std::thread::sleep(Duration::from_millis(ms));
///     ms
/// }
///
/// let pool = Pool::new(1)?;
/// let slow = pool.submit(nap, 60_000).cancel_on_drop();
/// assert!(!slow.wait_timeout(Duration::from_millis(50)));
/// drop(slow); // the worker running it is killed and replaced
/// assert_eq!(pool.submit(nap, 1).cancel_on_drop().get(), Ok(1));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use = "dropping a CancelOnDrop cancels its task at once"]
pub struct CancelOnDrop<R: DeserializeOwned + Send + 'static> {
    /// `None` once `get` or `detach` took it.
    pub(super) handle: Option<TaskHandle<R>>,
}

impl<R: DeserializeOwned + Send + 'static> fmt::Debug for CancelOnDrop<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CancelOnDrop")
            .field("handle", &self.handle)
            .finish()
    }
}

impl<R: DeserializeOwned + Send + 'static> CancelOnDrop<R> {
    pub(super) fn take(&mut self) -> TaskHandle<R> {
        self.handle.take().expect("taken only by consuming methods")
    }

    /// Waits for the result (see [`TaskHandle::get`]).
    pub fn get(mut self) -> Result<R, TaskError> {
        self.take().get()
    }

    /// Waits at most `timeout`; on timeout the guard comes back, still
    /// armed, in [`ResultTimeoutError::Timeout`].
    pub fn get_timeout(mut self, timeout: Duration) -> Result<R, ResultTimeoutError<Self>> {
        match self.take().get_timeout(timeout) {
            Ok(v) => Ok(v),
            Err(ResultTimeoutError::Failed(e)) => Err(ResultTimeoutError::Failed(e)),
            Err(ResultTimeoutError::Timeout(h)) => {
                Err(ResultTimeoutError::Timeout(h.cancel_on_drop()))
            }
        }
    }

    /// The plain handle back: dropping it then detaches the task.
    pub fn detach(mut self) -> TaskHandle<R> {
        self.take()
    }
}

impl<R: DeserializeOwned + Send + 'static> std::ops::Deref for CancelOnDrop<R> {
    type Target = TaskHandle<R>;

    fn deref(&self) -> &TaskHandle<R> {
        self.handle
            .as_ref()
            .expect("taken only by consuming methods")
    }
}

impl<R: DeserializeOwned + Send + 'static> Future for CancelOnDrop<R> {
    type Output = Result<R, TaskError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Unpin: it holds only `Arc`s.
        let this = self.get_mut();
        let handle = this
            .handle
            .as_mut()
            .expect("taken only by consuming methods");
        Pin::new(handle).poll(cx)
    }
}

impl<R: DeserializeOwned + Send + 'static> Drop for CancelOnDrop<R> {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            // A no-op if it finished.
            h.cancel();
        }
    }
}

/// Yields the handles as their tasks complete (the executor's
/// `as_completed`).
///
/// ```
/// use multiproc::{Pool, pool::as_completed};
///
/// fn nap(ms: u64) -> u64 {
///     std::thread::sleep(std::time::Duration::from_millis(ms));
///     ms
/// }
///
/// let pool = Pool::new(2)?;
/// let handles = vec![pool.submit(nap, 300), pool.submit(nap, 1)];
/// let order: Vec<u64> = as_completed(handles).map(|h| h.get().unwrap()).collect();
/// assert_eq!(order, [1, 300]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn as_completed<R>(handles: impl IntoIterator<Item = TaskHandle<R>>) -> AsCompleted<R> {
    let notifier = Arc::new(Notifier::default());
    let handles: Vec<Option<TaskHandle<R>>> = handles.into_iter().map(Some).collect();
    for (i, h) in handles.iter().enumerate() {
        if let Some(h) = h {
            h.job.listen(Arc::clone(&notifier), i);
        }
    }
    AsCompleted { notifier, handles }
}

/// The iterator [`as_completed`] returns.
pub struct AsCompleted<R> {
    pub(super) notifier: Arc<Notifier>,
    pub(super) handles: Vec<Option<TaskHandle<R>>>,
}

impl<R> fmt::Debug for AsCompleted<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsCompleted")
            .field("left", &self.handles.iter().filter(|h| h.is_some()).count())
            .finish()
    }
}

impl<R> Iterator for AsCompleted<R> {
    type Item = TaskHandle<R>;

    fn next(&mut self) -> Option<TaskHandle<R>> {
        if self.handles.iter().all(Option::is_none) {
            return None;
        }
        let mut done = self.notifier.done.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(i) = done.pop_front() {
                if let Some(h) = self.handles.get_mut(i).and_then(Option::take) {
                    return Some(h);
                }
                continue;
            }
            done = self
                .notifier
                .cv
                .wait(done)
                .unwrap_or_else(|e| e.into_inner());
        }
    }
}
