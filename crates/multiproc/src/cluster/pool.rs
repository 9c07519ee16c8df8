//! The cluster pool: the local pool's front end (`map`, `imap`, `submit`,
//! handles, progress bars) over a backend that puts chunks into the
//! namespace's task stream and reads the agents' replies.
//!
//! Per namespace, one stream `mp:{ns}:tasks` with one consumer group
//! (`workers`) holds every pool's chunks; each pool has a result list,
//! an `alive` key its reader thread keeps refreshing (agents drop the
//! chunks of a pool whose key expired: its producer died) and a set of
//! cancelled chunks. Agents complete a chunk with a script that pushes the
//! reply only while they still own the entry, so each chunk is answered
//! once, even when a stalled agent's entry was taken over.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::wire::{self, Body, Part, TaskEntry};
use super::{Cluster, ClusterError, Link};
use crate::pool::backend::Backend;
use crate::pool::job::Sink;
use crate::pool::registry::{self, Lookup};
use crate::pool::scheduler::Chunk;
use crate::pool::{Pool, PoolError, TaskError, WorkerStats};
use crate::process::{StartMethod, get_start_method};
use crate::wire::EncodeError;

/// The consumer group every agent of a namespace reads in.
pub(crate) const GROUP: &str = "workers";

/// Default of [`PoolBuilder::max_deliveries`].
pub const DEFAULT_MAX_DELIVERIES: u32 = 3;
/// Default of [`PoolBuilder::inline_limit`].
pub const DEFAULT_INLINE_LIMIT: usize = 256 << 10;
/// Default of [`PoolBuilder::max_message`].
pub const DEFAULT_MAX_MESSAGE: usize = 64 << 20;
/// Default of [`PoolBuilder::producer_ttl`].
pub const DEFAULT_PRODUCER_TTL: Duration = Duration::from_secs(30);
/// Default of [`PoolBuilder::server_timeout`].
pub const DEFAULT_SERVER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the reader blocks for replies before it looks at its other
/// duties (keep-alive, cancellations, close).
const READ_BLOCK: Duration = Duration::from_millis(200);

/// Which builds an agent may run a task for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum BuildCheck {
    /// Only agents running the same executable (same GNU build id, or the
    /// same SHA-256 of the file): the default.
    #[default]
    Exact,
    /// Any build in which the task has the same name, argument type and
    /// result type names: for rolling upgrades, at the user's risk (a type
    /// may keep its name and change its layout).
    SignatureOnly,
}

/// Settings of a cluster pool; made by [`Cluster::pool`].
#[derive(Debug, Clone)]
pub struct PoolBuilder {
    cluster: Cluster,
    max_deliveries: u32,
    inline_limit: usize,
    max_message: usize,
    producer_ttl: Duration,
    server_timeout: Duration,
    task_timeout: Option<Duration>,
    build_check: BuildCheck,
}

impl Cluster {
    /// A pool whose tasks run on this namespace's agents: the same
    /// [`Pool`] type, with the same methods, as a local one.
    ///
    /// ```no_run
    /// # #[cfg(feature = "cluster")] {
    /// use multiproc::cluster::Cluster;
    ///
    /// #[multiproc::task]
    /// fn square(x: u64) -> u64 {
    ///     x * x
    /// }
    ///
    /// let cluster = Cluster::connect("redis://10.0.0.5")?;
    /// let pool = cluster.pool().build()?;
    /// assert_eq!(pool.map(square, 1..=4)?, [1, 4, 9, 16]);
    /// # }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn pool(&self) -> PoolBuilder {
        PoolBuilder {
            cluster: self.clone(),
            max_deliveries: DEFAULT_MAX_DELIVERIES,
            inline_limit: DEFAULT_INLINE_LIMIT,
            max_message: DEFAULT_MAX_MESSAGE,
            producer_ttl: DEFAULT_PRODUCER_TTL,
            server_timeout: DEFAULT_SERVER_TIMEOUT,
            task_timeout: None,
            build_check: BuildCheck::Exact,
        }
    }
}

impl PoolBuilder {
    /// How many times a chunk may be handed to an agent: after its agents
    /// died (or stalled past [`Cluster::min_idle`]) that often while
    /// running it, its items fail with [`TaskError::WorkerLost`] instead
    /// of killing another agent. Default 3.
    pub fn max_deliveries(mut self, n: u32) -> Self {
        self.max_deliveries = n;
        self
    }

    /// Chunks (and replies) larger than this go into a blob of their own,
    /// stored once per content, instead of into the stream entry. Default
    /// 256 KiB.
    pub fn inline_limit(mut self, bytes: usize) -> Self {
        self.inline_limit = bytes;
        self
    }

    /// The largest chunk (one item at least) the pool sends; an item
    /// larger fails with [`TaskError::ArgumentEncode`]. The server keeps
    /// everything in memory and serves every client from one thread:
    /// pass a path or a URL for big data. Default 64 MiB.
    pub fn max_message(mut self, bytes: usize) -> Self {
        self.max_message = bytes;
        self
    }

    /// How long this pool's keys outlive its producer: the reader thread
    /// refreshes them; if this process dies, agents stop running its
    /// chunks and its keys vanish this long after. Default 30 s.
    pub fn producer_ttl(mut self, ttl: Duration) -> Self {
        self.producer_ttl = ttl;
        self
    }

    /// How long the pool tolerates a lost connection to the server before
    /// it fails every unfinished item with [`TaskError::Backend`]. Default
    /// 10 s.
    pub fn server_timeout(mut self, timeout: Duration) -> Self {
        self.server_timeout = timeout;
        self
    }

    /// A default timeout for every item, enforced by the agent's local
    /// pool (its worker is killed and the item fails with
    /// [`TaskError::TimedOut`]).
    pub fn task_timeout(mut self, timeout: Duration) -> Self {
        self.task_timeout = Some(timeout);
        self
    }

    /// Which agents' builds may run this pool's tasks.
    pub fn build_check(mut self, check: BuildCheck) -> Self {
        self.build_check = check;
        self
    }

    /// Sets the pool up on the server and starts its reader thread.
    pub fn build(self) -> Result<Pool, PoolError> {
        if self.max_deliveries == 0 {
            return Err(PoolError::Invalid("max_deliveries must be at least 1"));
        }
        if self.producer_ttl < Duration::from_millis(500) {
            return Err(PoolError::Invalid("producer_ttl must be at least 500 ms"));
        }
        let mut id = [0u8; 8];
        getrandom::fill(&mut id).map_err(|e| PoolError::Io(std::io::Error::other(e)))?;
        let id = registry::hex(&id);
        let c = &self.cluster;
        let keys = Keys {
            stream: c.key("tasks"),
            results: c.key(&format!("pool:{id}:results")),
            alive: c.key(&format!("pool:{id}:alive")),
            cancelled: c.key(&format!("pool:{id}:cancelled")),
        };
        let mut link = c.link();
        create_group(&mut link, &keys.stream)?;
        link.run::<()>(
            redis::cmd("SET")
                .arg(&keys.alive)
                .arg(registry::build_fingerprint())
                .arg("PX")
                .arg(millis(self.producer_ttl)),
        )?;
        let dispatch = Arc::new(Dispatch {
            cluster: self.cluster.clone(),
            id,
            keys,
            max_deliveries: self.max_deliveries,
            inline_limit: self.inline_limit,
            max_message: self.max_message,
            producer_ttl: self.producer_ttl,
            server_timeout: self.server_timeout,
            build_check: self.build_check,
            link: Mutex::new(link),
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            reader: Mutex::new(None),
            next_chunk: AtomicU64::new(1),
            workers: Mutex::new(None),
            stop: AtomicBool::new(false),
        });
        let reader = Arc::clone(&dispatch);
        let thread = std::thread::Builder::new()
            .name("multiproc-cluster-pool".into())
            .spawn(move || reader.read())
            .map_err(PoolError::Io)?;
        *dispatch.reader.lock().unwrap_or_else(|e| e.into_inner()) = Some(thread);
        Ok(Pool::with_backend(dispatch, self.task_timeout))
    }
}

/// Creates the namespace's stream and group unless they exist.
pub(crate) fn create_group(link: &mut Link, stream: &str) -> Result<(), ClusterError> {
    let r = link.run::<()>(
        redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(stream)
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM"),
    );
    match r {
        Err(ClusterError::Server(m)) if m.contains("BUSYGROUP") => Ok(()),
        other => other,
    }
}

pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// The key of a pool's blob: content addressed within the pool, so the
/// same big argument sent in many of its chunks is stored once, and the
/// pool alone decides when it goes.
pub(crate) fn blob_key(cluster: &Cluster, pool: &str, hash: &str) -> String {
    cluster.key(&format!("blob:{pool}:{hash}"))
}

pub(crate) fn blob_hash(bytes: &[u8]) -> String {
    registry::hex(&Sha256::digest(bytes))
}

struct Keys {
    stream: String,
    results: String,
    alive: String,
    cancelled: String,
}

/// A chunk sent and not yet answered.
struct Pending {
    sink: Arc<dyn Sink>,
    first: usize,
    count: usize,
    /// The hash of the blob holding its items, if they are in one.
    blob: Option<String>,
}

impl State {
    /// Removes chunk `seq` from the pending set, letting go of its blob.
    fn finish(&mut self, seq: u64) -> Option<Pending> {
        let p = self.pending.remove(&seq)?;
        self.release(&p);
        Some(p)
    }

    fn release(&mut self, p: &Pending) {
        if let Some(hash) = &p.blob
            && let Some(n) = self.blobs.get_mut(hash)
        {
            *n -= 1;
            if *n == 0 {
                self.blobs.remove(hash);
                self.to_delete.push(hash.clone());
            }
        }
    }
}

#[derive(Default)]
struct State {
    pending: HashMap<u64, Pending>,
    /// Chunks of cancelled or abandoned jobs, to be marked on the server.
    to_cancel: Vec<u64>,
    /// Argument blobs: how many pending chunks use each.
    blobs: HashMap<String, usize>,
    /// Blobs no chunk uses any more, to be deleted.
    to_delete: Vec<String>,
    closed: bool,
    terminating: bool,
    /// Replies for chunks no longer pending (late, or duplicated).
    dropped_replies: u64,
}

struct Dispatch {
    cluster: Cluster,
    id: String,
    keys: Keys,
    max_deliveries: u32,
    inline_limit: usize,
    max_message: usize,
    producer_ttl: Duration,
    server_timeout: Duration,
    build_check: BuildCheck,
    /// For submissions (the reader has its own).
    link: Mutex<Link>,
    state: Mutex<State>,
    changed: Condvar,
    reader: Mutex<Option<JoinHandle<()>>>,
    next_chunk: AtomicU64,
    /// The live agents' slots, and when they were counted.
    workers: Mutex<Option<(Instant, usize)>>,
    stop: AtomicBool,
}

fn fail_all(sink: &dyn Sink, first: usize, count: usize, error: &TaskError) {
    for i in first..first + count {
        sink.fail(i, error.clone());
    }
}

impl Dispatch {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The entry for `chunk`, or the error every one of its items gets.
    fn entry(&self, chunk: &Chunk, seq: u64) -> Result<TaskEntry, TaskError> {
        let task = registry::registry()
            .by_entry(&chunk.preamble, chunk.key)
            .map_err(|e| match e {
                Lookup::NotRegistered => TaskError::NotRegistered(
                    "no #[multiproc::task] names this function (with these argument and result \
                     types) in this program"
                        .into(),
                ),
                Lookup::Duplicate(name) => TaskError::NotRegistered(format!(
                    "two functions are registered as {name:?}: give one another name"
                )),
            })?;
        if chunk.items.len() > self.max_message {
            return Err(TaskError::ArgumentEncode(EncodeError {
                type_name: "cluster task",
                message: format!(
                    "{} bytes is more than the pool's max_message ({} bytes): pass a path or a URL",
                    chunk.items.len(),
                    self.max_message
                ),
            }));
        }
        Ok(TaskEntry {
            pool: self.id.clone(),
            chunk: seq,
            name: task.name.to_owned(),
            signature: task.signature.clone(),
            build: match self.build_check {
                BuildCheck::Exact => registry::build_fingerprint().to_owned(),
                BuildCheck::SignatureOnly => String::new(),
            },
            first: chunk.first as u64,
            ends: chunk.ends.offsets().into_iter().map(|e| e as u64).collect(),
            items: None,
            blob: None,
            timeout_ms: chunk.timeout.map(millis),
            max_deliveries: self.max_deliveries,
        })
    }

    /// Sends `chunks` in one pipeline.
    fn send(&self, chunks: Vec<Chunk>) -> Result<(), TaskError> {
        let mut pipe = redis::pipe();
        let mut sent: Vec<u64> = Vec::new();
        for chunk in chunks {
            let seq = self.next_chunk.fetch_add(1, Ordering::Relaxed);
            let count = chunk.ends.len();
            let mut entry = match self.entry(&chunk, seq) {
                Ok(e) => e,
                Err(e) => {
                    fail_all(&*chunk.sink, chunk.first, count, &e);
                    continue;
                }
            };
            // Pending before sent: a reply may come back before `pipe`
            // returns.
            let mut st = self.lock();
            let blob = if chunk.items.len() > self.inline_limit {
                let hash = blob_hash(&chunk.items);
                let users = st.blobs.entry(hash.clone()).or_insert(0);
                if *users == 0 {
                    pipe.cmd("SET")
                        .arg(blob_key(&self.cluster, &self.id, &hash))
                        .arg(&chunk.items)
                        .arg("PX")
                        .arg(millis(self.producer_ttl * 4))
                        .ignore();
                }
                *users += 1;
                entry.blob = Some(hash.clone());
                Some(hash)
            } else {
                entry.items = Some(chunk.items);
                None
            };
            st.pending.insert(
                seq,
                Pending {
                    sink: chunk.sink,
                    first: chunk.first,
                    count,
                    blob,
                },
            );
            drop(st);
            let mut xadd = redis::cmd("XADD");
            xadd.arg(&self.keys.stream).arg("*");
            for (k, v) in entry.fields() {
                xadd.arg(k).arg(v);
            }
            pipe.add_command(xadd).ignore();
            sent.push(seq);
        }
        if sent.is_empty() {
            return Ok(());
        }
        let r = self
            .link
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pipe::<()>(&pipe);
        if let Err(e) = r {
            let mut st = self.lock();
            let failed: Vec<Pending> = sent.iter().filter_map(|seq| st.finish(*seq)).collect();
            drop(st);
            let e = TaskError::Backend(e.to_string());
            for p in failed {
                fail_all(&*p.sink, p.first, p.count, &e);
            }
        }
        Ok(())
    }

    /// The reader thread: replies, keep-alive, cancellations, and the end.
    fn read(&self) {
        let mut link = self.cluster.link();
        let mut last_keepalive: Option<Instant> = None;
        let mut down_since: Option<Instant> = None;
        let mut was_down = false;
        loop {
            if self.stop.load(Ordering::Acquire) {
                break;
            }
            {
                let st = self.lock();
                if st.closed && st.pending.is_empty() {
                    break;
                }
            }
            let r = self.read_once(&mut link, &mut last_keepalive, &mut was_down);
            match r {
                Ok(()) => down_since = None,
                Err(e) if e.is_connection() => {
                    let since = *down_since.get_or_insert_with(Instant::now);
                    was_down = true;
                    last_keepalive = None;
                    if since.elapsed() > self.server_timeout {
                        self.fail_pending(&TaskError::Backend(format!(
                            "no answer from the cluster server for {:?}: {e}",
                            self.server_timeout
                        )));
                        down_since = None;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => {
                    // A refused command (out of memory, an ACL rule): the
                    // pending items cannot be trusted to come back.
                    self.fail_pending(&TaskError::Backend(e.to_string()));
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
        self.clean_up(&mut link);
    }

    fn read_once(
        &self,
        link: &mut Link,
        last_keepalive: &mut Option<Instant>,
        was_down: &mut bool,
    ) -> Result<(), ClusterError> {
        let due = last_keepalive.is_none_or(|t| t.elapsed() >= self.producer_ttl / 10);
        if due {
            if std::mem::take(was_down) {
                // Back after a lost connection: if the server lost our
                // keys (a restart without persistence), it lost the
                // chunks too.
                let alive: bool = link.run(redis::cmd("EXISTS").arg(&self.keys.alive))?;
                if !alive {
                    self.fail_pending(&TaskError::Backend(
                        "the cluster server lost this pool's tasks (it restarted without \
                         persistence, or evicted them)"
                            .into(),
                    ));
                    create_group(link, &self.keys.stream)?;
                }
            }
            let ttl = millis(self.producer_ttl);
            let mut pipe = redis::pipe();
            pipe.cmd("SET")
                .arg(&self.keys.alive)
                .arg(registry::build_fingerprint())
                .arg("PX")
                .arg(ttl)
                .ignore()
                .cmd("PEXPIRE")
                .arg(&self.keys.results)
                .arg(ttl)
                .ignore()
                .cmd("PEXPIRE")
                .arg(&self.keys.cancelled)
                .arg(ttl)
                .ignore();
            link.pipe::<()>(&pipe)?;
            *last_keepalive = Some(Instant::now());
        }
        self.send_cancellations(link)?;
        let popped: Option<(String, Vec<u8>)> = link.run_blocking(
            redis::cmd("BLPOP")
                .arg(&self.keys.results)
                .arg(READ_BLOCK.as_secs_f64()),
            READ_BLOCK,
        )?;
        let Some((_, first)) = popped else {
            return Ok(());
        };
        self.take_reply(link, &first);
        let more: Option<Vec<Vec<u8>>> =
            link.run(redis::cmd("LPOP").arg(&self.keys.results).arg(1000))?;
        for reply in more.unwrap_or_default() {
            self.take_reply(link, &reply);
        }
        self.delete_blobs(link)
    }

    /// Takes the chunks of cancelled or abandoned jobs out of the
    /// pending set: cancelled ones fail here; the server hears of both
    /// from the reader thread (agents then skip or stop them).
    fn drop_cancelled(&self) {
        let mut cancelled = Vec::new();
        {
            let mut st = self.lock();
            let gone: Vec<u64> = st
                .pending
                .iter()
                .filter(|(_, p)| p.sink.cancelled() || p.sink.abandoned())
                .map(|(seq, _)| *seq)
                .collect();
            for seq in &gone {
                if let Some(p) = st.finish(*seq)
                    && p.sink.cancelled()
                {
                    cancelled.push((p.sink, p.first, p.count));
                }
            }
            st.to_cancel.extend(gone);
        }
        self.changed.notify_all();
        for (sink, first, count) in cancelled {
            fail_all(&*sink, first, count, &TaskError::Cancelled);
        }
    }

    /// Deletes the blobs no chunk uses any more.
    fn delete_blobs(&self, link: &mut Link) -> Result<(), ClusterError> {
        let hashes = std::mem::take(&mut self.lock().to_delete);
        if hashes.is_empty() {
            return Ok(());
        }
        let mut del = redis::cmd("DEL");
        for h in &hashes {
            del.arg(blob_key(&self.cluster, &self.id, h));
        }
        let r = link.run::<()>(&del);
        if r.is_err() {
            self.lock().to_delete.extend(hashes);
        }
        r
    }

    /// Marks the dropped chunks on the server.
    fn send_cancellations(&self, link: &mut Link) -> Result<(), ClusterError> {
        self.drop_cancelled();
        self.delete_blobs(link)?;
        let seqs = std::mem::take(&mut self.lock().to_cancel);
        if seqs.is_empty() {
            return Ok(());
        }
        let mut sadd = redis::cmd("SADD");
        sadd.arg(&self.keys.cancelled).arg(&seqs);
        let r = link.run::<()>(&sadd);
        if r.is_err() {
            self.lock().to_cancel.extend(seqs);
        }
        r
    }

    /// Hands one reply's outcomes to its job.
    fn take_reply(&self, link: &mut Link, bytes: &[u8]) {
        let Ok(reply) = wire::decode_reply(bytes) else {
            // Garbage in our result list: nobody's items to fail.
            self.lock().dropped_replies += 1;
            return;
        };
        let Some(p) = self.lock().finish(reply.chunk) else {
            self.lock().dropped_replies += 1;
            return;
        };
        self.changed.notify_all();
        let parts = match reply.body {
            Body::Parts(parts) => Ok(parts),
            Body::Blob(hash) => {
                let key = blob_key(&self.cluster, &self.id, &hash);
                match link.run::<Option<Vec<u8>>>(redis::cmd("GETDEL").arg(&key)) {
                    Ok(Some(b)) => postcard::from_bytes::<Vec<Part>>(&b)
                        .map_err(|e| format!("a reply blob does not decode: {e}")),
                    Ok(None) => Err("a reply blob has expired".to_owned()),
                    Err(e) => Err(format!("could not read a reply blob: {e}")),
                }
            }
        };
        let parts = match parts {
            Ok(parts) => parts,
            Err(m) => {
                fail_all(&*p.sink, p.first, p.count, &TaskError::Protocol(m));
                return;
            }
        };
        let end = p.first + p.count;
        let mut seen = vec![false; p.count];
        let in_range = |i: u64| usize::try_from(i).ok().filter(|&i| i >= p.first && i < end);
        for part in parts {
            match part {
                Part::Values {
                    first,
                    count,
                    plain,
                    bytes,
                    busy_ns,
                } => {
                    let (Some(a), Some(b)) = (
                        in_range(first),
                        first
                            .checked_add(count)
                            .and_then(|e| e.checked_sub(1))
                            .and_then(in_range),
                    ) else {
                        continue;
                    };
                    if count == 0 || seen[a - p.first..=b - p.first].iter().any(|s| *s) {
                        continue;
                    }
                    seen[a - p.first..=b - p.first].fill(true);
                    let count = b - a + 1;
                    let plain = usize::try_from(plain).unwrap_or(usize::MAX).min(count);
                    p.sink
                        .deliver(a, count, plain, &bytes, Duration::from_nanos(busy_ns));
                }
                Part::Failed { index, failure } => {
                    let Some(i) = in_range(index) else { continue };
                    if std::mem::replace(&mut seen[i - p.first], true) {
                        continue;
                    }
                    p.sink.fail(i, failure.into_task_error());
                }
            }
        }
        for (k, s) in seen.iter().enumerate() {
            if !s {
                p.sink.fail(
                    p.first + k,
                    TaskError::Protocol("an agent's reply left this item out".into()),
                );
            }
        }
    }

    fn fail_pending(&self, error: &TaskError) {
        let mut st = self.lock();
        let pending: Vec<Pending> = st.pending.drain().map(|(_, p)| p).collect();
        for p in &pending {
            st.release(p);
        }
        drop(st);
        self.changed.notify_all();
        for p in pending {
            fail_all(&*p.sink, p.first, p.count, error);
        }
    }

    /// The pool's keys go; its stream entries are dropped by the agents
    /// once they see it gone.
    fn clean_up(&self, link: &mut Link) {
        {
            let mut st = self.lock();
            let left: Vec<String> = st.blobs.drain().map(|(h, _)| h).collect();
            st.to_delete.extend(left);
        }
        let _ = self.delete_blobs(link);
        let _ = link.run::<()>(
            redis::cmd("DEL")
                .arg(&self.keys.alive)
                .arg(&self.keys.results)
                .arg(&self.keys.cancelled),
        );
    }

    fn take_reader(&self) -> Option<JoinHandle<()>> {
        self.reader.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

impl Backend for Dispatch {
    fn method(&self) -> StartMethod {
        get_start_method()
    }

    fn workers(&self) -> usize {
        let mut cached = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, n)) = *cached
            && at.elapsed() < Duration::from_secs(1)
        {
            return n;
        }
        let n = super::worker::live_agents(&self.cluster)
            .map(|agents| agents.iter().map(|a| a.slots).sum::<usize>())
            .unwrap_or(0)
            .max(1);
        *cached = Some((Instant::now(), n));
        n
    }

    fn stats(&self) -> Vec<WorkerStats> {
        super::worker::live_agents(&self.cluster)
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .map(|(index, a)| WorkerStats {
                index,
                pid: a.pid,
                tasks_done: a.tasks_done,
                busy: a.busy,
                idle: a.alive.saturating_sub(a.busy),
                restarts: 0,
                ready: true,
            })
            .collect()
    }

    fn submit(&self, chunks: Vec<Chunk>) -> Result<(), TaskError> {
        {
            let st = self.lock();
            if st.closed {
                return Err(if st.terminating {
                    TaskError::Terminated
                } else {
                    TaskError::Closed
                });
            }
        }
        self.send(chunks)
    }

    fn cancelled(&self) {
        self.drop_cancelled();
    }

    fn close(&self) {
        self.lock().closed = true;
    }

    fn join(&self) {
        self.close();
        if let Some(t) = self.take_reader() {
            let _ = t.join();
        }
    }

    fn terminate(&self) {
        {
            let mut st = self.lock();
            st.closed = true;
            st.terminating = true;
        }
        self.fail_pending(&TaskError::Terminated);
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.take_reader() {
            let _ = t.join();
        }
    }
}
