//! A pool of worker processes: `map`, `imap`, `apply_async`, `submit`
//! (Python's `multiprocessing.Pool` and `concurrent.futures`'
//! `ProcessPoolExecutor`), where a worker that dies, panics or hangs fails
//! only its own task.
//!
//! Inside (`docs/pool-scheduler.md` explains the design):
//!
//! * this file: the [`Pool`] itself;
//! * `builder`: [`PoolBuilder`];
//! * `options`: [`TaskOptions`] and the feeder that hands items out;
//! * `imap`: the lazy [`Imap`] and its stream;
//! * `handle`: [`TaskHandle`] and [`as_completed`];
//! * `map_handle`: [`MapHandle`];
//! * `pod`: [`map_pod`](Pool::map_pod), plain data moved as bytes;
//! * `worker`: what a worker process runs.
//! * `scheduler`: which worker holds which task; deaths, timeouts,
//!   replacements.
//! * `chunking`: how many items go into one task.
//! * `job`: where results go until a handle takes them.
//! * `link`: the framed socket between the parent and each worker.
//! * `callback`: the thread that runs callbacks on async calls.
//!
//! ```
//! use multiproc::Pool;
//!
//! fn square(x: u64) -> u64 {
//!     x * x
//! }
//!
//! let pool = Pool::new(2)?;
//! assert_eq!(pool.map(square, 1..=4)?, [1, 4, 9, 16]);
//! let handle = pool.submit(square, 12);
//! assert_eq!(handle.get()?, 144);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub(crate) mod backend;
mod builder;
pub(crate) mod callback;
pub(crate) mod chunking;
pub(crate) mod error;
mod handle;
mod imap;
pub(crate) mod job;
pub(crate) mod link;
mod map_handle;
mod options;
mod pod;
mod progress;
pub(crate) mod registry;
pub(crate) mod scheduler;
pub(crate) mod worker;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Serialize, de::DeserializeOwned};

use self::backend::Backend;
use self::callback::Runner;
use crate::process::StartMethod;

pub use error::{PoolError, ResultTimeoutError, TaskError};
pub use scheduler::WorkerStats;
pub use worker::with_state;

pub use builder::{DEFAULT_MAX_FAILED_STARTS, PoolBuilder};
pub use handle::{AsCompleted, CancelOnDrop, TaskHandle, as_completed};
pub use imap::{Imap, ImapStream};
pub use map_handle::MapHandle;
pub use options::TaskOptions;
pub use progress::Progress;

/// A pool of worker processes.
///
/// Each worker is a process: a panic, a segfault, a leak or a hang in a
/// task cannot reach the caller. The parent knows which worker runs which
/// item: if a worker dies mid-task (killed, segfault, `exit`), exactly that
/// item fails with [`TaskError::WorkerDied`], the worker is replaced and
/// the rest goes on. Dropping the pool terminates it (as Python's `with
/// Pool()` does); [`join`](Self::join) finishes the queued work first.
///
/// ```
/// use multiproc::{Pool, TaskError};
///
/// fn check(x: i32) -> i32 {
///     assert!(x != 3, "three is not allowed");
///     x * 10
/// }
///
/// let pool = Pool::builder().workers(2).build()?;
/// let results = pool.map_results(check, 1..=4);
/// assert_eq!(results[0], Ok(10));
/// assert!(matches!(&results[2], Err(TaskError::Panicked(p)) if p.message == "three is not allowed"));
/// assert_eq!(results[3], Ok(40));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Pool {
    pub(super) backend: Arc<dyn Backend>,
    pub(super) callbacks: Arc<Runner>,
    pub(super) task_timeout: Option<Duration>,
    /// Set once the backend was joined or terminated.
    pub(super) stopped: bool,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("workers", &self.backend.workers())
            .field("start_method", &self.backend.method())
            .finish_non_exhaustive()
    }
}

impl Pool {
    pub(crate) fn with_backend(backend: Arc<dyn Backend>, task_timeout: Option<Duration>) -> Pool {
        Pool {
            backend,
            callbacks: Runner::new(),
            task_timeout,
            stopped: false,
        }
    }

    /// Where its chunks run.
    pub(crate) fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// A pool of `workers` processes with the default settings.
    pub fn new(workers: usize) -> Result<Pool, PoolError> {
        Pool::builder().workers(workers).build()
    }

    /// A [`PoolBuilder`] for the other settings.
    pub fn builder() -> PoolBuilder {
        PoolBuilder::default()
    }

    /// The number of worker processes.
    pub fn workers(&self) -> usize {
        self.backend.workers()
    }

    /// How the workers are started.
    pub fn start_method(&self) -> StartMethod {
        self.backend.method()
    }

    /// Per-worker statistics: items done, busy and idle time, restarts.
    ///
    /// On a cluster pool there is one entry per agent, as the agent last
    /// published it: the figures lag by up to one heartbeat.
    pub fn stats(&self) -> Vec<WorkerStats> {
        self.backend.stats()
    }

    /// Options for running `f`: chunk size, timeout, progress bar.
    pub fn task<A, R>(&self, f: fn(A) -> R) -> TaskOptions<'_, A, R> {
        TaskOptions {
            pool: self,
            f,
            chunksize: None,
            timeout: self.task_timeout,
            progress: None,
        }
    }

    /// `f` over every item, results in order (Python's `map`). Stops at
    /// the first failure and returns it; the items not yet started are
    /// dropped. [`map_results`](Self::map_results) runs every item.
    ///
    /// `f` is a `fn` (or a closure that captures nothing) and the items
    /// owned values ([the two compiler errors met when they are
    /// not](crate#two-compiler-errors-you-may-meet-first)):
    ///
    /// - *"expected fn pointer, found closure"* (E0308, "closures can only
    ///   be coerced to `fn` types if they do not capture any variables"):
    ///   the closure uses a variable of yours, which the workers cannot
    ///   see. Put it in each item (`items.map(|x| (x, factor))`), or give
    ///   it to every worker once with an
    ///   [`initializer`](PoolBuilder::initializer).
    /// - *"implementation of `Deserialize` is not general enough"*: `f`
    ///   takes a borrowed item (`&str`, `&[u8]`). Take an owned one
    ///   (`String`, `Vec<u8>`) and map over owned items.
    ///
    /// ```compile_fail
    /// fn shout(s: &str) -> usize {
    ///     s.len()
    /// }
    /// let pool = multiproc::Pool::new(2)?;
    /// // error: implementation of `Deserialize` is not general enough
    /// let lengths = pool.map(shout, ["a", "bc"]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// ```
    /// fn shout(s: String) -> usize {
    ///     s.len()
    /// }
    /// let pool = multiproc::Pool::new(2)?;
    /// let lengths = pool.map(shout, ["a", "bc"].map(String::from))?;
    /// assert_eq!(lengths, [1, 2]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn map<A, R>(
        &self,
        f: fn(A) -> R,
        items: impl IntoIterator<Item = A>,
    ) -> Result<Vec<R>, TaskError>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.task(f).map(items)
    }

    /// `f` over every item, each item's own outcome in order: a failed item
    /// does not stop the others.
    pub fn map_results<A, R>(
        &self,
        f: fn(A) -> R,
        items: impl IntoIterator<Item = A>,
    ) -> Vec<Result<R, TaskError>>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.task(f).map_results(items)
    }

    /// [`map`](Self::map) for plain data: arguments and results that are
    /// [`bytemuck::Pod`] (numbers, arrays of them, `#[repr(C)]` structs
    /// without padding) go to the workers and back as their bytes, a
    /// whole chunk at a time, with no per-item encoding. A map of a
    /// million `u64` takes a few milliseconds rather than tens.
    ///
    /// Chunks are large (about 512 KiB of items, see
    /// [`TaskOptions::chunksize`]), yet failures are per item as in
    /// [`map`](Self::map): a panic fails only its item; a worker that dies
    /// or overruns its timeout fails the item it was running, and the rest
    /// of its chunk runs again on another worker. Stops at the first
    /// failure and returns it; [`map_pod_results`](Self::map_pod_results)
    /// gives every item's outcome.
    ///
    /// Only local pools run it: on a cluster pool or a manager's pool it
    /// fails with [`TaskError::Unsupported`] (they run registered serde
    /// tasks, by name).
    ///
    /// The bytes go through shared memory that the pool keeps for these
    /// maps: a 32 MiB block for the arguments, one map at a time, which the
    /// workers can only read, and a 2 MiB area per worker for its results,
    /// in four parts (pages are taken as maps touch them, and kept until
    /// the pool or the worker goes). A map whose arguments do not fit, one that runs while
    /// another holds the block, and every map of a pool with a
    /// [`memory_limit`](PoolBuilder::memory_limit) go through the workers'
    /// task links instead: the same results, more slowly.
    ///
    /// Why a method of its own rather than a fast path inside `map`: `map`
    /// cannot tell a `Pod` type from its type without specialization,
    /// which stable Rust lacks, and a type can be both `Pod` and
    /// `Serialize` with encodings that differ (a serde `u64` is a varint);
    /// choosing by hand keeps what goes over the wire explicit.
    ///
    /// ```
    /// use multiproc::Pool;
    ///
    /// #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
    /// #[repr(C)]
    /// struct Point {
    ///     x: f32,
    ///     y: f32,
    /// }
    ///
    /// fn norm(p: Point) -> f32 {
    ///     (p.x * p.x + p.y * p.y).sqrt()
    /// }
    ///
    /// let pool = Pool::new(2)?;
    /// let points = [Point { x: 3.0, y: 4.0 }, Point { x: 6.0, y: 8.0 }];
    /// assert_eq!(pool.map_pod(norm, &points)?, [5.0, 10.0]);
    ///
    /// fn incr(x: u64) -> u64 {
    ///     x + 1
    /// }
    /// let items: Vec<u64> = (0..1_000_000).collect();
    /// let out = pool.map_pod(incr, &items)?;
    /// assert_eq!(out[999_999], 1_000_000);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn map_pod<A, R>(&self, f: fn(A) -> R, items: &[A]) -> Result<Vec<R>, TaskError>
    where
        A: bytemuck::Pod,
        R: bytemuck::Pod + Send,
    {
        self.task(f).map_pod(items)
    }

    /// [`map_pod`](Self::map_pod), each item's own outcome in order (as
    /// [`map_results`](Self::map_results)): a failed item does not stop
    /// the others. A chunk is a unit of transport only: when a worker dies
    /// in one, the item it was running fails and the others of the chunk
    /// run again; when a worker's answer for a chunk is malformed, that
    /// chunk's items fail with [`TaskError::ResultDecode`].
    pub fn map_pod_results<A, R>(&self, f: fn(A) -> R, items: &[A]) -> Vec<Result<R, TaskError>>
    where
        A: bytemuck::Pod,
        R: bytemuck::Pod + Send,
    {
        self.task(f).map_pod_results(items)
    }

    /// Python's `starmap`. A Rust function takes its arguments as one
    /// tuple, so this is [`map`](Self::map) over tuples: `fn((a, b)) -> r`.
    pub fn starmap<A, R>(
        &self,
        f: fn(A) -> R,
        items: impl IntoIterator<Item = A>,
    ) -> Result<Vec<R>, TaskError>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.map(f, items)
    }

    /// A lazy, ordered map: items are read from `items` only as results
    /// are taken, so memory stays bounded for inputs of any length.
    pub fn imap<A, R, It>(&self, f: fn(A) -> R, items: It) -> Imap<R, It::IntoIter>
    where
        It: IntoIterator<Item = A>,
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.task(f).imap(items)
    }

    /// Like [`imap`](Self::imap), results in the order they finish.
    pub fn imap_unordered<A, R, It>(&self, f: fn(A) -> R, items: It) -> Imap<R, It::IntoIter>
    where
        It: IntoIterator<Item = A>,
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.task(f).imap_unordered(items)
    }

    /// Runs `f(arg)` in a worker and waits for it (Python's `apply`).
    pub fn apply<A, R>(&self, f: fn(A) -> R, arg: A) -> Result<R, TaskError>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.submit(f, arg).get()
    }

    /// Starts `f(arg)` in a worker (Python's `apply_async`); see
    /// [`submit`](Self::submit). Python's `callback` and `error_callback`
    /// are [`TaskHandle::with_callbacks`], run in this process on the
    /// pool's callback thread:
    ///
    /// ```
    /// use std::sync::mpsc;
    /// use multiproc::{Pool, TaskError};
    ///
    /// fn check(x: u64) -> u64 {
    ///     assert!(x < 10, "too big");
    ///     x * 2
    /// }
    ///
    /// let pool = Pool::new(2)?;
    /// let (tx, rx) = mpsc::channel();
    /// for x in [4, 40] {
    ///     let (ok, err) = (tx.clone(), tx.clone());
    ///     // The handle may be dropped: the callbacks still run.
    ///     pool.apply_async(check, x).with_callbacks(
    ///         move |v: &u64| ok.send((x, Ok(*v))).unwrap(),
    ///         move |e: &TaskError| err.send((x, Err(e.to_string()))).unwrap(),
    ///     );
    /// }
    /// let mut got: Vec<(u64, Result<u64, String>)> = rx.iter().take(2).collect();
    /// got.sort();
    /// assert_eq!(got[0], (4, Ok(8)));
    /// assert!(matches!(&got[1], (40, Err(e)) if e.contains("too big")));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn apply_async<A, R>(&self, f: fn(A) -> R, arg: A) -> TaskHandle<R>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.submit(f, arg)
    }

    /// Starts `f(arg)` in a worker (the executor's `submit`). The handle
    /// waits for the result, or is awaited: it is a [`Future`] that needs
    /// no particular async runtime.
    ///
    /// Dropping the handle before the task finished *detaches* it: the
    /// task still runs and its result is dropped, as with
    /// [`std::thread::JoinHandle`] and tokio's `JoinHandle`. That includes
    /// a future dropped by `select!` or a timeout. To stop the task
    /// instead, call [`TaskHandle::cancel`], or make a handle that cancels
    /// when dropped with [`TaskHandle::cancel_on_drop`].
    pub fn submit<A, R>(&self, f: fn(A) -> R, arg: A) -> TaskHandle<R>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.task(f).submit(arg)
    }

    /// Starts `f` over every item and returns at once (Python's
    /// `map_async`).
    pub fn map_async<A, R>(&self, f: fn(A) -> R, items: impl IntoIterator<Item = A>) -> MapHandle<R>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.task(f).map_async(items)
    }

    /// Python's `starmap_async`: [`map_async`](Self::map_async) over
    /// tuples, as [`starmap`](Self::starmap) is [`map`](Self::map) over
    /// tuples (a Rust function takes its arguments as one tuple).
    ///
    /// ```
    /// use multiproc::Pool;
    ///
    /// fn add((a, b): (u64, u64)) -> u64 {
    ///     a + b
    /// }
    ///
    /// let pool = Pool::new(2)?;
    /// let handle = pool.starmap_async(add, [(1, 2), (3, 4)]);
    /// assert_eq!(handle.get()?, [3, 7]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn starmap_async<A, R>(
        &self,
        f: fn(A) -> R,
        items: impl IntoIterator<Item = A>,
    ) -> MapHandle<R>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.task(f).starmap_async(items)
    }

    /// Takes no more tasks; what is queued still runs (Python's `close`).
    pub fn close(&self) {
        self.backend.close();
    }

    /// Closes the pool, waits for every queued task, and ends the workers
    /// (Python's `close` then `join`).
    pub fn join(mut self) {
        self.backend.join();
        self.stopped = true;
    }

    /// Stops at once: queued and running tasks fail with
    /// [`TaskError::Terminated`] and the workers are killed (Python's
    /// `terminate`). Dropping the pool does the same.
    pub fn terminate(mut self) {
        self.stop();
    }

    pub(super) fn stop(&mut self) {
        if !self.stopped {
            self.backend.terminate();
            self.stopped = true;
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.stop();
        // Every job has settled: the callbacks left run now.
        self.callbacks.shut_down();
    }
}
