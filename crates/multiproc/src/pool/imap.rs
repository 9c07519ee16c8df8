//! Lazy results: `imap`, `imap_unordered`, and their stream.

use super::options::*;
use super::*;
use serde::{Serialize, de::DeserializeOwned};
use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// The results of [`Pool::imap`] or [`Pool::imap_unordered`], one per
/// item, as they come. Items are read from the input only as results are
/// taken. Dropping it drops the items not yet started.
///
/// If the input iterator panics, the items it gave before still run and
/// their results come out first; then `next` resumes the input's panic
/// (in the place of the item, as Python's `imap` raises the input's
/// exception), and returns `None` after it.
pub struct Imap<R, It: Iterator> {
    pub(super) feeder: Feeder<R, It>,
    /// Outcomes taken from the job in one go, handed out one by one.
    pub(super) ready: VecDeque<Result<R, TaskError>>,
}

impl<R, It: Iterator> fmt::Debug for Imap<R, It> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Imap")
            .field("next", &self.feeder.next)
            .finish_non_exhaustive()
    }
}

impl<R, A, It> Iterator for Imap<R, It>
where
    It: Iterator<Item = A>,
    A: Serialize,
    R: DeserializeOwned + Send + 'static,
{
    type Item = Result<R, TaskError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(outcome) = self.ready.pop_front() {
            return Some(outcome);
        }
        let f = &mut self.feeder;
        loop {
            f.top_up();
            match f.job.take_ready(&mut self.ready) {
                Ok(true) => return self.ready.pop_front(),
                Ok(false) => {
                    if let Some(payload) = f.input_panic.take() {
                        std::panic::resume_unwind(payload);
                    }
                    finish_progress(&f.job);
                    return None;
                }
                Err(()) => {
                    f.job.wait_next(None);
                }
            }
        }
    }
}

impl<R, A, It> Imap<R, It>
where
    It: Iterator<Item = A>,
    A: Serialize,
    R: DeserializeOwned + Send + 'static,
{
    /// Waits at most `timeout` for the next outcome; returns whether
    /// [`next`](Iterator::next) would now return without waiting (an
    /// outcome is ready, or the results are over). Python's
    /// `it.next(timeout)` is `if it.wait_timeout(d) { it.next() } else {
    /// /* TimeoutError */ }`: a timeout takes nothing, and the iteration
    /// goes on.
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
    /// let mut it = pool.imap(nap, [300, 1]);
    /// assert!(!it.wait_timeout(Duration::from_millis(10)));
    /// assert!(it.wait_timeout(Duration::from_secs(30)));
    /// assert_eq!(it.next(), Some(Ok(300)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn wait_timeout(&mut self, timeout: Duration) -> bool {
        if !self.ready.is_empty() {
            return true;
        }
        let deadline = crate::shm::wait::after(timeout);
        let f = &mut self.feeder;
        loop {
            f.top_up();
            match f.job.take_ready(&mut self.ready) {
                Ok(_) => return true,
                Err(()) => {
                    if !f.job.wait_next(deadline) {
                        return false;
                    }
                }
            }
        }
    }
}

impl<R, It: Iterator> Imap<R, It> {
    /// The same outcomes as a [`Stream`](futures_core::Stream), for async
    /// code: `next().await` on any executor waits without blocking the
    /// thread (the job wakes the task as results arrive). Items are
    /// encoded and submitted in the poll, as the iterator's `next` does.
    /// (A separate type, so that `map`, `next` and the rest are never
    /// ambiguous between `Iterator` and `StreamExt`.)
    ///
    /// ```
    /// use futures::StreamExt;
    /// use multiproc::Pool;
    ///
    /// fn double(x: u64) -> u64 {
    ///     x * 2
    /// }
    ///
    /// let pool = Pool::new(2)?;
    /// let doubled: Vec<u64> = futures::executor::block_on(
    ///     pool.imap(double, 0..4).into_stream().map(|r| r.unwrap()).collect(),
    /// );
    /// assert_eq!(doubled, [0, 2, 4, 6]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn into_stream(self) -> ImapStream<R, It> {
        ImapStream(self)
    }
}

/// [`Imap`] as a [`Stream`](futures_core::Stream) of its outcomes (made
/// by [`Imap::into_stream`]). Dropping it drops the items not yet
/// started, as dropping the `Imap` does.
pub struct ImapStream<R, It: Iterator>(Imap<R, It>);

impl<R, It: Iterator> fmt::Debug for ImapStream<R, It> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ImapStream").field(&self.0).finish()
    }
}

// Nothing of an `ImapStream` is ever pinned (no field is projected): it
// may move between polls whatever its input iterator is.
impl<R, It: Iterator> Unpin for ImapStream<R, It> {}

impl<R, A, It> futures_core::Stream for ImapStream<R, It>
where
    It: Iterator<Item = A>,
    A: Serialize,
    R: DeserializeOwned + Send + 'static,
{
    type Item = Result<R, TaskError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut self.get_mut().0;
        if let Some(outcome) = this.ready.pop_front() {
            return Poll::Ready(Some(outcome));
        }
        let f = &mut this.feeder;
        let mut waker_set = false;
        loop {
            f.top_up();
            match f.job.take_ready(&mut this.ready) {
                Ok(true) => return Poll::Ready(this.ready.pop_front()),
                Ok(false) => {
                    if let Some(payload) = f.input_panic.take() {
                        std::panic::resume_unwind(payload);
                    }
                    finish_progress(&f.job);
                    return Poll::Ready(None);
                }
                // Set the waker, then look once more: an outcome that
                // arrived in between wakes nobody.
                Err(()) if !waker_set => {
                    f.job.set_waker(cx.waker());
                    waker_set = true;
                }
                Err(()) => return Poll::Pending,
            }
        }
    }
}

impl<R, It: Iterator> Drop for Imap<R, It> {
    fn drop(&mut self) {
        self.feeder.job.abandon();
    }
}
