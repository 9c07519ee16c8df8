//! A pool of worker processes that the manager hosts ([`PoolProxy`]
//! talks to it; Python's `SyncManager.Pool()`).
//!
//! The server owns an ordinary local [`Pool`]. A client names each task's
//! function by its registered name (`#[multiproc::task]`, see
//! `pool::registry`): the server looks the name up in its own table, checks
//! the signature and that the client runs the same build, and runs the
//! chunk under its own entry. Nothing a client sends becomes an address.
//!
//! Each client has a *stream*, a random number it picks: its chunks'
//! outcomes wait in the stream until it collects them
//! ([`PoolOp::Collect`], a long poll from a thread of the client's). A
//! client that leaves without saying so does not leave its work running:
//! a collect that finds its client gone ends the stream, and so does a
//! stream not heard from for [`STREAM_TTL`] (a reaper thread looks every
//! second). Ending a stream drops its queued chunks and kills the workers
//! running its items.
//!
//! [`PoolProxy`]: crate::PoolProxy

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::super::error::RemoteError;
use super::super::protocol::{
    Blob, Payload, PoolChunk, PoolFailure, PoolInfo, PoolOp, PoolPart, PoolSpec, PoolStats, Reply,
    TimeoutMs,
};
use super::super::transport::LIVENESS_SLICE;
use super::{Ctx, lock};
use crate::pool::backend::Backend;
use crate::pool::job::Sink;
use crate::pool::registry::{self, Lookup};
use crate::pool::scheduler::{self, Chunk, Ends};
use crate::pool::{Pool, TaskError};

/// How long a stream may go unheard (no submit, no collect) before its
/// work is stopped and its outcomes dropped.
pub(crate) const STREAM_TTL: Duration = Duration::from_secs(10);

/// How often the reaper looks for streams past [`STREAM_TTL`].
const REAP_EVERY: Duration = Duration::from_secs(1);

/// Most bytes of outcomes one collect answers with (at least one part).
const COLLECT_BYTES: usize = 8 << 20;

/// A pool the manager hosts.
pub(crate) struct PoolObject {
    /// `Some` until dropped: dropping it terminates the pool.
    pool: Option<Pool>,
    shared: Arc<Shared>,
    reaper: Option<JoinHandle<()>>,
    info: PoolInfo,
}

struct Shared {
    state: Mutex<State>,
    /// Outcomes arrived, chunks settled, streams ended, the object closing.
    changed: Condvar,
    backend: Arc<dyn Backend>,
}

#[derive(Default)]
struct State {
    streams: HashMap<u64, Stream>,
    /// The object is being dropped: the reaper stops.
    closing: bool,
}

struct Stream {
    parts: VecDeque<PoolPart>,
    /// Chunks whose items have not all settled.
    chunks: HashMap<u64, Arc<ChunkSink>>,
    /// When the client was last heard from.
    seen: Instant,
}

impl Stream {
    fn new() -> Stream {
        Stream {
            parts: VecDeque::new(),
            chunks: HashMap::new(),
            seen: Instant::now(),
        }
    }
}

/// Where the local pool puts one client chunk's outcomes: into its stream.
struct ChunkSink {
    shared: Weak<Shared>,
    stream: u64,
    chunk: u64,
    count: usize,
    /// Items settled so far (under the state's lock).
    settled: Mutex<usize>,
    /// Stop it: queued, it never runs; running, its worker is killed.
    kill: AtomicBool,
    /// Nobody waits for its outcomes any more.
    forgotten: AtomicBool,
}

impl ChunkSink {
    fn put(&self, part: PoolPart, items: usize) {
        if self.forgotten.load(Ordering::Acquire) {
            return;
        }
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        let mut st = shared.lock();
        let Some(stream) = st.streams.get_mut(&self.stream) else {
            return;
        };
        stream.parts.push_back(part);
        let mut settled = lock(&self.settled);
        *settled = settled.saturating_add(items);
        if *settled >= self.count {
            stream.chunks.remove(&self.chunk);
        }
        drop(settled);
        drop(st);
        shared.changed.notify_all();
    }

    fn stop(&self, kill: bool) {
        self.forgotten.store(true, Ordering::Release);
        if kill {
            self.kill.store(true, Ordering::Release);
        }
    }
}

impl Sink for ChunkSink {
    fn deliver(&self, first: usize, count: usize, plain: usize, bytes: &[u8], busy: Duration) {
        let part = PoolPart::Values {
            chunk: self.chunk,
            first: first as u64,
            count: count as u64,
            plain: plain as u64,
            bytes: Blob(bytes.to_vec()),
            busy_ns: u64::try_from(busy.as_nanos()).unwrap_or(u64::MAX),
        };
        self.put(part, count);
    }

    fn fail(&self, index: usize, error: TaskError) {
        let part = PoolPart::Failed {
            chunk: self.chunk,
            index: index as u64,
            failure: PoolFailure::from_task_error(&error),
        };
        self.put(part, 1);
    }

    fn abandoned(&self) -> bool {
        self.forgotten.load(Ordering::Acquire)
    }

    fn cancelled(&self) -> bool {
        self.kill.load(Ordering::Acquire)
    }

    fn typical_chunk(&self) -> Option<Duration> {
        None
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Waits for a change of the state, for at most a liveness slice (so
    /// that the caller checks its client in between) and never past
    /// `deadline`; `None`, with the lock released, once the deadline has
    /// passed.
    fn wait_changed<'a>(
        &'a self,
        st: MutexGuard<'a, State>,
        deadline: Option<Instant>,
    ) -> Option<MutexGuard<'a, State>> {
        let now = Instant::now();
        let slice = match deadline {
            Some(d) if d <= now => return None,
            Some(d) => (d - now).min(LIVENESS_SLICE),
            None => LIVENESS_SLICE,
        };
        Some(
            self.changed
                .wait_timeout(st, slice)
                .unwrap_or_else(|e| e.into_inner())
                .0,
        )
    }

    /// Removes the stream and stops its chunks. The caller tells the
    /// backend (with no lock held: the scheduler calls sinks under its
    /// own).
    fn end_stream(st: &mut State, stream: u64) -> bool {
        let Some(s) = st.streams.remove(&stream) else {
            return false;
        };
        for sink in s.chunks.values() {
            sink.stop(true);
        }
        !s.chunks.is_empty()
    }

    /// Ends the streams not heard from for [`STREAM_TTL`].
    fn reap(&self) {
        let mut stopped = false;
        {
            let mut st = self.lock();
            let stale: Vec<u64> = st
                .streams
                .iter()
                .filter(|(_, s)| s.seen.elapsed() > STREAM_TTL)
                .map(|(id, _)| *id)
                .collect();
            for id in stale {
                stopped |= Shared::end_stream(&mut st, id);
            }
        }
        if stopped {
            self.backend.cancelled();
        }
        self.changed.notify_all();
    }

    /// The reaper thread: every [`REAP_EVERY`] until the object goes.
    fn reaper(self: &Arc<Shared>) {
        let mut st = self.lock();
        let mut next = Instant::now() + REAP_EVERY;
        while !st.closing {
            let now = Instant::now();
            if now < next {
                // Woken by every outcome too: only the clock matters here.
                st = self
                    .changed
                    .wait_timeout(st, next - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
                continue;
            }
            drop(st);
            self.reap();
            next = Instant::now() + REAP_EVERY;
            st = self.lock();
        }
    }
}

impl PoolObject {
    /// Starts a pool as `spec` says.
    pub(crate) fn new(spec: PoolSpec) -> Result<PoolObject, RemoteError> {
        let mut builder = Pool::builder().max_failed_starts(spec.max_failed_starts);
        if let Some(n) = spec.workers {
            builder = builder.workers(usize::try_from(n).unwrap_or(usize::MAX));
        }
        if let Some(m) = spec.method {
            builder = builder.start_method(m);
        }
        if let Some(n) = spec.max_tasks_per_child {
            builder = builder.max_tasks_per_child(n);
        }
        if let Some(b) = spec.memory_limit {
            builder = builder.memory_limit(b);
        }
        let pool = builder
            .build()
            .map_err(|e| RemoteError::PoolStart(e.to_string()))?;
        let info = PoolInfo {
            workers: pool.workers() as u64,
            method: pool.start_method(),
            task_timeout_ns: spec.task_timeout_ns,
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            backend: Arc::clone(pool.backend()),
        });
        let reaping = Arc::clone(&shared);
        let reaper = std::thread::Builder::new()
            .name("manager-pool-reaper".into())
            .spawn(move || reaping.reaper())
            .map_err(|e| RemoteError::PoolStart(e.to_string()))?;
        Ok(PoolObject {
            pool: Some(pool),
            shared,
            reaper: Some(reaper),
            info,
        })
    }

    /// Runs one pool method.
    pub(crate) fn call(&self, op: PoolOp, ctx: &Ctx<'_>) -> Reply {
        match op {
            PoolOp::Info => Ok(Payload::Value(Blob(codec_encode(&self.info)?))),
            PoolOp::Stats => {
                let stats: Vec<PoolStats> = self
                    .shared
                    .backend
                    .stats()
                    .into_iter()
                    .map(|w| PoolStats {
                        index: w.index as u64,
                        pid: w.pid,
                        tasks_done: w.tasks_done,
                        busy_ns: u64::try_from(w.busy.as_nanos()).unwrap_or(u64::MAX),
                        idle_ns: u64::try_from(w.idle.as_nanos()).unwrap_or(u64::MAX),
                        restarts: w.restarts,
                        ready: w.ready,
                    })
                    .collect();
                Ok(Payload::Value(Blob(codec_encode(&stats)?)))
            }
            PoolOp::Submit {
                stream,
                build,
                chunks,
            } => {
                self.submit(stream, &build, chunks);
                Ok(Payload::Unit)
            }
            PoolOp::Collect {
                stream,
                forget,
                cancel,
                timeout,
            } => self.collect(stream, &forget, &cancel, timeout, ctx),
            PoolOp::Cancel { stream, chunks } => {
                self.drop_chunks(stream, &[], &chunks);
                Ok(Payload::Unit)
            }
            PoolOp::EndStream(stream) => {
                let stopped = Shared::end_stream(&mut self.shared.lock(), stream);
                if stopped {
                    self.shared.backend.cancelled();
                }
                self.shared.changed.notify_all();
                Ok(Payload::Unit)
            }
            PoolOp::Close => {
                self.shared.backend.close();
                Ok(Payload::Unit)
            }
            PoolOp::Join(timeout) => Ok(Payload::Bool(self.join(timeout, ctx))),
            PoolOp::Terminate => {
                self.shared.backend.terminate();
                Ok(Payload::Unit)
            }
        }
    }

    /// Queues a client's chunks; a chunk that cannot run fails its items
    /// into the stream.
    fn submit(&self, stream: u64, build: &str, chunks: Vec<PoolChunk>) {
        let ours = registry::build_fingerprint();
        let mut local: Vec<Chunk> = Vec::with_capacity(chunks.len());
        let mut refused: Vec<(Arc<ChunkSink>, u64, usize, TaskError)> = Vec::new();
        {
            let mut st = self.shared.lock();
            let s = st.streams.entry(stream).or_insert_with(Stream::new);
            s.seen = Instant::now();
            for c in chunks {
                let count = c.ends.len();
                let sink = Arc::new(ChunkSink {
                    shared: Arc::downgrade(&self.shared),
                    stream,
                    chunk: c.id,
                    count,
                    settled: Mutex::new(0),
                    kill: AtomicBool::new(false),
                    forgotten: AtomicBool::new(false),
                });
                let checked = check_chunk(&c, build, ours);
                // A chunk id already in use would mix two chunks' outcomes.
                if count == 0 || s.chunks.contains_key(&c.id) {
                    continue;
                }
                s.chunks.insert(c.id, Arc::clone(&sink));
                match checked {
                    Ok(preamble) => local.push(Chunk {
                        id: scheduler::next_id(),
                        sink: sink as Arc<dyn Sink>,
                        preamble,
                        key: None,
                        first: c.first as usize,
                        items: c.items.0,
                        ends: Ends::Each(c.ends.iter().map(|&e| e as usize).collect()),
                        timeout: c.timeout_ns.map(Duration::from_nanos),
                        context: None,
                        arena: None,
                    }),
                    Err(e) => refused.push((sink, c.first, count, e)),
                }
            }
        }
        for (sink, first, count, e) in refused {
            fail_items(&sink, first as usize, count, &e);
        }
        if local.is_empty() {
            return;
        }
        let sinks: Vec<(Arc<dyn Sink>, usize, usize)> = local
            .iter()
            .map(|c| (Arc::clone(&c.sink), c.first, c.ends.len()))
            .collect();
        if let Err(e) = self.shared.backend.submit(local) {
            for (sink, first, count) in sinks {
                for i in first..first + count {
                    sink.fail(i, e.clone());
                }
            }
        }
    }

    /// Forgets and stops chunks of a stream; tells the pool if any is to be
    /// killed.
    fn drop_chunks(&self, stream: u64, forget: &[u64], cancel: &[u64]) {
        if forget.is_empty() && cancel.is_empty() {
            return;
        }
        let mut killed = false;
        {
            let mut st = self.shared.lock();
            let Some(s) = st.streams.get_mut(&stream) else {
                return;
            };
            s.seen = Instant::now();
            for (ids, kill) in [(forget, false), (cancel, true)] {
                for id in ids {
                    if let Some(sink) = s.chunks.remove(id) {
                        sink.stop(kill);
                        killed |= kill;
                    }
                }
            }
        }
        if killed {
            self.shared.backend.cancelled();
        }
    }

    /// The stream's outcomes, after waiting up to `timeout` for the first.
    /// A client that goes while it waits ends its stream.
    fn collect(
        &self,
        stream: u64,
        forget: &[u64],
        cancel: &[u64],
        timeout: TimeoutMs,
        ctx: &Ctx<'_>,
    ) -> Reply {
        self.drop_chunks(stream, forget, cancel);
        let deadline = timeout.and_then(|ms| Instant::now().checked_add(Duration::from_millis(ms)));
        let mut st = self.shared.lock();
        loop {
            let Some(s) = st.streams.get_mut(&stream) else {
                return Err(RemoteError::BadArgument(format!(
                    "the pool has no stream {stream}: its work was dropped after {} s without \
                     hearing from its client",
                    STREAM_TTL.as_secs()
                )));
            };
            s.seen = Instant::now();
            if !s.parts.is_empty() {
                let mut out = Vec::new();
                let mut bytes = 0usize;
                while let Some(part) = s.parts.pop_front() {
                    bytes = bytes.saturating_add(match &part {
                        PoolPart::Values { bytes, .. } => bytes.0.len(),
                        PoolPart::Failed { .. } => 64,
                    });
                    out.push(part);
                    if bytes >= COLLECT_BYTES {
                        break;
                    }
                }
                return Ok(Payload::Parts(out));
            }
            st = match self.shared.wait_changed(st, deadline) {
                Some(st) => st,
                None => return Ok(Payload::Parts(Vec::new())),
            };
            if !(ctx.alive)() {
                let stopped = Shared::end_stream(&mut st, stream);
                drop(st);
                if stopped {
                    self.shared.backend.cancelled();
                }
                return Ok(Payload::Parts(Vec::new()));
            }
        }
    }

    /// Closes the pool and waits until no stream has work left (up to
    /// `timeout`); then stops the workers.
    fn join(&self, timeout: TimeoutMs, ctx: &Ctx<'_>) -> bool {
        self.shared.backend.close();
        let deadline = timeout.and_then(|ms| Instant::now().checked_add(Duration::from_millis(ms)));
        let mut st = self.shared.lock();
        loop {
            if st.streams.values().all(|s| s.chunks.is_empty()) {
                break;
            }
            st = match self.shared.wait_changed(st, deadline) {
                Some(st) => st,
                None => return false,
            };
            if !(ctx.alive)() {
                return false;
            }
        }
        drop(st);
        // Nothing anybody waits for is left: what still runs was forgotten.
        self.shared.backend.join();
        true
    }
}

impl Drop for PoolObject {
    fn drop(&mut self) {
        self.shared.lock().closing = true;
        self.shared.changed.notify_all();
        if let Some(r) = self.reaper.take() {
            let _ = r.join();
        }
        // Dropping the pool terminates it: whatever still ran fails.
        drop(self.pool.take());
    }
}

fn codec_encode<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, RemoteError> {
    crate::wire::codec::encode(v).map_err(|e| RemoteError::Internal(e.message))
}

fn fail_items(sink: &ChunkSink, first: usize, count: usize, e: &TaskError) {
    for i in 0..count {
        sink.fail(first.saturating_add(i), e.clone());
    }
}

/// Checks a client's chunk: its shape, its build, its task; returns the
/// local entry to run it under.
fn check_chunk(
    c: &PoolChunk,
    build: &str,
    ours: &str,
) -> Result<[u8; crate::sys::code::PREAMBLE], TaskError> {
    let shape = || TaskError::Protocol("the chunk's item ends do not match its items".into());
    let mut last = 0u64;
    for &e in &c.ends {
        if e < last {
            return Err(shape());
        }
        last = e;
    }
    if last != c.items.0.len() as u64 || c.first.checked_add(c.ends.len() as u64).is_none() {
        return Err(shape());
    }
    if build != ours {
        return Err(TaskError::BuildMismatch {
            expected: build.to_owned(),
            got: ours.to_owned(),
        });
    }
    let task = registry::registry().by_name(&c.name).map_err(|e| match e {
        Lookup::NotRegistered => {
            TaskError::NotRegistered(format!("the manager has no task named {:?}", c.name))
        }
        Lookup::Duplicate(name) => {
            TaskError::NotRegistered(format!("the manager has two tasks named {name:?}"))
        }
    })?;
    if task.signature != c.signature {
        return Err(TaskError::BuildMismatch {
            expected: format!("{} with signature {}", c.name, c.signature),
            got: format!("signature {}", task.signature),
        });
    }
    Ok(task.entry.preamble())
}
