//! Per-call options (chunk size, timeout, progress bar) and the feeder
//! that hands a call's items to the workers.

use super::backend::Backend;
use super::chunking::Chunker;
use super::job::{Job, Sink};
use super::progress::{Bar, Progress};
use super::registry::TaskKey;
use super::scheduler::{Chunk, Ends};
use super::*;
use super::{handle::*, imap::*, map_handle::*};
use crate::sys::code::{EntryId, PREAMBLE};
use crate::wire::{EncodeError, codec};
use serde::{Serialize, de::DeserializeOwned};
use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// How to run one function on a pool: chunk size, timeout, progress bar.
/// Made by [`Pool::task`].
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
/// let pool = Pool::new(2)?;
/// let out = pool
///     .task(nap)
///     .timeout(Duration::from_millis(500))
///     .map_results([1, 5_000, 2]);
/// assert_eq!(out[0], Ok(1));
/// assert!(matches!(out[1], Err(TaskError::TimedOut(_))));
/// assert_eq!(out[2], Ok(2));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use = "options do nothing until a map or submit runs them"]
pub struct TaskOptions<'p, A, R> {
    pub(super) pool: &'p Pool,
    pub(super) f: fn(A) -> R,
    pub(super) chunksize: Option<usize>,
    pub(super) timeout: Option<Duration>,
    pub(super) progress: Option<Arc<dyn Progress>>,
}

impl<A, R> fmt::Debug for TaskOptions<'_, A, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskOptions")
            .field("chunksize", &self.chunksize)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

// The settings take any types: they serve the serde maps below and the
// plain-data maps (`map_pod`, in `pod.rs`) alike.
impl<'p, A, R> TaskOptions<'p, A, R> {
    /// Items per task (default: automatic, see the module docs). A size
    /// of 0 is taken as 1 (Python's `imap` raises `ValueError` for it).
    pub fn chunksize(mut self, n: usize) -> Self {
        self.chunksize = Some(n);
        self
    }

    /// Kills a worker whose item runs longer than `timeout`: the item
    /// fails with [`TaskError::TimedOut`], the worker is replaced. Items
    /// then go one per task unless a chunk size is given (except in
    /// [`map_pod`](Self::map_pod), whose chunks stay large).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Shows a progress bar on the terminal (hidden when stderr is not
    /// one) that counts finished items. Its length is the input's when the
    /// input knows it (an exact `size_hint`, as ranges, vectors and other
    /// `ExactSizeIterator`s have), from the start, `imap` included; else it
    /// grows as items are read. When the job ends the bar is finished and
    /// its line ended, before `get`, `map` or the last `next` returns.
    pub fn progress(self) -> Self {
        self.progress_to(Bar::new())
    }

    /// Reports progress to `to` instead of a terminal bar (see
    /// [`Progress`]), with the same lengths and the same end as
    /// [`progress`](Self::progress).
    pub fn progress_to(mut self, to: impl Progress) -> Self {
        self.progress = Some(Arc::new(to));
        self
    }
}

impl<'p, A, R> TaskOptions<'p, A, R>
where
    A: Serialize + DeserializeOwned + 'static,
    R: Serialize + DeserializeOwned + Send + 'static,
{
    pub(super) fn feeder<It: Iterator<Item = A>>(
        self,
        ordered: bool,
        fail_fast: bool,
        len: Option<usize>,
        items: It,
    ) -> Feeder<R, It> {
        // The whole length from the start, when the input knows it (an
        // imap's too, though it reads its input lazily): the bar does not
        // count up (0/64, 0/128, ...) as chunks are submitted.
        let known = len.or(match items.size_hint() {
            (lo, Some(hi)) if lo == hi => Some(lo),
            _ => None,
        });
        let job = Arc::new(Job::new(
            ordered,
            fail_fast,
            self.progress,
            known.map(|n| n as u64),
        ));
        Feeder {
            backend: Arc::clone(&self.pool.backend),
            preamble: EntryId::new(self.f, worker::chunk_body::<A, R>).preamble(),
            key: TaskKey::of(self.f),
            chunker: Chunker::new(
                self.chunksize,
                len,
                self.pool.backend.workers(),
                self.timeout.is_some(),
            ),
            timeout: self.timeout,
            items: items.fuse(),
            next: 0,
            done: false,
            input_panic: None,
            item_bytes: 8,
            sink: Arc::clone(&job) as Arc<dyn Sink>,
            job,
            workers: self.pool.backend.workers(),
        }
    }

    pub(super) fn start_all(
        self,
        fail_fast: bool,
        items: impl IntoIterator<Item = A>,
    ) -> Arc<Job<R>> {
        let items = items.into_iter();
        // The chunk size needs the length: an iterator that does not know
        // it exactly is collected first.
        let (items, len) = match items.size_hint() {
            (lo, Some(hi)) if lo == hi => (Items::Direct(items), lo),
            _ => {
                let all: Vec<A> = items.collect();
                let len = all.len();
                (Items::Collected(all.into_iter()), len)
            }
        };
        let mut feeder = self.feeder(true, fail_fast, Some(len), items);
        // Big chunks go one by one, so the workers start while the rest is
        // encoded; small ones in batches, to save system calls.
        let batch = (4096 / feeder.chunker.size()).max(1);
        while !feeder.done {
            feeder.feed(batch, usize::MAX);
        }
        if let Some(payload) = feeder.input_panic.take() {
            // The caller gets the input's panic, not the items before it.
            feeder.job.abandon();
            std::panic::resume_unwind(payload);
        }
        Arc::clone(&feeder.job)
    }

    /// See [`Pool::map`].
    pub fn map(self, items: impl IntoIterator<Item = A>) -> Result<Vec<R>, TaskError> {
        let job = self.start_all(true, items);
        job.wait_done(None);
        finish_progress(&job);
        job.take_values()
    }

    /// See [`Pool::map_results`].
    pub fn map_results(self, items: impl IntoIterator<Item = A>) -> Vec<Result<R, TaskError>> {
        let job = self.start_all(false, items);
        job.wait_done(None);
        finish_progress(&job);
        job.take_all()
    }

    /// See [`Pool::map_async`].
    pub fn map_async(self, items: impl IntoIterator<Item = A>) -> MapHandle<R> {
        let callbacks = Arc::clone(&self.pool.callbacks);
        MapHandle {
            job: self.start_all(true, items),
            callbacks,
            after: None,
        }
    }

    /// See [`Pool::starmap_async`].
    pub fn starmap_async(self, items: impl IntoIterator<Item = A>) -> MapHandle<R> {
        self.map_async(items)
    }

    /// See [`Pool::imap`].
    pub fn imap<It: IntoIterator<Item = A>>(self, items: It) -> Imap<R, It::IntoIter> {
        Imap {
            feeder: self.feeder(true, false, None, items.into_iter()),
            ready: VecDeque::new(),
        }
    }

    /// See [`Pool::imap_unordered`].
    pub fn imap_unordered<It: IntoIterator<Item = A>>(self, items: It) -> Imap<R, It::IntoIter> {
        Imap {
            feeder: self.feeder(false, false, None, items.into_iter()),
            ready: VecDeque::new(),
        }
    }

    /// See [`Pool::submit`].
    pub fn submit(self, arg: A) -> TaskHandle<R> {
        let backend = Arc::clone(&self.pool.backend);
        let callbacks = Arc::clone(&self.pool.callbacks);
        let mut feeder = self.feeder(true, true, Some(1), std::iter::once(arg));
        // Two rounds: the second finds the end of the input and seals.
        feeder.feed(2, 2);
        TaskHandle {
            job: Arc::clone(&feeder.job),
            backend,
            callbacks,
            after: None,
        }
    }
}

/// A map's items: the caller's iterator when it knows its length, or
/// what it yielded, collected to count it.
pub(super) enum Items<I: Iterator> {
    Direct(I),
    Collected(std::vec::IntoIter<I::Item>),
}

impl<I: Iterator> Iterator for Items<I> {
    type Item = I::Item;

    fn next(&mut self) -> Option<I::Item> {
        match self {
            Items::Direct(i) => i.next(),
            Items::Collected(i) => i.next(),
        }
    }
}

/// Finishes the job's bar, if it has one and it is not finished yet (a
/// job that failed fast stops short of its end).
pub(super) fn finish_progress<R>(job: &Job<R>) {
    job.finish_progress();
}

/// Encodes items into chunks and submits them.
pub(super) struct Feeder<R, It: Iterator> {
    pub(super) backend: Arc<dyn Backend>,
    pub(super) preamble: [u8; PREAMBLE],
    pub(super) key: TaskKey,
    pub(super) chunker: Chunker,
    pub(super) timeout: Option<Duration>,
    pub(super) items: std::iter::Fuse<It>,
    pub(super) next: usize,
    pub(super) done: bool,
    /// The input iterator panicked (`done` is then set): the panic, to
    /// go on in the caller once the items before it have their results,
    /// as Python's `imap` raises the input's exception in its place.
    pub(super) input_panic: Option<Box<dyn std::any::Any + Send>>,
    /// Encoded bytes per item, as last seen: sizes the next chunk's buffer.
    pub(super) item_bytes: usize,
    pub(super) job: Arc<Job<R>>,
    pub(super) sink: Arc<dyn Sink>,
    pub(super) workers: usize,
}

impl<R, A, It> Feeder<R, It>
where
    It: Iterator<Item = A>,
    A: Serialize,
    R: DeserializeOwned + Send + 'static,
{
    /// Encodes up to `max_chunks` chunks (and at most `max_items` items)
    /// and submits them at once; seals the job at the end of the input.
    pub(super) fn feed(&mut self, max_chunks: usize, max_items: usize) {
        let mut batch = Vec::new();
        let mut budget = max_items;
        while batch.len() < max_chunks && budget > 0 && !self.done {
            let size = self.chunker.size().min(budget);
            let mut bytes = Vec::with_capacity(size.min(1 << 20) * self.item_bytes);
            let mut ends = Vec::with_capacity(size.min(1 << 16));
            let mut failed: Option<EncodeError> = None;
            let mut enc = codec::Encoder::new(&mut bytes);
            while ends.len() < size && enc.len() < chunking::MAX_BYTES {
                // The items read before a panic of the input are
                // submitted with the rest of the batch, not lost.
                let next =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.items.next()));
                let next = next.unwrap_or_else(|payload| {
                    self.input_panic = Some(payload);
                    None
                });
                let Some(item) = next else {
                    self.done = true;
                    break;
                };
                match enc.push(&item) {
                    Ok(()) => ends.push(enc.len()),
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            let count = ends.len();
            if count > 0 {
                self.item_bytes = bytes.len().div_ceil(count).max(1);
            }
            budget = budget.saturating_sub(count);
            if count > 0 {
                self.job.add_items(count);
                batch.push(Chunk {
                    id: scheduler::next_id(),
                    sink: Arc::clone(&self.sink),
                    preamble: self.preamble,
                    key: Some(self.key),
                    first: self.next,
                    items: bytes,
                    ends: Ends::Each(ends),
                    timeout: self.timeout,
                    context: None,
                    arena: None,
                });
                self.next += count;
            }
            if let Some(e) = failed {
                // The item that failed to encode fails alone.
                self.job.add_items(1);
                self.sink.fail(self.next, TaskError::ArgumentEncode(e));
                self.next += 1;
                budget = budget.saturating_sub(1);
            }
        }
        if !batch.is_empty() {
            let failed: Vec<(usize, usize)> =
                batch.iter().map(|c| (c.first, c.ends.len())).collect();
            if let Err(e) = self.backend.submit(batch) {
                for (first, count) in failed {
                    for i in first..first + count {
                        self.sink.fail(i, e.clone());
                    }
                }
            }
        }
        if self.done {
            self.job.seal();
        }
    }

    /// Learns chunk sizes from what has run.
    pub(super) fn adapt(&mut self) {
        let (items, busy) = self.job.measured();
        self.chunker.observe(items, busy);
    }

    /// Items that may be submitted and not yet taken: enough to keep every
    /// worker busy, bounded so memory stays bounded.
    pub(super) fn window(&self) -> usize {
        self.chunker.size() * self.workers * 32
    }

    /// Learns from what has run, then submits items until the window is
    /// full or the input ends: the step before every look for outcomes of
    /// `imap` and its stream.
    pub(super) fn top_up(&mut self) {
        loop {
            self.adapt();
            let untaken = self.job.untaken();
            if self.done || untaken >= self.window() {
                return;
            }
            let room = self.window() - untaken;
            self.feed(64, room);
        }
    }
}
