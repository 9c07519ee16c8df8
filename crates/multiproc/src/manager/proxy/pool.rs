//! [`PoolProxy`]: a pool of worker processes that lives in the manager's
//! server (Python's `SyncManager.Pool()`).
//!
//! The proxy is a [`Pool`] front end (the same handles: `map`, `imap`,
//! `submit`, callbacks, cancellation) whose chunks go to the manager
//! instead of local workers ([`Remote`], a pool backend). A chunk names
//! its function by the name `#[multiproc::task]` registered; the server
//! runs it in its own pool and keeps the outcomes until a thread of this
//! process collects them (a long poll, running only while chunks are
//! out). See `manager/server/pool.rs` for the server's half.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::super::client::{Link, unexpected};
use super::super::error::ProxyError;
use super::super::protocol::{
    Blob, Kind, Op, Payload, PoolChunk, PoolInfo, PoolOp, PoolPart, PoolSpec, PoolStats,
};
use super::super::server::lock;
use super::{Handle, dec, millis, unit};
use crate::pool::backend::Backend;
use crate::pool::job::Sink;
use crate::pool::registry::{self, Lookup};
use crate::pool::scheduler::{Chunk, WorkerStats};
use crate::pool::{Imap, MapHandle, Pool, TaskError, TaskHandle, TaskOptions};
use crate::process::StartMethod;
use crate::sys::futex;
use crate::wire::EncodeError;

/// How long one collect waits on the server for an outcome.
const COLLECT_MS: u64 = 500;

/// How long one join request waits on the server.
const JOIN_SLICE_MS: u64 = 1000;

/// A pool of worker processes in a manager's server (Python:
/// `manager.Pool(n)`), which every process holding a proxy can use.
///
/// Made by [`Manager::pool`](crate::Manager::pool) or
/// [`Manager::pool_builder`](crate::Manager::pool_builder). It has the
/// methods of a [`Pool`] (`map`, `imap`, `apply`, `submit`, ..., with the
/// same handles), and is an ordinary argument for a child, like any proxy.
/// The functions it runs must be marked `#[multiproc::task]`: the server,
/// which may serve clients of other programs, runs only functions it finds
/// by name in its own table, and only for a client of the same build
/// (otherwise [`TaskError::NotRegistered`] or
/// [`TaskError::BuildMismatch`]). A worker that dies, panics or times out
/// fails its item as in a local pool.
///
/// [`close`](Self::close), [`join`](Self::join) and
/// [`terminate`](Self::terminate) act on the pool in the server, for
/// every client. The pool lives while any process holds a proxy of it;
/// dropping this process's last proxy stops this process's unfinished
/// tasks (they fail with [`TaskError::Terminated`]), and a client that
/// dies or disconnects has its tasks stopped too.
///
/// ```
/// use multiproc::Manager;
///
/// #[multiproc::task]
/// fn square(x: u64) -> u64 {
///     x * x
/// }
///
/// let manager = Manager::start()?;
/// let pool = manager.pool(2)?;
/// assert_eq!(pool.map(square, 1..=4)?, [1, 4, 9, 16]);
/// assert_eq!(pool.submit(square, 12).get()?, 144);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct PoolProxy {
    front: Arc<Front>,
}

/// This process's front end on one pool of the server.
struct Front {
    /// The handles' front end; `None` once dropped.
    pool: Option<Pool>,
    remote: Arc<Remote>,
    /// The reference on the server's object; dropped after `pool`.
    handle: Handle,
    /// The process that made it: a copy in a forked child drops nothing.
    pid: u32,
}

impl Drop for Front {
    fn drop(&mut self) {
        let pool = self.pool.take();
        if self.pid == futex::pid() {
            // Stops this process's unfinished tasks (`Remote::terminate`).
            drop(pool);
        } else {
            std::mem::forget(pool);
        }
    }
}

impl fmt::Debug for PoolProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolProxy")
            .field("manager", self.front.handle.link().address())
            .field("id", &self.front.handle.id())
            .field("workers", &self.front.remote.info.workers)
            .finish()
    }
}

impl Clone for PoolProxy {
    /// Another proxy of the same pool, sharing this one's connection and
    /// its front end (no round trip).
    fn clone(&self) -> Self {
        PoolProxy {
            front: Arc::clone(&self.front),
        }
    }
}

impl Serialize for PoolProxy {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.front.handle.serialize(s)
    }
}

impl<'de> Deserialize<'de> for PoolProxy {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let handle = Handle::deserialize(d)?;
        PoolProxy::attach(handle).map_err(|e| {
            crate::wire::codec::custom(format!("cannot attach to a manager pool: {e}"))
        })
    }
}

impl PoolProxy {
    /// The proxy of the pool behind `handle`.
    fn attach(handle: Handle) -> Result<PoolProxy, ProxyError> {
        // Built now, before this process forks children that may use them.
        registry::registry();
        registry::build_fingerprint();
        let info: PoolInfo = match handle.call(Op::Pool(PoolOp::Info))? {
            Payload::Value(b) => dec(&b)?,
            other => return Err(unexpected(&other)),
        };
        let mut stream = [0u8; 8];
        getrandom::fill(&mut stream).map_err(|e| ProxyError::Io(std::io::Error::other(e)))?;
        let remote = Arc::new_cyclic(|this| Remote {
            this: this.clone(),
            handle: handle.unowned(),
            info: info.clone(),
            state: Mutex::new(RemoteState {
                pid: futex::pid(),
                stream: u64::from_le_bytes(stream),
                pending: HashMap::new(),
                collector: None,
                stopped: false,
            }),
        });
        let pool = Pool::with_backend(
            Arc::clone(&remote) as Arc<dyn Backend>,
            info.task_timeout_ns.map(Duration::from_nanos),
        );
        Ok(PoolProxy {
            front: Arc::new(Front {
                pool: Some(pool),
                remote,
                handle,
                pid: futex::pid(),
            }),
        })
    }

    fn pool(&self) -> &Pool {
        self.front.pool.as_ref().expect("set until dropped")
    }

    /// The object's id on its manager.
    pub fn id(&self) -> u64 {
        self.front.handle.id()
    }

    /// The number of worker processes.
    pub fn workers(&self) -> usize {
        self.pool().workers()
    }

    /// How the server starts the workers.
    pub fn start_method(&self) -> StartMethod {
        self.pool().start_method()
    }

    /// Per-worker statistics, as the server's pool counts them.
    pub fn stats(&self) -> Result<Vec<WorkerStats>, ProxyError> {
        self.front.remote.fetch_stats()
    }

    /// Options for running `f`: chunk size, timeout, progress bar (see
    /// [`Pool::task`]).
    pub fn task<A, R>(&self, f: fn(A) -> R) -> TaskOptions<'_, A, R> {
        self.pool().task(f)
    }

    /// `f` over every item, results in order; the first failure is the
    /// error (see [`Pool::map`]).
    pub fn map<A, R>(
        &self,
        f: fn(A) -> R,
        items: impl IntoIterator<Item = A>,
    ) -> Result<Vec<R>, TaskError>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.pool().map(f, items)
    }

    /// `f` over every item, each item's own outcome in order (see
    /// [`Pool::map_results`]).
    pub fn map_results<A, R>(
        &self,
        f: fn(A) -> R,
        items: impl IntoIterator<Item = A>,
    ) -> Vec<Result<R, TaskError>>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.pool().map_results(f, items)
    }

    /// Python's `starmap`: [`map`](Self::map) over tuples.
    pub fn starmap<A, R>(
        &self,
        f: fn(A) -> R,
        items: impl IntoIterator<Item = A>,
    ) -> Result<Vec<R>, TaskError>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.pool().starmap(f, items)
    }

    /// A lazy, ordered map (see [`Pool::imap`]).
    pub fn imap<A, R, It>(&self, f: fn(A) -> R, items: It) -> Imap<R, It::IntoIter>
    where
        It: IntoIterator<Item = A>,
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.pool().imap(f, items)
    }

    /// Like [`imap`](Self::imap), results in the order they finish.
    pub fn imap_unordered<A, R, It>(&self, f: fn(A) -> R, items: It) -> Imap<R, It::IntoIter>
    where
        It: IntoIterator<Item = A>,
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.pool().imap_unordered(f, items)
    }

    /// Runs `f(arg)` in a worker and waits for it (Python's `apply`).
    pub fn apply<A, R>(&self, f: fn(A) -> R, arg: A) -> Result<R, TaskError>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.pool().apply(f, arg)
    }

    /// Starts `f(arg)` in a worker (Python's `apply_async`; see
    /// [`Pool::apply_async`] for callbacks).
    pub fn apply_async<A, R>(&self, f: fn(A) -> R, arg: A) -> TaskHandle<R>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.pool().apply_async(f, arg)
    }

    /// Starts `f(arg)` in a worker; the handle waits, or is awaited (see
    /// [`Pool::submit`]).
    pub fn submit<A, R>(&self, f: fn(A) -> R, arg: A) -> TaskHandle<R>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.pool().submit(f, arg)
    }

    /// Starts `f` over every item and returns at once (Python's
    /// `map_async`).
    pub fn map_async<A, R>(&self, f: fn(A) -> R, items: impl IntoIterator<Item = A>) -> MapHandle<R>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.pool().map_async(f, items)
    }

    /// Python's `starmap_async`: [`map_async`](Self::map_async) over
    /// tuples.
    pub fn starmap_async<A, R>(
        &self,
        f: fn(A) -> R,
        items: impl IntoIterator<Item = A>,
    ) -> MapHandle<R>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.pool().starmap_async(f, items)
    }

    /// The pool takes no more tasks, from any client; what is queued still
    /// runs (Python's `close`). Later submissions fail with
    /// [`TaskError::Closed`].
    pub fn close(&self) -> Result<(), ProxyError> {
        unit(self.front.handle.call(Op::Pool(PoolOp::Close))?)
    }

    /// Closes the pool, waits until every client's queued tasks are done,
    /// and stops the workers (Python's `close` then `join`).
    pub fn join(&self) -> Result<(), ProxyError> {
        while !self.join_for(JOIN_SLICE_MS)? {}
        Ok(())
    }

    /// [`join`](Self::join), waiting at most `timeout`: whether the tasks
    /// were all done (the pool stays closed either way).
    pub fn join_timeout(&self, timeout: Duration) -> Result<bool, ProxyError> {
        self.join_for(millis(timeout))
    }

    fn join_for(&self, ms: u64) -> Result<bool, ProxyError> {
        match self.front.handle.call(Op::Pool(PoolOp::Join(Some(ms))))? {
            Payload::Bool(b) => Ok(b),
            other => Err(unexpected(&other)),
        }
    }

    /// Stops the pool now, for every client: queued and running tasks fail
    /// with [`TaskError::Terminated`] and the workers are killed (Python's
    /// `terminate`).
    pub fn terminate(&self) -> Result<(), ProxyError> {
        unit(self.front.handle.call(Op::Pool(PoolOp::Terminate))?)
    }
}

/// Configures a pool that a manager will serve; made by
/// [`Manager::pool_builder`](crate::Manager::pool_builder). The settings
/// are those of [`PoolBuilder`](crate::PoolBuilder) that make sense in
/// another process (no initializer: it would have to be a registered
/// task too).
///
/// ```
/// use std::time::Duration;
/// use multiproc::{Manager, StartMethod, TaskError};
///
/// #[multiproc::task]
/// fn nap(ms: u64) -> u64 {
///     std::thread::sleep(Duration::from_millis(ms));
///     ms
/// }
///
/// let manager = Manager::start()?;
/// let pool = manager
///     .pool_builder()
///     .workers(2)
///     .start_method(StartMethod::Spawn)
///     .task_timeout(Duration::from_millis(500))
///     .build()?;
/// let out = pool.map_results(nap, [1, 60_000]);
/// assert_eq!(out[0], Ok(1));
/// assert!(matches!(out[1], Err(TaskError::TimedOut(_))));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use = "a builder does nothing until `build` is called"]
pub struct PoolProxyBuilder<'m> {
    link: &'m Arc<Link>,
    spec: PoolSpec,
}

impl fmt::Debug for PoolProxyBuilder<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolProxyBuilder")
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

impl<'m> PoolProxyBuilder<'m> {
    pub(crate) fn new(link: &'m Arc<Link>) -> Self {
        PoolProxyBuilder {
            link,
            spec: PoolSpec {
                max_failed_starts: crate::pool::DEFAULT_MAX_FAILED_STARTS,
                ..PoolSpec::default()
            },
        }
    }

    /// Number of worker processes (default: the server's processor count;
    /// 0 is [`RemoteError::PoolStart`](crate::RemoteError::PoolStart)).
    pub fn workers(mut self, n: usize) -> Self {
        self.spec.workers = Some(n as u64);
        self
    }

    /// How the server starts the workers (default: its default).
    pub fn start_method(mut self, method: StartMethod) -> Self {
        self.spec.method = Some(method);
        self
    }

    /// See [`PoolBuilder::max_tasks_per_child`](crate::PoolBuilder::max_tasks_per_child).
    pub fn max_tasks_per_child(mut self, n: u64) -> Self {
        self.spec.max_tasks_per_child = Some(n);
        self
    }

    /// See [`PoolBuilder::memory_limit`](crate::PoolBuilder::memory_limit).
    pub fn memory_limit(mut self, bytes: u64) -> Self {
        self.spec.memory_limit = Some(bytes);
        self
    }

    /// The default timeout of every item, for every client (see
    /// [`TaskOptions::timeout`]).
    pub fn task_timeout(mut self, timeout: Duration) -> Self {
        self.spec.task_timeout_ns = Some(u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX));
        self
    }

    /// See [`PoolBuilder::max_failed_starts`](crate::PoolBuilder::max_failed_starts).
    pub fn max_failed_starts(mut self, n: u32) -> Self {
        self.spec.max_failed_starts = n;
        self
    }

    /// Starts the pool in the server and waits until its workers are
    /// ready. A pool that cannot start is
    /// [`RemoteError::PoolStart`](crate::RemoteError::PoolStart).
    pub fn build(self) -> Result<PoolProxy, ProxyError> {
        let handle = Handle::create(self.link, Kind::Pool(self.spec))?;
        PoolProxy::attach(handle)
    }
}

/// A chunk sent to the server and not settled yet.
struct Pending {
    sink: Arc<dyn Sink>,
    first: usize,
    /// Which of its items have an outcome.
    done: Vec<bool>,
    left: usize,
}

impl Pending {
    /// Marks items `first..first + count` settled; false if any is not of
    /// this chunk or was settled already.
    fn settle(&mut self, first: usize, count: usize) -> bool {
        let Some(at) = first.checked_sub(self.first) else {
            return false;
        };
        let Some(range) = self.done.get_mut(at..at.saturating_add(count)) else {
            return false;
        };
        if range.len() != count || range.iter().any(|d| *d) {
            return false;
        }
        range.iter_mut().for_each(|d| *d = true);
        self.left -= count;
        true
    }

    /// The items without an outcome.
    fn unsettled(&self) -> impl Iterator<Item = usize> + '_ {
        self.done
            .iter()
            .enumerate()
            .filter(|(_, d)| !**d)
            .map(|(i, _)| self.first + i)
    }
}

struct RemoteState {
    /// The process whose stream this is: a forked child starts its own.
    pid: u32,
    stream: u64,
    pending: HashMap<u64, Pending>,
    /// The collecting thread, while chunks are out.
    collector: Option<JoinHandle<()>>,
    /// The front end was dropped.
    stopped: bool,
}

/// The pool backend of a [`PoolProxy`]: chunks go to the manager.
pub(crate) struct Remote {
    this: Weak<Remote>,
    /// Holds no reference: the [`Front`] does.
    handle: Handle,
    info: PoolInfo,
    state: Mutex<RemoteState>,
}

/// Fails items `indices` of `sink` with `e`.
fn fail_all(sink: &dyn Sink, indices: impl IntoIterator<Item = usize>, e: &TaskError) {
    for i in indices {
        sink.fail(i, e.clone());
    }
}

impl Remote {
    /// The state, reset in a forked child (which shares the parent's
    /// stream and chunks only by accident of the copy).
    fn lock(&self) -> MutexGuard<'_, RemoteState> {
        let mut st = lock(&self.state);
        let me = futex::pid();
        if st.pid != me {
            let mut stream = [0u8; 8];
            let _ = getrandom::fill(&mut stream);
            st.pid = me;
            st.stream = u64::from_le_bytes(stream) ^ u64::from(me);
            // The parent's: never waited for here, never joined.
            std::mem::forget(std::mem::take(&mut st.pending));
            std::mem::forget(st.collector.take());
        }
        st
    }

    fn fetch_stats(&self) -> Result<Vec<WorkerStats>, ProxyError> {
        let stats: Vec<PoolStats> = match self.handle.call(Op::Pool(PoolOp::Stats))? {
            Payload::Value(b) => dec(&b)?,
            other => return Err(unexpected(&other)),
        };
        Ok(stats
            .into_iter()
            .map(|s| WorkerStats {
                index: usize::try_from(s.index).unwrap_or(usize::MAX),
                pid: s.pid,
                tasks_done: s.tasks_done,
                busy: Duration::from_nanos(s.busy_ns),
                idle: Duration::from_nanos(s.idle_ns),
                restarts: s.restarts,
                ready: s.ready,
            })
            .collect())
    }

    /// The wire form of a chunk, or the error all its items get.
    fn wire_chunk(chunk: Chunk) -> Result<PoolChunk, TaskError> {
        let task = match registry::registry().by_entry(&chunk.preamble, chunk.key) {
            Ok(t) => t,
            Err(Lookup::NotRegistered) => {
                return Err(TaskError::NotRegistered(
                    "a manager's pool runs only functions marked #[multiproc::task], and none \
                     with these argument and result types names this one"
                        .into(),
                ));
            }
            Err(Lookup::Duplicate(name)) => {
                return Err(TaskError::NotRegistered(format!(
                    "two functions are registered as {name:?}: give one another name"
                )));
            }
        };
        Ok(PoolChunk {
            id: chunk.id,
            name: task.name.to_owned(),
            signature: task.signature.clone(),
            first: chunk.first as u64,
            items: Blob(chunk.items),
            ends: chunk.ends.offsets().into_iter().map(|e| e as u64).collect(),
            timeout_ns: chunk
                .timeout
                .map(|t| u64::try_from(t.as_nanos()).unwrap_or(u64::MAX)),
        })
    }

    /// Sends chunks, as few requests as the manager's request limit
    /// allows; returns the chunks that could not be sent, with why.
    fn send(&self, stream: u64, chunks: Vec<PoolChunk>) -> Vec<(Vec<u64>, TaskError)> {
        // Room for everything around the items (names, ends, framing).
        let room = |c: &PoolChunk| c.items.0.len() + c.ends.len() * 10 + c.name.len() + 128;
        let limit = usize::try_from(self.handle.link().max_request()).unwrap_or(usize::MAX);
        let mut failed = Vec::new();
        let mut batch: Vec<PoolChunk> = Vec::new();
        let mut size = 0usize;
        let mut chunks = chunks.into_iter().peekable();
        while let Some(c) = chunks.next() {
            size = size.saturating_add(room(&c));
            batch.push(c);
            let full = chunks
                .peek()
                .is_none_or(|next| size.saturating_add(room(next)) > limit / 2);
            if full {
                if let Err(f) = self.send_one(stream, std::mem::take(&mut batch)) {
                    failed.push(f);
                }
                size = 0;
            }
        }
        failed
    }

    fn send_one(&self, stream: u64, chunks: Vec<PoolChunk>) -> Result<(), (Vec<u64>, TaskError)> {
        let ids: Vec<u64> = chunks.iter().map(|c| c.id).collect();
        let op = Op::Pool(PoolOp::Submit {
            stream,
            build: registry::build_fingerprint().to_owned(),
            chunks,
        });
        match self.handle.call(op) {
            Ok(Payload::Unit) => Ok(()),
            Ok(other) => Err((ids, TaskError::Protocol(unexpected(&other).to_string()))),
            Err(ProxyError::TooLarge { len, limit }) => Err((
                ids,
                TaskError::ArgumentEncode(EncodeError {
                    type_name: "manager pool task",
                    message: format!(
                        "a request of {len} bytes is more than the manager accepts ({limit} \
                         bytes): use a smaller chunk size, or pass a path"
                    ),
                }),
            )),
            Err(e) => Err((ids, TaskError::Backend(e.to_string()))),
        }
    }

    /// Starts the collecting thread if it is not running.
    fn ensure_collector(&self, st: &mut RemoteState) {
        if st.collector.as_ref().is_some_and(|c| !c.is_finished()) {
            return;
        }
        let Some(me) = self.this.upgrade() else {
            return;
        };
        st.collector = std::thread::Builder::new()
            .name("multiproc-manager-pool".into())
            .spawn(move || me.collect())
            .ok();
    }

    /// Takes the chunks that were cancelled or abandoned here: returns the
    /// ids to forget, the ids to cancel, and the cancelled chunks (whose
    /// unsettled items fail with `Cancelled` here, at once).
    fn take_dropped(st: &mut RemoteState) -> (Vec<u64>, Vec<u64>, Vec<Pending>) {
        let mut forget = Vec::new();
        let mut cancel = Vec::new();
        let mut cancelled = Vec::new();
        let ids: Vec<u64> = st
            .pending
            .iter()
            .filter(|(_, p)| p.sink.cancelled() || p.sink.abandoned())
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            let p = st.pending.remove(&id).expect("listed");
            if p.sink.cancelled() {
                cancel.push(id);
                cancelled.push(p);
            } else {
                forget.push(id);
            }
        }
        (forget, cancel, cancelled)
    }

    /// The collecting thread: long polls the server while chunks are out.
    fn collect(&self) {
        loop {
            let (stream, forget, cancel, cancelled) = {
                let mut st = self.lock();
                if st.stopped || st.pending.is_empty() {
                    return;
                }
                let (f, c, p) = Remote::take_dropped(&mut st);
                (st.stream, f, c, p)
            };
            for p in &cancelled {
                fail_all(&*p.sink, p.unsettled(), &TaskError::Cancelled);
            }
            let op = Op::Pool(PoolOp::Collect {
                stream,
                forget,
                cancel,
                timeout: Some(COLLECT_MS),
            });
            match self.handle.call(op) {
                Ok(Payload::Parts(parts)) => self.settle(parts),
                Ok(other) => self.fail_pending(TaskError::Protocol(unexpected(&other).to_string())),
                Err(e) => self.fail_pending(TaskError::Backend(e.to_string())),
            }
        }
    }

    /// Hands the outcomes to their jobs.
    fn settle(&self, parts: Vec<PoolPart>) {
        for part in parts {
            let (chunk, first, count) = match &part {
                PoolPart::Values {
                    chunk,
                    first,
                    count,
                    ..
                } => (*chunk, *first, *count),
                PoolPart::Failed { chunk, index, .. } => (*chunk, *index, 1),
            };
            let (Ok(first), Ok(count)) = (usize::try_from(first), usize::try_from(count)) else {
                continue;
            };
            let sink = {
                let mut st = self.lock();
                let Some(p) = st.pending.get_mut(&chunk) else {
                    // Forgotten, cancelled, or not ours: nobody waits.
                    continue;
                };
                if !p.settle(first, count) {
                    continue;
                }
                let sink = Arc::clone(&p.sink);
                if p.left == 0 {
                    st.pending.remove(&chunk);
                }
                sink
            };
            match part {
                PoolPart::Values {
                    plain,
                    bytes,
                    busy_ns,
                    ..
                } => sink.deliver(
                    first,
                    count,
                    usize::try_from(plain).unwrap_or(usize::MAX).min(count),
                    &bytes.0,
                    Duration::from_nanos(busy_ns),
                ),
                PoolPart::Failed { failure, .. } => sink.fail(first, failure.into_task_error()),
            }
        }
    }

    /// Fails every chunk out with `e` (the manager is gone, or the
    /// stream), and starts a new stream for the next ones.
    fn fail_pending(&self, e: TaskError) {
        let pending = {
            let mut st = self.lock();
            let mut stream = [0u8; 8];
            let _ = getrandom::fill(&mut stream);
            st.stream = u64::from_le_bytes(stream);
            std::mem::take(&mut st.pending)
        };
        for p in pending.values() {
            fail_all(&*p.sink, p.unsettled(), &e);
        }
    }
}

impl Backend for Remote {
    fn method(&self) -> StartMethod {
        self.info.method
    }

    fn workers(&self) -> usize {
        usize::try_from(self.info.workers).unwrap_or(usize::MAX)
    }

    fn stats(&self) -> Vec<WorkerStats> {
        self.fetch_stats().unwrap_or_default()
    }

    fn submit(&self, chunks: Vec<Chunk>) -> Result<(), TaskError> {
        let mut wire = Vec::with_capacity(chunks.len());
        let stream = {
            let mut st = self.lock();
            if st.stopped {
                return Err(TaskError::Terminated);
            }
            for chunk in chunks {
                let sink = Arc::clone(&chunk.sink);
                let (first, count) = (chunk.first, chunk.ends.len());
                match Remote::wire_chunk(chunk) {
                    Ok(c) => {
                        // Pending before sent: the collector may see its
                        // outcomes before the submit returns.
                        st.pending.insert(
                            c.id,
                            Pending {
                                sink,
                                first,
                                done: vec![false; count],
                                left: count,
                            },
                        );
                        wire.push(c);
                    }
                    Err(e) => fail_all(&*sink, first..first + count, &e),
                }
            }
            if wire.is_empty() {
                return Ok(());
            }
            st.stream
        };
        let failed = self.send(stream, wire);
        // Started once the server has the stream (a submit makes it).
        self.ensure_collector(&mut self.lock());
        for (ids, e) in failed {
            let taken: Vec<Pending> = {
                let mut st = self.lock();
                ids.iter().filter_map(|id| st.pending.remove(id)).collect()
            };
            for p in taken {
                fail_all(&*p.sink, p.unsettled(), &e);
            }
        }
        Ok(())
    }

    fn cancelled(&self) {
        // Only the cancelled ones now; the collector forgets the abandoned
        // ones on its next round.
        let (stream, cancel, cancelled) = {
            let mut st = self.lock();
            let ids: Vec<u64> = st
                .pending
                .iter()
                .filter(|(_, p)| p.sink.cancelled())
                .map(|(id, _)| *id)
                .collect();
            let cancelled: Vec<Pending> =
                ids.iter().filter_map(|id| st.pending.remove(id)).collect();
            (st.stream, ids, cancelled)
        };
        for p in &cancelled {
            fail_all(&*p.sink, p.unsettled(), &TaskError::Cancelled);
        }
        if !cancel.is_empty() {
            let _ = self.handle.call(Op::Pool(PoolOp::Cancel {
                stream,
                chunks: cancel,
            }));
        }
    }

    fn close(&self) {
        let _ = self.handle.call(Op::Pool(PoolOp::Close));
    }

    fn join(&self) {
        while let Ok(Payload::Bool(false)) = self
            .handle
            .call(Op::Pool(PoolOp::Join(Some(JOIN_SLICE_MS))))
        {}
    }

    /// The front end was dropped: this process's unfinished tasks stop
    /// (the pool itself lives on for its other proxies).
    fn terminate(&self) {
        let (stream, pending, collector) = {
            let mut st = self.lock();
            if st.stopped {
                return;
            }
            st.stopped = true;
            (
                st.stream,
                std::mem::take(&mut st.pending),
                st.collector.take(),
            )
        };
        if !pending.is_empty() {
            // Also wakes the collector's long poll.
            let _ = self.handle.call(Op::Pool(PoolOp::EndStream(stream)));
        }
        if let Some(c) = collector
            && c.thread().id() != std::thread::current().id()
        {
            let _ = c.join();
        }
        for p in pending.values() {
            fail_all(&*p.sink, p.unsettled(), &TaskError::Terminated);
        }
    }
}
