//! Agents: the processes that run a cluster pool's tasks.
//!
//! An agent is the user's own program started with
//! `MULTIPROC_CLUSTER=<url>` (the boot hook serves before `main`, which
//! never runs), or any program that calls [`run`] or [`Agent::start`]. It
//! reads chunks from its namespace's task stream and runs them in a local
//! multiproc [`Pool`] of its own: a panic, a segfault, a
//! timeout or a memory limit in a task means exactly what it means in a
//! local pool, and the agent goes on.
//!
//! Three threads, each with its own connection:
//! * the reader takes new chunks (`XREADGROUP`), at most two per slot held
//!   at once, so one agent does not hoard work other agents could do;
//! * the completer sends each finished chunk's reply with a script that
//!   pushes it only while this agent still owns the entry, then
//!   acknowledges and deletes the entry;
//! * the heartbeat, every fifth of [`Cluster::min_idle`], resets the idle
//!   time of the entries it holds (so a live agent's work is never taken
//!   over, however long a task runs), publishes the agent's record,
//!   stops chunks that were cancelled, lost or whose producer died, and
//!   takes over entries idle longer than `min_idle`: their agent is dead
//!   or stalled. A chunk handed out more than its pool's delivery cap
//!   fails with `TaskError::WorkerLost` instead of running again.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::pool::{DEFAULT_INLINE_LIMIT, GROUP, blob_hash, blob_key, create_group, millis};
use super::wire::{self, Body, Failure, Part, Reply, TaskEntry};
use super::{Cluster, ClusterError, Link};
use crate::pool::job::Sink;
use crate::pool::registry::{self, Lookup};
use crate::pool::scheduler::{self, Chunk, Ends};
use crate::pool::{Pool, PoolError, TaskError};
use crate::process::StartMethod;

/// The variable that makes a program an agent: the server's URL.
pub const CLUSTER_ENV: &str = "MULTIPROC_CLUSTER";
/// The namespace an agent started by [`CLUSTER_ENV`] serves (default
/// `default`).
pub const NAMESPACE_ENV: &str = "MULTIPROC_CLUSTER_NS";
/// How many tasks it runs at once (default: the processor count).
pub const SLOTS_ENV: &str = "MULTIPROC_CLUSTER_SLOTS";

/// Chunks held per slot while chunks are quick (see `Core::limit`).
const QUICK_PREFETCH: usize = 16;

/// How long the reader blocks on the stream before it checks for a stop.
const READ_BLOCK: Duration = Duration::from_millis(250);

/// An agent's settings.
#[derive(Debug, Clone, Default)]
pub struct WorkerOptions {
    slots: Option<usize>,
    start_method: Option<StartMethod>,
    memory_limit: Option<u64>,
    max_tasks_per_child: Option<u64>,
}

impl WorkerOptions {
    /// Default settings: one slot per processor.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many tasks run at once: the local pool's worker count.
    pub fn slots(mut self, n: usize) -> Self {
        self.slots = Some(n);
        self
    }

    /// How the local pool starts its workers.
    pub fn start_method(mut self, method: StartMethod) -> Self {
        self.start_method = Some(method);
        self
    }

    /// A local worker that grows past this many resident bytes is
    /// replaced after its item (see the local pool's `memory_limit`).
    pub fn memory_limit(mut self, bytes: u64) -> Self {
        self.memory_limit = Some(bytes);
        self
    }

    /// A local worker is replaced after this many items.
    pub fn max_tasks_per_child(mut self, n: u64) -> Self {
        self.max_tasks_per_child = Some(n);
        self
    }
}

/// What a task running on a cluster agent knows of itself: for making
/// side effects idempotent. A task runs more than once only when its agent
/// died or stalled past [`Cluster::min_idle`] while running it; then
/// `deliveries` is above 1, and [`id`](Self::id) is the same each time.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TaskInfo {
    /// The pool's id (random, one per pool built).
    pub pool: String,
    /// The item's index in its job.
    pub index: u64,
    /// The stream entry that carries it.
    pub entry: String,
    /// How many times the entry was handed to an agent, this one included.
    pub deliveries: u64,
    /// The agent running it.
    pub agent: String,
}

impl TaskInfo {
    /// `pool:index`: the same for every run of one item of one job.
    pub fn id(&self) -> String {
        format!("{}:{}", self.pool, self.index)
    }
}

/// The running task's [`TaskInfo`], inside a function that a cluster agent
/// runs; `None` anywhere else (a local pool, the caller).
///
/// ```
/// #[multiproc::task]
/// fn charge(order: u64) -> bool {
///     if let Some(task) = multiproc::cluster::current_task() {
///         // Record `task.id()` with the charge: a second run finds it.
///         let _ = (task.id(), task.deliveries);
///     }
///     order > 0
/// }
/// # assert!(multiproc::cluster::current_task().is_none());
/// ```
pub fn current_task() -> Option<TaskInfo> {
    let (index, bytes) = crate::pool::worker::task_context()?;
    let c: wire::Context = postcard::from_bytes(&bytes).ok()?;
    Some(TaskInfo {
        pool: c.pool,
        index,
        entry: c.entry,
        deliveries: c.deliveries,
        agent: c.agent,
    })
}

/// A live agent as its record on the server describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AgentInfo {
    /// `host:pid:random`, new for every start.
    pub id: String,
    /// Its host name.
    pub host: String,
    /// Its process id on that host.
    pub pid: i32,
    /// Tasks it runs at once.
    pub slots: usize,
    /// Items it finished.
    pub tasks_done: u64,
    /// Time its workers spent on items.
    pub busy: Duration,
    /// Time since it started.
    pub alive: Duration,
}

impl Cluster {
    /// The agents of this namespace whose heartbeat is current.
    pub fn agents(&self) -> Result<Vec<AgentInfo>, ClusterError> {
        live_agents(self)
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

pub(crate) fn live_agents(cluster: &Cluster) -> Result<Vec<AgentInfo>, ClusterError> {
    let mut link = cluster.link();
    let set = cluster.key("agents");
    let ids: Vec<String> = link.run(redis::cmd("SMEMBERS").arg(&set))?;
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    for id in &ids {
        pipe.cmd("HGETALL").arg(cluster.key(&format!("agent:{id}")));
    }
    let records: Vec<HashMap<String, String>> = link.pipe(&pipe)?;
    let mut out = Vec::new();
    let mut stale = Vec::new();
    for (id, rec) in ids.into_iter().zip(records) {
        if rec.is_empty() {
            stale.push(id);
            continue;
        }
        let num = |k: &str| rec.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        out.push(AgentInfo {
            host: rec.get("host").cloned().unwrap_or_default(),
            pid: i32::try_from(num("pid")).unwrap_or(0),
            slots: usize::try_from(num("slots")).unwrap_or(0),
            tasks_done: num("done"),
            busy: Duration::from_nanos(num("busy_ns")),
            alive: Duration::from_millis(now_ms().saturating_sub(num("started_ms"))),
            id,
        });
    }
    if !stale.is_empty() {
        let _ = link.run::<()>(redis::cmd("SREM").arg(&set).arg(&stale));
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

/// Completes an entry if this agent still owns it: pushes the reply (when
/// there is one and the producer is alive), acknowledges and deletes the
/// entry. Returns 1 if it owned it.
const COMPLETE_LUA: &str = r"
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #p == 0 or p[1][2] ~= ARGV[2] then return 0 end
if ARGV[4] ~= '' and redis.call('EXISTS', KEYS[3]) == 1 then
  redis.call('RPUSH', KEYS[2], ARGV[4])
  redis.call('PEXPIRE', KEYS[2], ARGV[5])
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
redis.call('XDEL', KEYS[1], ARGV[3])
return 1
";

/// Resets the idle time of the entries this agent still owns (without
/// counting a delivery); returns the ones it lost.
const TOUCH_LUA: &str = r"
local lost = {}
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if #p == 1 and p[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
  else
    table.insert(lost, ARGV[i])
  end
end
return lost
";

/// A finished (or refused) chunk, for the completer.
struct Done {
    entry: String,
    pool: String,
    chunk: u64,
    /// `None`: acknowledge without a reply (the producer is gone, or the
    /// entry is unreadable).
    parts: Option<Vec<Part>>,
}

/// A chunk being run.
struct Held {
    pool: String,
    chunk: u64,
    sink: Arc<RemoteSink>,
    /// When the agent took it.
    started: Instant,
}

/// Collects a local chunk's outcomes; hands them to the completer once
/// every item has one.
struct RemoteSink {
    entry: String,
    pool: String,
    chunk: u64,
    count: usize,
    agent: String,
    state: Mutex<(Vec<Part>, usize, bool)>,
    cancelled: AtomicBool,
    done: mpsc::Sender<Done>,
}

impl RemoteSink {
    fn settle(&self, part: Part, items: usize) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.0.push(part);
        st.1 = st.1.saturating_add(items);
        if st.1 >= self.count && !st.2 {
            st.2 = true;
            let parts = std::mem::take(&mut st.0);
            drop(st);
            let _ = self.done.send(Done {
                entry: self.entry.clone(),
                pool: self.pool.clone(),
                chunk: self.chunk,
                parts: (!self.cancelled.load(Ordering::Acquire)).then_some(parts),
            });
        }
    }
}

impl Sink for RemoteSink {
    fn deliver(&self, first: usize, count: usize, plain: usize, bytes: &[u8], busy: Duration) {
        let part = Part::Values {
            first: first as u64,
            count: count as u64,
            plain: plain as u64,
            bytes: bytes.to_vec(),
            busy_ns: u64::try_from(busy.as_nanos()).unwrap_or(u64::MAX),
        };
        self.settle(part, count);
    }

    fn fail(&self, index: usize, error: TaskError) {
        let part = Part::Failed {
            index: index as u64,
            failure: Failure::from_task_error(&error, &self.agent),
        };
        self.settle(part, 1);
    }

    fn abandoned(&self) -> bool {
        false
    }

    fn cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }

    fn typical_chunk(&self) -> Option<Duration> {
        None
    }
}

struct Core {
    cluster: Cluster,
    id: String,
    slots: usize,
    stream: String,
    local: Pool,
    held: Mutex<HashMap<String, Held>>,
    room: Condvar,
    done_tx: Mutex<mpsc::Sender<Done>>,
    /// No new chunks: the agent is stopping.
    stop: AtomicBool,
    /// The held chunks are done (or given up): the threads end.
    finished: AtomicBool,
    min_idle_ms: AtomicU64,
    /// How long a chunk typically takes from taking to completing
    /// (nanoseconds, a moving average; 0 before the first).
    typical_ns: AtomicU64,
    tasks_done: AtomicU64,
    busy_ns: AtomicU64,
    started_ms: u64,
    /// Producers known alive, and when that was checked.
    alive: Mutex<HashMap<String, (Instant, bool)>>,
}

/// An agent running in this process (threads and a local pool). Dropping
/// it stops it: it takes no new chunks, finishes those it holds, and
/// withdraws its record.
pub struct Agent {
    core: Arc<Core>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("id", &self.core.id)
            .field("slots", &self.core.slots)
            .finish_non_exhaustive()
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".to_owned())
}

impl Agent {
    /// Starts an agent serving `cluster`'s namespace.
    pub fn start(cluster: &Cluster, options: WorkerOptions) -> Result<Agent, PoolError> {
        let slots = options.slots.unwrap_or_else(crate::cpu_count).max(1);
        let mut builder = Pool::builder().workers(slots);
        if let Some(m) = options.start_method {
            builder = builder.start_method(m);
        }
        if let Some(b) = options.memory_limit {
            builder = builder.memory_limit(b);
        }
        if let Some(n) = options.max_tasks_per_child {
            builder = builder.max_tasks_per_child(n);
        }
        let local = builder.build()?;
        let mut tag = [0u8; 4];
        getrandom::fill(&mut tag).map_err(|e| PoolError::Io(std::io::Error::other(e)))?;
        let id = format!(
            "{}:{}:{}",
            host_name(),
            crate::sys::process::pid(),
            registry::hex(&tag)
        );
        let min_idle = cluster.min_idle()?;
        let mut link = cluster.link();
        let stream = cluster.key("tasks");
        create_group(&mut link, &stream)?;
        let (done_tx, done_rx) = mpsc::channel();
        let core = Arc::new(Core {
            cluster: cluster.clone(),
            id,
            slots,
            stream,
            local,
            held: Mutex::new(HashMap::new()),
            room: Condvar::new(),
            done_tx: Mutex::new(done_tx),
            stop: AtomicBool::new(false),
            finished: AtomicBool::new(false),
            min_idle_ms: AtomicU64::new(millis(min_idle)),
            typical_ns: AtomicU64::new(0),
            tasks_done: AtomicU64::new(0),
            busy_ns: AtomicU64::new(0),
            started_ms: now_ms(),
            alive: Mutex::new(HashMap::new()),
        });
        core.publish(&mut link)?;
        let mut threads = Vec::new();
        for (name, body) in [
            ("multiproc-agent-reader", Core::read as fn(&Core)),
            ("multiproc-agent-heartbeat", Core::beat as fn(&Core)),
        ] {
            let c = Arc::clone(&core);
            threads.push(
                std::thread::Builder::new()
                    .name(name.into())
                    .spawn(move || body(&c))
                    .map_err(PoolError::Io)?,
            );
        }
        let c = Arc::clone(&core);
        threads.push(
            std::thread::Builder::new()
                .name("multiproc-agent-completer".into())
                .spawn(move || c.complete(done_rx))
                .map_err(PoolError::Io)?,
        );
        Ok(Agent { core, threads })
    }

    /// This agent's id (`host:pid:random`).
    pub fn id(&self) -> &str {
        &self.core.id
    }

    /// Stops taking chunks, finishes the ones held (up to `grace`; the
    /// rest are taken over by other agents after `min_idle`), and
    /// withdraws the agent's record.
    pub fn stop(mut self, grace: Duration) {
        self.shut_down(grace);
    }

    fn shut_down(&mut self, grace: Duration) {
        if self.threads.is_empty() {
            return;
        }
        self.core.stop.store(true, Ordering::Release);
        self.core.room.notify_all();
        let end = Instant::now() + grace;
        while !self.core.held().is_empty() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(5));
        }
        self.core.finished.store(true, Ordering::Release);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let mut link = self.core.cluster.link();
        let _ = link.run::<()>(
            redis::cmd("SREM")
                .arg(self.core.cluster.key("agents"))
                .arg(&self.core.id),
        );
        let _ = link.run::<()>(
            redis::cmd("DEL").arg(self.core.cluster.key(&format!("agent:{}", self.core.id))),
        );
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.shut_down(Duration::from_secs(5));
    }
}

/// Serves `url`'s namespace (from `MULTIPROC_CLUSTER_NS`, default
/// `default`) with one slot per processor (or `MULTIPROC_CLUSTER_SLOTS`),
/// until the process is killed. For programs that set things up (logging,
/// secrets) before they serve; otherwise start the program with
/// `MULTIPROC_CLUSTER=<url>`.
pub fn run(url: &str) -> Result<Infallible, PoolError> {
    let (cluster, options) = from_env(url)?;
    let _agent = Agent::start(&cluster, options)?;
    loop {
        std::thread::park();
    }
}

fn from_env(url: &str) -> Result<(Cluster, WorkerOptions), PoolError> {
    let mut cluster = Cluster::connect(url)?;
    if let Ok(ns) = std::env::var(NAMESPACE_ENV) {
        cluster = cluster.namespace(&ns)?;
    }
    let mut options = WorkerOptions::new();
    if let Ok(s) = std::env::var(SLOTS_ENV) {
        let n: usize = s
            .parse()
            .map_err(|_| PoolError::Invalid("MULTIPROC_CLUSTER_SLOTS is not a number"))?;
        options = options.slots(n);
    }
    Ok((cluster, options))
}

/// The boot hook's entry: this process was started as an agent. Never
/// returns; exits with 1 and a message if it cannot serve.
pub(crate) fn serve_from_env(url: String) -> ! {
    let code = match run(&url) {
        Ok(never) => match never {},
        Err(e) => {
            let line = format!("multiproc: cluster agent cannot serve: {e}\n");
            crate::sys::process::write_stderr_raw(line.as_bytes());
            1
        }
    };
    crate::sys::process::exit_now(code)
}

impl Core {
    fn held(&self) -> MutexGuard<'_, HashMap<String, Held>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn min_idle(&self) -> Duration {
        Duration::from_millis(self.min_idle_ms.load(Ordering::Relaxed))
    }

    fn period(&self) -> Duration {
        (self.min_idle() / 5).max(Duration::from_millis(10))
    }

    /// Writes the agent's record, alive for three heartbeats.
    fn publish(&self, link: &mut Link) -> Result<(), ClusterError> {
        let key = self.cluster.key(&format!("agent:{}", self.id));
        let mut pipe = redis::pipe();
        pipe.cmd("HSET")
            .arg(&key)
            .arg("host")
            .arg(host_name())
            .arg("pid")
            .arg(crate::sys::process::pid())
            .arg("slots")
            .arg(self.slots)
            .arg("done")
            .arg(self.tasks_done.load(Ordering::Relaxed))
            .arg("busy_ns")
            .arg(self.busy_ns.load(Ordering::Relaxed))
            .arg("started_ms")
            .arg(self.started_ms)
            .ignore()
            .cmd("PEXPIRE")
            .arg(&key)
            .arg(millis((self.period() * 3).max(Duration::from_secs(1))))
            .ignore()
            .cmd("SADD")
            .arg(self.cluster.key("agents"))
            .arg(&self.id)
            .ignore();
        link.pipe(&pipe)
    }

    /// The reader thread.
    fn read(&self) {
        let mut link = self.cluster.link();
        while !self.stop.load(Ordering::Acquire) {
            let room = {
                let mut held = self.held();
                while held.len() >= self.limit() && !self.stop.load(Ordering::Acquire) {
                    held = self
                        .room
                        .wait_timeout(held, READ_BLOCK)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
                self.limit().saturating_sub(held.len())
            };
            if room == 0 {
                continue;
            }
            let r: Result<redis::Value, ClusterError> = link.run_blocking(
                redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg(GROUP)
                    .arg(&self.id)
                    .arg("COUNT")
                    .arg(room)
                    .arg("BLOCK")
                    .arg(millis(READ_BLOCK))
                    .arg("STREAMS")
                    .arg(&self.stream)
                    .arg(">"),
                READ_BLOCK,
            );
            match r {
                Ok(v) => {
                    for (id, fields) in stream_entries(&v) {
                        self.start(&mut link, id, fields.as_deref(), 1, None);
                    }
                }
                Err(ClusterError::Server(m)) if m.contains("NOGROUP") => {
                    // The server restarted empty: make the group again.
                    let _ = create_group(&mut link, &self.stream);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    fn done_tx(&self) -> mpsc::Sender<Done> {
        self.done_tx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether the producer of `pool` is alive (checked at most every
    /// 100 ms per pool).
    fn producer_alive(&self, link: &mut Link, pool: &str) -> bool {
        let mut cache = self.alive.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, alive)) = cache.get(pool)
            && at.elapsed() < Duration::from_millis(100)
        {
            return *alive;
        }
        let key = self.cluster.key(&format!("pool:{pool}:alive"));
        // On an error, assume alive: the completer's script checks again.
        let alive = link
            .run::<bool>(redis::cmd("EXISTS").arg(key))
            .unwrap_or(true);
        if cache.len() > 4096 {
            cache.clear();
        }
        cache.insert(pool.to_owned(), (Instant::now(), alive));
        alive
    }

    /// Starts (or refuses) one entry handed to this agent for the
    /// `deliveries`-th time.
    fn start(
        &self,
        link: &mut Link,
        id: String,
        fields: Option<&[(Vec<u8>, Vec<u8>)]>,
        deliveries: u64,
        previous: Option<&str>,
    ) {
        let tx = self.done_tx();
        let entry = match fields.map(TaskEntry::parse) {
            Some(Ok(e)) => e,
            // Deleted meanwhile, or not an entry of ours: nothing to answer.
            _ => {
                let _ = tx.send(Done {
                    entry: id,
                    pool: String::new(),
                    chunk: 0,
                    parts: None,
                });
                return;
            }
        };
        let fail_all = |failure: Failure| Done {
            entry: id.clone(),
            pool: entry.pool.clone(),
            chunk: entry.chunk,
            parts: Some(
                (0..entry.ends.len() as u64)
                    .map(|k| Part::Failed {
                        index: entry.first + k,
                        failure: failure.clone(),
                    })
                    .collect(),
            ),
        };
        if !self.producer_alive(link, &entry.pool) {
            let _ = tx.send(Done {
                entry: id,
                pool: entry.pool,
                chunk: entry.chunk,
                parts: None,
            });
            return;
        }
        if deliveries > u64::from(entry.max_deliveries) {
            let _ = tx.send(fail_all(Failure::WorkerLost {
                agent: previous.unwrap_or("").to_owned(),
                deliveries: deliveries - 1,
            }));
            return;
        }
        let task = match registry::registry().by_name(&entry.name) {
            Ok(t) => t,
            Err(Lookup::NotRegistered) => {
                let _ = tx.send(fail_all(Failure::NotRegistered(format!(
                    "agent {} has no task named {:?}",
                    self.id, entry.name
                ))));
                return;
            }
            Err(Lookup::Duplicate(name)) => {
                let _ = tx.send(fail_all(Failure::NotRegistered(format!(
                    "agent {} has two tasks named {name:?}",
                    self.id
                ))));
                return;
            }
        };
        if task.signature != entry.signature {
            let _ = tx.send(fail_all(Failure::BuildMismatch {
                expected: format!("{} with signature {}", entry.name, entry.signature),
                got: format!("signature {}", task.signature),
            }));
            return;
        }
        let ours = registry::build_fingerprint();
        if !entry.build.is_empty() && entry.build != ours {
            let _ = tx.send(fail_all(Failure::BuildMismatch {
                expected: entry.build.clone(),
                got: ours.to_owned(),
            }));
            return;
        }
        let items = match (&entry.items, &entry.blob) {
            (Some(items), _) => items.clone(),
            (None, Some(hash)) => {
                let got = link.run::<Option<Vec<u8>>>(redis::cmd("GET").arg(blob_key(
                    &self.cluster,
                    &entry.pool,
                    hash,
                )));
                match got {
                    Ok(Some(b)) if wire::check_ends(&entry.ends, b.len()).is_ok() => b,
                    Ok(Some(_)) => {
                        let _ = tx.send(fail_all(Failure::Protocol(
                            "the items' blob does not match its entry".into(),
                        )));
                        return;
                    }
                    Ok(None) => {
                        let _ = tx.send(fail_all(Failure::Protocol(
                            "the items' blob has expired".into(),
                        )));
                        return;
                    }
                    // Leave the entry: it is taken over after min_idle.
                    Err(_) => return,
                }
            }
            (None, None) => return,
        };
        let entry_first = entry.first as usize;
        let sink = Arc::new(RemoteSink {
            entry: id.clone(),
            pool: entry.pool.clone(),
            chunk: entry.chunk,
            count: entry.ends.len(),
            agent: self.id.clone(),
            state: Mutex::new((Vec::new(), 0, false)),
            cancelled: AtomicBool::new(false),
            done: tx,
        });
        let context = wire::Context {
            pool: entry.pool.clone(),
            entry: id.clone(),
            deliveries,
            agent: self.id.clone(),
        };
        let chunk = Chunk {
            context: postcard::to_stdvec(&context).ok().map(Into::into),
            arena: None,
            id: scheduler::next_id(),
            sink: Arc::clone(&sink) as Arc<dyn Sink>,
            preamble: task.entry.preamble(),
            key: None,
            first: entry.first as usize,
            items,
            ends: Ends::Each(entry.ends.iter().map(|&e| e as usize).collect()),
            timeout: entry.timeout_ms.map(Duration::from_millis),
        };
        self.held().insert(
            id,
            Held {
                pool: entry.pool,
                chunk: entry.chunk,
                sink: Arc::clone(&sink),
                started: Instant::now(),
            },
        );
        if let Err(e) = self.local.backend().submit(vec![chunk]) {
            // The local pool is broken: every item says so.
            let count = sink.count;
            for k in 0..count {
                sink.fail(entry_first + k, e.clone());
            }
        }
    }

    /// The completer thread.
    fn complete(&self, rx: mpsc::Receiver<Done>) {
        let mut link = self.cluster.link();
        let script = redis::Script::new(COMPLETE_LUA);
        let mut queue: Vec<Done> = Vec::new();
        loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(d) => queue.push(d),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            queue.extend(rx.try_iter());
            if queue.is_empty() {
                if self.finished.load(Ordering::Acquire) {
                    break;
                }
                continue;
            }
            let mut kept = Vec::new();
            let batch: Vec<Done> = std::mem::take(&mut queue);
            match self.send_batch(&mut link, &script, &batch) {
                Ok(()) => {
                    for d in &batch {
                        self.finish(d);
                    }
                }
                Err(e) if e.is_connection() => kept = batch,
                // A refused batch (a script the server lost in a restart,
                // one entry's keys of another type): one by one, so that
                // one bad entry does not hold up the rest.
                Err(_) => {
                    for d in batch {
                        match self.send_one(&mut link, &script, &d) {
                            Err(e) if e.is_connection() => kept.push(d),
                            _ => self.finish(&d),
                        }
                    }
                }
            }
            if !kept.is_empty() {
                if self.finished.load(Ordering::Acquire) {
                    // Stopping with the server out of reach: these entries
                    // are taken over by other agents after min_idle.
                    break;
                }
                queue = kept;
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// A chunk's completion was sent (or refused for good): its place is
    /// free.
    fn finish(&self, d: &Done) {
        self.count_done(d);
        let mut held = self.held();
        if let Some(h) = held.remove(&d.entry) {
            self.observe(h.started.elapsed());
        }
        drop(held);
        self.room.notify_all();
    }

    /// Learns how long chunks take, which sets how many to hold.
    fn observe(&self, took: Duration) {
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let old = self.typical_ns.load(Ordering::Relaxed);
        let new = if old == 0 { ns } else { old - old / 8 + ns / 8 };
        self.typical_ns.store(new, Ordering::Relaxed);
    }

    /// How many chunks the agent holds at once: two per slot, so that one
    /// agent does not hoard work another could do; more while chunks are
    /// quick (under 2 ms), where a round trip per chunk would be the cost.
    fn limit(&self) -> usize {
        let typical = self.typical_ns.load(Ordering::Relaxed);
        if typical != 0 && typical < 2_000_000 {
            self.slots * QUICK_PREFETCH
        } else {
            self.slots * 2
        }
    }

    /// Adds a finished chunk to the agent's record.
    fn count_done(&self, d: &Done) {
        let Some(parts) = &d.parts else { return };
        for p in parts {
            let (items, busy) = match p {
                Part::Values { count, busy_ns, .. } => (*count, *busy_ns),
                Part::Failed { .. } => (1, 0),
            };
            self.tasks_done.fetch_add(items, Ordering::Relaxed);
            self.busy_ns.fetch_add(busy, Ordering::Relaxed);
        }
    }

    /// The completion script's keys and arguments for `d` (storing a big
    /// reply in a blob first).
    fn completion(
        &self,
        link: &mut Link,
        d: &Done,
    ) -> Result<(Vec<String>, Vec<Vec<u8>>), ClusterError> {
        let reply = match &d.parts {
            None => Vec::new(),
            Some(parts) => {
                let mut reply = Reply {
                    entry: d.entry.clone(),
                    chunk: d.chunk,
                    agent: self.id.clone(),
                    body: Body::Parts(parts.clone()),
                };
                let mut bytes = postcard::to_stdvec(&reply).unwrap_or_default();
                if bytes.len() > DEFAULT_INLINE_LIMIT {
                    let inner = postcard::to_stdvec(parts).unwrap_or_default();
                    let hash = blob_hash(&inner);
                    link.run::<()>(
                        redis::cmd("SET")
                            .arg(blob_key(&self.cluster, &d.pool, &hash))
                            .arg(inner)
                            .arg("PX")
                            .arg(millis(Duration::from_secs(3600))),
                    )?;
                    reply.body = Body::Blob(hash);
                    bytes = postcard::to_stdvec(&reply).unwrap_or_default();
                }
                bytes
            }
        };
        let pool = if d.pool.is_empty() { "-" } else { &d.pool };
        let keys = vec![
            self.stream.clone(),
            self.cluster.key(&format!("pool:{pool}:results")),
            self.cluster.key(&format!("pool:{pool}:alive")),
        ];
        let args = vec![
            GROUP.as_bytes().to_vec(),
            self.id.as_bytes().to_vec(),
            d.entry.as_bytes().to_vec(),
            reply,
            millis(Duration::from_secs(3600)).to_string().into_bytes(),
        ];
        Ok((keys, args))
    }

    fn send_one(
        &self,
        link: &mut Link,
        script: &redis::Script,
        d: &Done,
    ) -> Result<(), ClusterError> {
        let (keys, args) = self.completion(link, d)?;
        let mut call = script.prepare_invoke();
        for k in &keys {
            call.key(k);
        }
        for a in &args {
            call.arg(a);
        }
        link.script::<i64>(&call).map(|_| ())
    }

    /// Sends the completions of `batch` in one pipeline of `EVALSHA`s
    /// (loading the script first if the server lacks it).
    fn send_batch(
        &self,
        link: &mut Link,
        script: &redis::Script,
        batch: &[Done],
    ) -> Result<(), ClusterError> {
        if let [one] = batch {
            return self.send_one(link, script, one);
        }
        let mut pipe = redis::pipe();
        for d in batch {
            let (keys, args) = self.completion(link, d)?;
            let cmd = pipe
                .cmd("EVALSHA")
                .arg(script.get_hash())
                .arg(keys.len())
                .arg(&keys);
            for a in &args {
                cmd.arg(a);
            }
            cmd.ignore();
        }
        match link.pipe::<()>(&pipe) {
            Err(ClusterError::Server(m)) if m.contains("NOSCRIPT") => {
                link.run::<String>(redis::cmd("SCRIPT").arg("LOAD").arg(COMPLETE_LUA))?;
                link.pipe::<()>(&pipe)
            }
            other => other,
        }
    }

    /// The heartbeat thread.
    fn beat(&self) {
        let mut link = self.cluster.link();
        let touch = redis::Script::new(TOUCH_LUA);
        while !self.finished.load(Ordering::Acquire) {
            let started = Instant::now();
            let _ = self.beat_once(&mut link, &touch);
            let period = self.period();
            let spent = started.elapsed();
            if spent < period {
                std::thread::sleep(period - spent);
            }
        }
    }

    fn beat_once(&self, link: &mut Link, touch: &redis::Script) -> Result<(), ClusterError> {
        let ms: Option<u64> = link.run(
            redis::cmd("HGET")
                .arg(self.cluster.key("config"))
                .arg("min_idle_ms"),
        )?;
        let min_idle = ms.map_or(super::DEFAULT_MIN_IDLE, Duration::from_millis);
        self.min_idle_ms.store(millis(min_idle), Ordering::Relaxed);
        self.publish(link)?;
        // Keep what we hold; stop what we lost.
        let held: Vec<(String, String, u64)> = self
            .held()
            .iter()
            .map(|(id, h)| (id.clone(), h.pool.clone(), h.chunk))
            .collect();
        if !held.is_empty() {
            let mut call = touch.prepare_invoke();
            call.key(&self.stream).arg(GROUP).arg(&self.id);
            for (id, _, _) in &held {
                call.arg(id);
            }
            let lost: Vec<String> = link.script(&call)?;
            let mut stop: HashSet<String> = lost.into_iter().collect();
            // Chunks whose producer died or that were cancelled.
            let pools: HashSet<&String> = held.iter().map(|(_, p, _)| p).collect();
            for pool in pools {
                let key = self.cluster.key(&format!("pool:{pool}:alive"));
                let alive: bool = link.run(redis::cmd("EXISTS").arg(key))?;
                let mine: Vec<&(String, String, u64)> =
                    held.iter().filter(|(_, p, _)| p == pool).collect();
                if !alive {
                    stop.extend(mine.iter().map(|(id, _, _)| id.clone()));
                    continue;
                }
                let mut ismember = redis::cmd("SMISMEMBER");
                ismember.arg(self.cluster.key(&format!("pool:{pool}:cancelled")));
                for (_, _, chunk) in &mine {
                    ismember.arg(*chunk);
                }
                let flags: Vec<bool> = link.run(&ismember)?;
                for ((id, _, _), cancelled) in mine.iter().zip(flags) {
                    if cancelled {
                        stop.insert(id.clone());
                    }
                }
            }
            if !stop.is_empty() {
                let held = self.held();
                for id in &stop {
                    if let Some(h) = held.get(id) {
                        h.sink.cancelled.store(true, Ordering::Release);
                    }
                }
                drop(held);
                self.local.backend().cancelled();
            }
        }
        if !self.stop.load(Ordering::Acquire) {
            self.reclaim(link, min_idle)?;
        }
        Ok(())
    }

    /// Takes over entries idle longer than `min_idle`: their agent died
    /// or stalled.
    fn reclaim(&self, link: &mut Link, min_idle: Duration) -> Result<(), ClusterError> {
        // Take-over may go past the reader's limit by a slot's worth: a
        // dead agent's chunks must not wait behind the whole backlog the
        // reader keeps refilling.
        let room = (self.limit() + self.slots).saturating_sub(self.held().len());
        if room == 0 {
            return Ok(());
        }
        let idle: Vec<(String, String, u64, u64)> = link.run(
            redis::cmd("XPENDING")
                .arg(&self.stream)
                .arg(GROUP)
                .arg("IDLE")
                .arg(millis(min_idle))
                .arg("-")
                .arg("+")
                .arg(room),
        )?;
        for (id, owner, _idle, deliveries) in idle {
            if owner == self.id {
                continue;
            }
            let claimed: redis::Value = link.run(
                redis::cmd("XCLAIM")
                    .arg(&self.stream)
                    .arg(GROUP)
                    .arg(&self.id)
                    .arg(millis(min_idle))
                    .arg(&id),
            )?;
            for (cid, fields) in claimed_entries(&claimed) {
                self.start(
                    link,
                    cid,
                    fields.as_deref(),
                    deliveries.saturating_add(1),
                    Some(&owner),
                );
            }
        }
        Ok(())
    }
}

type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// The entries of an `XREADGROUP` answer (one stream).
fn stream_entries(v: &redis::Value) -> Vec<(String, Option<Fields>)> {
    let redis::Value::Array(streams) = v else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for s in streams {
        if let redis::Value::Array(pair) = s
            && let [_, entries] = pair.as_slice()
        {
            out.extend(claimed_entries(entries));
        }
    }
    out
}

/// The entries of an array of `[id, [field, value, …]]` (an `XCLAIM`
/// answer, or one stream of an `XREADGROUP` answer). An entry deleted
/// meanwhile has no fields.
fn claimed_entries(v: &redis::Value) -> Vec<(String, Option<Fields>)> {
    let redis::Value::Array(entries) = v else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries {
        let redis::Value::Array(pair) = e else {
            continue;
        };
        let [id, fields] = pair.as_slice() else {
            continue;
        };
        let id = match id {
            redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
            redis::Value::SimpleString(s) => s.clone(),
            _ => continue,
        };
        let fields = match fields {
            redis::Value::Array(kv) => {
                let mut f = Vec::new();
                for pair in kv.chunks(2) {
                    if let [redis::Value::BulkString(k), redis::Value::BulkString(v)] = pair {
                        f.push((k.clone(), v.clone()));
                    }
                }
                Some(f)
            }
            _ => None,
        };
        out.push((id, fields));
    }
    out
}

/// An agent process on this machine: this very program, started again
/// with `MULTIPROC_CLUSTER`, as a user would start it on another host. For
/// tests, examples and one-machine use. The kernel kills it if this
/// process dies; dropping the handle kills it too (SIGKILL: what it held
/// is taken over by other agents after `min_idle`).
#[derive(Debug)]
pub struct LocalAgent {
    child: Option<std::process::Child>,
    pid: u32,
}

/// How long [`LocalAgent::start`] waits for the agent's first heartbeat.
const AGENT_START_TIMEOUT: Duration = Duration::from_secs(20);

impl LocalAgent {
    /// Starts an agent with `slots` slots serving `cluster`'s namespace,
    /// and waits until its record is on the server.
    pub fn start(cluster: &Cluster, slots: usize) -> Result<LocalAgent, PoolError> {
        let mut cmd = std::process::Command::new("/proc/self/exe");
        cmd.env(CLUSTER_ENV, cluster.full_url())
            .env(NAMESPACE_ENV, cluster.namespace_name())
            .env(SLOTS_ENV, slots.to_string())
            .envs(cluster.agent_env())
            .stdin(std::process::Stdio::null());
        let child = crate::process::launcher::run(move || {
            crate::sys::process::spawn_dying_with_caller(&mut cmd)
        })?;
        let pid = child.id();
        let mut agent = LocalAgent {
            child: Some(child),
            pid,
        };
        let end = Instant::now() + AGENT_START_TIMEOUT;
        loop {
            if live_agents(cluster)?
                .iter()
                .any(|a| a.pid == pid as i32 && a.host == host_name())
            {
                return Ok(agent);
            }
            if let Some(child) = &mut agent.child
                && let Some(status) = child.try_wait()?
            {
                agent.child = None;
                return Err(PoolError::Io(std::io::Error::other(format!(
                    "the agent exited at start: {status}"
                ))));
            }
            if Instant::now() > end {
                return Err(PoolError::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the agent did not register within 20 s",
                )));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Kills it (SIGKILL), as a crash or the OOM killer would, and reaps
    /// it.
    pub fn kill(&mut self) -> std::io::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }
}

impl Drop for LocalAgent {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}
