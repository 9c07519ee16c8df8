//! A pool of worker processes: `map`, `imap`, `apply_async`, `submit`
//! (Python's `multiprocessing.Pool` and `concurrent.futures`'
//! `ProcessPoolExecutor`), where a worker that dies, panics or hangs fails
//! only its own task.
//!
//! Inside (`docs/pool-scheduler.md` explains the design):
//!
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
pub(crate) mod callback;
pub(crate) mod chunking;
pub(crate) mod error;
pub(crate) mod job;
pub(crate) mod link;
pub(crate) mod scheduler;
pub(crate) mod worker;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::fmt::{self, Display};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use serde::{Serialize, de::DeserializeOwned};

use self::backend::{Backend, Local};
use self::callback::{Callback, Runner, Slot};
use self::chunking::Chunker;
use self::job::{Job, Notifier, Sink};
use self::scheduler::{Chunk, Shared, Spawner};
use crate::process::{Process, StartMethod, get_start_method};
use crate::sys::code::{CallLink, EntryId, PREAMBLE};
use crate::wire::handles::TrackedFd;
use crate::wire::{EncodeError, codec};

pub use error::{GetTimeoutError, PoolError, TaskError};
pub use scheduler::WorkerStats;
pub use worker::with_state;

/// Most chunks one worker may hold at once: one running, the rest
/// waiting in its socket so it never waits for the next. Only quick chunks
/// queue up so (see the scheduler).
const DEPTH: usize = 64;

/// Default of [`PoolBuilder::max_failed_starts`].
pub const DEFAULT_MAX_FAILED_STARTS: u32 = 10;

fn no_initializer(_: ()) -> Result<(), Infallible> {
    Ok(())
}

/// Configures a [`Pool`] before starting it.
///
/// `I` is the initializer's argument, `S` the per-worker state it builds,
/// `E` its error.
#[must_use = "a builder does nothing until `build` is called"]
pub struct PoolBuilder<I = (), S = (), E = Infallible> {
    workers: Option<usize>,
    method: Option<StartMethod>,
    max_tasks_per_child: Option<u64>,
    memory_limit: Option<u64>,
    task_timeout: Option<Duration>,
    max_failed_starts: u32,
    initializer: fn(I) -> Result<S, E>,
    init_arg: I,
}

impl<I, S, E> fmt::Debug for PoolBuilder<I, S, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolBuilder")
            .field("workers", &self.workers)
            .field("method", &self.method)
            .field("max_tasks_per_child", &self.max_tasks_per_child)
            .field("memory_limit", &self.memory_limit)
            .field("task_timeout", &self.task_timeout)
            .field("max_failed_starts", &self.max_failed_starts)
            .finish_non_exhaustive()
    }
}

impl Default for PoolBuilder {
    fn default() -> Self {
        PoolBuilder {
            workers: None,
            method: None,
            max_tasks_per_child: None,
            memory_limit: None,
            task_timeout: None,
            max_failed_starts: DEFAULT_MAX_FAILED_STARTS,
            initializer: no_initializer,
            init_arg: (),
        }
    }
}

impl<I, S, E> PoolBuilder<I, S, E>
where
    I: Serialize + DeserializeOwned + Send + Sync + 'static,
    S: 'static,
    E: Display + 'static,
{
    /// Number of worker processes (default: [`cpu_count`](crate::cpu_count)).
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = Some(n);
        self
    }

    /// How workers are started (default: [`get_start_method`]).
    pub fn start_method(mut self, method: StartMethod) -> Self {
        self.method = Some(method);
        self
    }

    /// A worker exits after this many items and is replaced (Python's
    /// `maxtasksperchild`, counted in items rather than chunks).
    pub fn max_tasks_per_child(mut self, n: u64) -> Self {
        self.max_tasks_per_child = Some(n);
        self
    }

    /// A worker whose resident memory passes `bytes` after an item is
    /// replaced; the rest of its chunk goes to another worker. Checked
    /// after each item, at most every 5 ms, so one item can overshoot.
    pub fn memory_limit(mut self, bytes: u64) -> Self {
        self.memory_limit = Some(bytes);
        self
    }

    /// The default timeout of every item (see [`TaskOptions::timeout`]).
    pub fn task_timeout(mut self, timeout: Duration) -> Self {
        self.task_timeout = Some(timeout);
        self
    }

    /// How many processes in a row may die before they are ready in one
    /// worker's place and still be replaced (default
    /// [`DEFAULT_MAX_FAILED_STARTS`]); one more breaks the pool.
    ///
    /// A worker that dies before it is ready, without its initializer
    /// returning an error or panicking, was killed while starting (by a
    /// user, the OOM killer) or crashed in the initializer (`abort`, a
    /// segfault, `exit`): the pool cannot tell which, so it starts it
    /// again. Only when the same place fails this many times in a row
    /// (no process in it becoming ready in between) is it a restart storm:
    /// [`build`](Self::build) returns [`PoolError::WorkerLost`], or, later,
    /// the pool is broken ([`TaskError::Broken`] says how many times, in
    /// how long, and how the last one ended). Kills at random instants
    /// of a working pool do not add up to that: each process that
    /// becomes ready starts the count again. `0` breaks the pool at the
    /// first worker that dies before it is ready.
    pub fn max_failed_starts(mut self, n: u32) -> Self {
        self.max_failed_starts = n;
        self
    }

    /// Runs `f(arg)` once in every worker before its first task. What it
    /// returns is the worker's state, reached from tasks through
    /// [`with_state`]. If it fails (returns an error or panics), the pool
    /// does not start: [`build`](Self::build) returns
    /// [`PoolError::Initializer`] with the message; in a replacement
    /// later, the pool is broken ([`TaskError::Broken`]): it would fail
    /// again. A worker that dies in it otherwise (killed, `abort`) is
    /// started again (see [`max_failed_starts`](Self::max_failed_starts)).
    /// `arg` may hold handles (a [`Queue`](crate::Queue), a
    /// [`Lock`](crate::Lock)...): every worker, and every replacement, gets
    /// its own.
    pub fn initializer<I2, S2, E2>(
        self,
        f: fn(I2) -> Result<S2, E2>,
        arg: I2,
    ) -> PoolBuilder<I2, S2, E2> {
        PoolBuilder {
            workers: self.workers,
            method: self.method,
            max_tasks_per_child: self.max_tasks_per_child,
            memory_limit: self.memory_limit,
            task_timeout: self.task_timeout,
            max_failed_starts: self.max_failed_starts,
            initializer: f,
            init_arg: arg,
        }
    }

    /// Starts the workers and waits until each has run its initializer.
    pub fn build(self) -> Result<Pool, PoolError> {
        let workers = self.workers.unwrap_or_else(crate::cpu_count);
        if workers == 0 {
            return Err(PoolError::Invalid("a pool needs at least one worker"));
        }
        if self.max_tasks_per_child == Some(0) {
            return Err(PoolError::Invalid("max_tasks_per_child must be at least 1"));
        }
        let method = self.method.unwrap_or_else(get_start_method);
        let (init, arg) = (self.initializer, self.init_arg);
        let (max_tasks, memory_limit) = (self.max_tasks_per_child, self.memory_limit);
        let spawner: Spawner = Box::new(move |index, slots| {
            let (ours, link) = CallLink::pair()?;
            // Recorded before the fork, so a forked worker closes it.
            let ours = TrackedFd::new(ours);
            let setup = worker::Setup {
                link,
                slots: slots.clone(),
                init: &arg,
                max_tasks,
                memory_limit,
            };
            let process = Process::builder()
                .name(format!("PoolWorker-{index}"))
                .daemon(true)
                .start_method(method)
                .spawn_with_body(init, worker::worker_body::<I, S, E>, &setup)?;
            Ok((process, ours))
        });
        let shared = Shared::new(workers, DEPTH, self.max_failed_starts, method, spawner)?;
        let runner = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("multiproc-pool".into())
            .spawn(move || runner.run())
            .map_err(PoolError::Io)?;
        let local = Local {
            shared,
            thread: std::sync::Mutex::new(Some(thread)),
            workers,
        };
        if let Err(e) = local.shared.wait_started() {
            local.terminate();
            return Err(e);
        }
        Ok(Pool::with_backend(Arc::new(local), self.task_timeout))
    }
}

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
    backend: Arc<dyn Backend>,
    callbacks: Arc<Runner>,
    task_timeout: Option<Duration>,
    /// Set once the backend was joined or terminated.
    stopped: bool,
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
    #[cfg(feature = "cluster")]
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

    fn stop(&mut self) {
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
    pool: &'p Pool,
    f: fn(A) -> R,
    chunksize: Option<usize>,
    timeout: Option<Duration>,
    progress: Option<indicatif::ProgressBar>,
}

impl<A, R> fmt::Debug for TaskOptions<'_, A, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskOptions")
            .field("chunksize", &self.chunksize)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl<'p, A, R> TaskOptions<'p, A, R>
where
    A: Serialize + DeserializeOwned + 'static,
    R: Serialize + DeserializeOwned + Send + 'static,
{
    /// Items per task (default: automatic, see the module docs).
    pub fn chunksize(mut self, n: usize) -> Self {
        self.chunksize = Some(n);
        self
    }

    /// Kills a worker whose item runs longer than `timeout`: the item
    /// fails with [`TaskError::TimedOut`], the worker is replaced. Items
    /// then go one per task unless a chunk size is given.
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
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec}, eta {eta})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        self.progress_bar(bar)
    }

    /// Counts finished items on `bar`, whose length is set as
    /// [`progress`](Self::progress) says.
    pub fn progress_bar(mut self, bar: indicatif::ProgressBar) -> Self {
        self.progress = Some(bar);
        self
    }

    fn feeder<It: Iterator<Item = A>>(
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
        if let (Some(bar), Some(len)) = (&self.progress, known) {
            bar.set_length(len as u64);
        }
        let job = Arc::new(Job::new(ordered, fail_fast, self.progress));
        Feeder {
            backend: Arc::clone(&self.pool.backend),
            preamble: EntryId::new(self.f, worker::chunk_body::<A, R>).preamble(),
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
            item_bytes: 8,
            sink: Arc::clone(&job) as Arc<dyn Sink>,
            job,
            workers: self.pool.backend.workers(),
        }
    }

    fn start_all(self, fail_fast: bool, items: impl IntoIterator<Item = A>) -> Arc<Job<R>> {
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
enum Items<I: Iterator> {
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
fn finish_progress<R>(job: &Job<R>) {
    job.finish_progress();
}

/// Encodes items into chunks and submits them.
struct Feeder<R, It: Iterator> {
    backend: Arc<dyn Backend>,
    preamble: [u8; PREAMBLE],
    chunker: Chunker,
    timeout: Option<Duration>,
    items: std::iter::Fuse<It>,
    next: usize,
    done: bool,
    /// Encoded bytes per item, as last seen: sizes the next chunk's buffer.
    item_bytes: usize,
    job: Arc<Job<R>>,
    sink: Arc<dyn Sink>,
    workers: usize,
}

impl<R, A, It> Feeder<R, It>
where
    It: Iterator<Item = A>,
    A: Serialize,
    R: DeserializeOwned + Send + 'static,
{
    /// Encodes up to `max_chunks` chunks (and at most `max_items` items)
    /// and submits them at once; seals the job at the end of the input.
    fn feed(&mut self, max_chunks: usize, max_items: usize) {
        let mut batch = Vec::new();
        let mut budget = max_items;
        while batch.len() < max_chunks && budget > 0 && !self.done {
            let size = self.chunker.size().min(budget);
            let mut bytes = Vec::with_capacity(size.min(1 << 20) * self.item_bytes);
            let mut ends = Vec::with_capacity(size.min(1 << 16));
            let mut failed: Option<EncodeError> = None;
            let mut enc = codec::Encoder::new(&mut bytes);
            while ends.len() < size && enc.len() < chunking::MAX_BYTES {
                let Some(item) = self.items.next() else {
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
                    first: self.next,
                    items: bytes,
                    ends,
                    timeout: self.timeout,
                    context: None,
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
    fn adapt(&mut self) {
        let (items, busy) = self.job.measured();
        self.chunker.observe(items, busy);
    }

    /// Items that may be submitted and not yet taken: enough to keep every
    /// worker busy, bounded so memory stays bounded.
    fn window(&self) -> usize {
        self.chunker.size() * self.workers * 32
    }
}

/// The results of [`Pool::imap`] or [`Pool::imap_unordered`], one per
/// item, as they come. Items are read from the input only as results are
/// taken. Dropping it drops the items not yet started.
pub struct Imap<R, It: Iterator> {
    feeder: Feeder<R, It>,
    /// Outcomes taken from the job in one go, handed out one by one.
    ready: VecDeque<Result<R, TaskError>>,
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
            f.adapt();
            let untaken = f.job.untaken();
            if !f.done && untaken < f.window() {
                let room = f.window() - untaken;
                f.feed(64, room);
                continue;
            }
            match f.job.take_ready(&mut self.ready) {
                Ok(true) => return self.ready.pop_front(),
                Ok(false) => {
                    finish_progress(&f.job);
                    return None;
                }
                Err(()) => f.job.wait_next(),
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
            f.adapt();
            let untaken = f.job.untaken();
            if !f.done && untaken < f.window() {
                let room = f.window() - untaken;
                f.feed(64, room);
                continue;
            }
            match f.job.take_ready(&mut this.ready) {
                Ok(true) => return Poll::Ready(this.ready.pop_front()),
                Ok(false) => {
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
    job: Arc<Job<R>>,
    backend: Arc<dyn Backend>,
    callbacks: Arc<Runner>,
    /// Given callbacks: the result, once they ran.
    after: Option<Arc<Slot<Result<R, TaskError>>>>,
}

impl<R> fmt::Debug for TaskHandle<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskHandle")
            .field("ready", &self.job.is_complete())
            .finish()
    }
}

impl<R: DeserializeOwned + Send + 'static> TaskHandle<R> {
    fn take(&self) -> Result<R, TaskError> {
        match &self.after {
            Some(slot) => {
                slot.wait(None);
                slot.take().unwrap_or(Err(TaskError::Cancelled))
            }
            None => take_one(&self.job),
        }
    }

    fn wait_until(&self, deadline: Option<std::time::Instant>) -> bool {
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
    /// [`GetTimeoutError::Timeout`] and the task goes on.
    pub fn get_timeout(self, timeout: Duration) -> Result<R, GetTimeoutError<Self>> {
        if self.wait_until(crate::shm::wait::after(timeout)) {
            self.take().map_err(GetTimeoutError::Failed)
        } else {
            Err(GetTimeoutError::Timeout(self))
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
fn take_one<R>(job: &Job<R>) -> Result<R, TaskError> {
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
    handle: Option<TaskHandle<R>>,
}

impl<R: DeserializeOwned + Send + 'static> fmt::Debug for CancelOnDrop<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CancelOnDrop")
            .field("handle", &self.handle)
            .finish()
    }
}

impl<R: DeserializeOwned + Send + 'static> CancelOnDrop<R> {
    fn take(&mut self) -> TaskHandle<R> {
        self.handle.take().expect("taken only by consuming methods")
    }

    /// Waits for the result (see [`TaskHandle::get`]).
    pub fn get(mut self) -> Result<R, TaskError> {
        self.take().get()
    }

    /// Waits at most `timeout`; on timeout the guard comes back, still
    /// armed, in [`GetTimeoutError::Timeout`].
    pub fn get_timeout(mut self, timeout: Duration) -> Result<R, GetTimeoutError<Self>> {
        match self.take().get_timeout(timeout) {
            Ok(v) => Ok(v),
            Err(GetTimeoutError::Failed(e)) => Err(GetTimeoutError::Failed(e)),
            Err(GetTimeoutError::Timeout(h)) => Err(GetTimeoutError::Timeout(h.cancel_on_drop())),
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
    notifier: Arc<Notifier>,
    handles: Vec<Option<TaskHandle<R>>>,
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

/// Where a map's results wait once its callbacks ran.
type MapSlot<R> = Arc<Slot<Result<Vec<R>, TaskError>>>;

/// The results of [`Pool::map_async`].
pub struct MapHandle<R> {
    job: Arc<Job<R>>,
    callbacks: Arc<Runner>,
    /// Given callbacks: the results, once they ran.
    after: Option<MapSlot<R>>,
}

impl<R> fmt::Debug for MapHandle<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MapHandle")
            .field("ready", &self.job.is_complete())
            .finish()
    }
}

impl<R: DeserializeOwned + Send + 'static> MapHandle<R> {
    fn take(&self) -> Result<Vec<R>, TaskError> {
        match &self.after {
            Some(slot) => {
                slot.wait(None);
                slot.take().unwrap_or(Err(TaskError::Cancelled))
            }
            None => self.job.take_values(),
        }
    }

    fn wait_until(&self, deadline: Option<std::time::Instant>) -> bool {
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
    pub fn get_timeout(self, timeout: Duration) -> Result<Vec<R>, GetTimeoutError<Self>> {
        if self.wait_until(crate::shm::wait::after(timeout)) {
            self.take().map_err(GetTimeoutError::Failed)
        } else {
            Err(GetTimeoutError::Timeout(self))
        }
    }

    /// Waits until every result is ready (or one failed).
    pub fn wait(&self) {
        self.wait_until(None);
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
