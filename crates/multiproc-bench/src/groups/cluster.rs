//! Group `cluster` (issue 16): multiproc's cluster pool on a private
//! `redis-server` against Celery on the same server, with raw floors that
//! send the same Redis commands with no library around them.
//!
//! Setup: one [`LocalServer`] (a `redis-server` on a Unix socket, nothing
//! on disk) for the whole group. Our side has two agents, each this very
//! program started again with `MULTIPROC_CLUSTER` ([`LocalAgent`]), one
//! slot each (two cores: each agent runs its tasks in a local pool of one
//! worker process), serving namespace `bench` with the default `min_idle`.
//! The raw floors have two agent processes of their own (children started
//! with forkserver), blocked on their own stream while ours are measured
//! and the other way round.
//!
//! * `cluster_map/trivial_100k` (items/s): `pool.map(incr, 0..100_000)`
//!   with the default chunking (64 chunks of 1,563 items over 2 slots).
//!   Raw: the producer `XADD`s the same 64 chunks in one pipeline (items
//!   as little-endian `u64`s), each raw agent `XREADGROUP`s up to two
//!   entries at a time (as ours: two per slot), adds 1 to every item and
//!   completes each entry with the same owner-checked script as our
//!   agents (`XPENDING`, `RPUSH`, `XACK`, `XDEL`); the producer takes the
//!   replies with `BLPOP` and `LPOP 1000`.
//! * `cluster_map/chunksize1` (items/s): the same with chunk size 1
//!   (one stream entry per item) over [`Plan::c1_items`] items.
//! * `cluster_map/trivial_100k_chunks` (items/s): Celery's
//!   `incr.chunks(...)` with our default chunk size, against the same
//!   samples as `trivial_100k` on our side: what a Celery user who knows
//!   to batch would write.
//! * `cluster_submit_latency/idle` (ms): one `pool.submit(incr, x).get()`
//!   on idle agents, per operation. Raw: one `XADD` of a one-item entry,
//!   the agent's `XREADGROUP` and completion script, and the producer's
//!   `BLPOP`. Ours and raw alternate, one operation each in turn.
//! * `cluster_dict/set`, `cluster_dict/get` (ops/s), `cluster_dict/
//!   update_1000` (ms), `cluster_lock/uncontended` (us),
//!   `cluster_queue/roundtrip` (us): the named objects from one client
//!   (a queue ping-pong with an echo child); raw: the same commands and
//!   scripts on one plain connection. No Celery row.
//! * `cluster_recovery/agent_sigkill` (ms): namespace `recovery` with
//!   `min_idle` 250 ms and two fresh agents per repetition; a map of
//!   [`RECOVERY_ITEMS`] items of 5 ms each in chunks of 16; 150 ms into it
//!   one agent is SIGKILLed. A sample is the time from the kill to the
//!   end of the last item that was handed out again (delivery count above
//!   one, read with `cluster::current_task()` inside the task), i.e. to
//!   its last task done elsewhere. `cluster_recovery/lost` (tasks): items
//!   without a right result, per repetition (must be 0);
//!   `cluster_recovery/rerun` (tasks): item executions beyond one per
//!   item (every run of an item appends a line to a log file). No Celery
//!   baseline (by default Celery acknowledges a task as it starts it: a
//!   killed worker's running task is lost, and the ones it had prefetched
//!   come back after the Redis transport's visibility timeout, an hour).
//!
//! Celery (`python/cluster_bench.py`, run afterwards, once our agents are
//! gone, on the same server): a prefork worker with `--concurrency 2`
//! (what `celery worker` starts on this 2-core machine), the Redis broker
//! and result backend on the server's socket, installed into a venv under
//! the target directory on first use ([`celery_python`]).

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use multiproc::cluster::{Cluster, LocalAgent, LocalServer, current_task};
use multiproc::{Pool, Process, StartMethod};
use serde::{Deserialize, Serialize};

use super::Options;
use crate::measure;
use crate::report::{self, Impl, Measurement, Row};
use crate::rig;

/// The group's name on the command line and in the output.
pub const NAME: &str = "cluster";

/// Items of `cluster_map/trivial_100k`.
const MAP_ITEMS: u64 = 100_000;

/// Chunks of a map of known length on 2 slots (`PER_WORKER` 16 x 2
/// workers, at least 64: the local pool's chunker), for the raw floor and
/// Celery's `chunks`.
const DEFAULT_CHUNKS: u64 = 64;

/// Agents on each side, and the slots of each of ours.
const AGENTS: usize = 2;
const SLOTS: usize = 1;

/// Entries a raw agent holds at once (ours: two per slot).
const RAW_HOLD: usize = 2 * SLOTS;

/// Items of a recovery map, how long each takes, and its chunk size.
const RECOVERY_ITEMS: u64 = 128;
const RECOVERY_ITEM_MS: u64 = 5;
const RECOVERY_CHUNK: usize = 16;
/// When the victim is killed, after the map starts.
const RECOVERY_KILL_AFTER: Duration = Duration::from_millis(150);
/// The recovery namespace's `min_idle`.
const RECOVERY_MIN_IDLE: Duration = Duration::from_millis(250);

/// How long a map, a task or a raw reply may take before the bench gives
/// up.
const OP_TIMEOUT: Duration = Duration::from_secs(60);

/// The Celery requirements, pinned (installed into the venv).
const REQUIREMENTS: &str = include_str!("../../python/cluster-requirements.txt");

/// Repetitions and sizes of one run.
#[derive(Debug, Clone, Copy)]
struct Plan {
    /// Timed maps per implementation and param.
    map_reps: usize,
    /// Items of the chunk-size-1 maps.
    c1_items: u64,
    /// Timed submit+get operations per implementation.
    latency_ops: usize,
    /// Recovery repetitions (a victim each).
    recovery_reps: usize,
    /// Batches of the named objects' single operations, per implementation.
    object_batches: usize,
    /// Timed dict updates of 1000 pairs, per implementation.
    update_ops: usize,
    /// Items of Celery's group (far fewer than 100k: it runs a few hundred
    /// a second).
    celery_group_items: u64,
    /// Timed runs of each Celery map.
    celery_reps: usize,
    /// Celery's submit+get operations.
    celery_latency_ops: usize,
    /// How long the Celery script may run.
    python_timeout: Duration,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                map_reps: 3,
                c1_items: 10_000,
                latency_ops: 100,
                recovery_reps: 3,
                object_batches: 15,
                update_ops: 20,
                celery_group_items: 1_000,
                celery_reps: 3,
                celery_latency_ops: 50,
                python_timeout: Duration::from_secs(240),
            }
        } else {
            Plan {
                map_reps: 9,
                c1_items: 20_000,
                latency_ops: 300,
                recovery_reps: 7,
                object_batches: 40,
                update_ops: 60,
                celery_group_items: 2_000,
                celery_reps: 5,
                celery_latency_ops: 200,
                python_timeout: Duration::from_secs(600),
            }
        }
    }

    /// The options of `python/cluster_bench.py`.
    fn python_args(&self, socket: &Path) -> Vec<String> {
        [
            ("--redis-socket", socket.display().to_string()),
            ("--reps", self.celery_reps.to_string()),
            ("--group-items", self.celery_group_items.to_string()),
            ("--chunks-items", MAP_ITEMS.to_string()),
            (
                "--chunk-size",
                MAP_ITEMS.div_ceil(DEFAULT_CHUNKS).to_string(),
            ),
            ("--latency-ops", self.celery_latency_ops.to_string()),
        ]
        .into_iter()
        .flat_map(|(k, v)| [k.to_string(), v])
        .collect()
    }
}

/// The trivial task of the maps and the latency bench.
#[multiproc::task]
fn incr(x: u64) -> u64 {
    x + 1
}

/// A recovery item `(index, ms, log)`: appends `index` to the file `log`
/// (one line per run), sleeps `ms`, and returns its delivery count and
/// when it ended (ns since the Unix epoch).
#[multiproc::task]
fn recovery_item((index, ms, log): (u64, u64, String)) -> (u64, u64) {
    let deliveries = current_task().map_or(0, |t| t.deliveries);
    if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(&log) {
        // One write of one short line: appends do not interleave.
        let _ = f.write_all(format!("{index}\n").as_bytes());
    }
    std::thread::sleep(Duration::from_millis(ms));
    (deliveries, unix_ns())
}

fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Runs the group: ours and the raw floors interleaved, recovery, then
/// Celery.
pub fn run(opts: &Options) -> Vec<Row> {
    let plan = Plan::new(opts.quick);
    let server = match LocalServer::start() {
        Ok(s) => s,
        Err(e) => {
            let why = if e.kind() == std::io::ErrorKind::NotFound {
                "redis-server is not installed (apt-get install redis-server)".to_string()
            } else {
                format!("redis-server did not start: {e}")
            };
            return unavailable(&why);
        }
    };
    opts.progress(NAME, &format!("redis-server at {}", server.url()));

    let (ours, mut raw) = measure_ours_and_raw(opts, &server, &plan);
    let (objects, objects_raw) = objects(opts, &server, &plan);
    raw.extend(objects_raw);
    opts.progress(
        NAME,
        &format!(
            "cluster_recovery agent_sigkill: {} kills, min_idle {} ms",
            plan.recovery_reps,
            RECOVERY_MIN_IDLE.as_millis()
        ),
    );
    let recovery = recovery(opts, &server, plan.recovery_reps);

    let python = match celery_python(opts) {
        Ok(program) => {
            opts.progress(NAME, "celery (cluster_bench.py)");
            opts.python.with_program(program).run(
                "cluster_bench.py",
                &plan.python_args(server.socket()),
                plan.python_timeout,
            )
        }
        Err(e) => crate::python::PythonOutput {
            measurements: Vec::new(),
            failure: Some(format!("Celery could not be installed: {e}")),
        },
    };
    drop(server);
    let rows = report::pair(NAME, ours, python.measurements, python.failure.as_deref());
    let mut rows = rows;
    rows.extend(
        objects
            .into_iter()
            .chain(recovery)
            .map(|m| Row::from_measurement(NAME, Impl::Multiproc, m)),
    );
    report::add_raw(NAME, rows, raw)
}

/// Every bench's multiproc row, failed with `why`.
fn unavailable(why: &str) -> Vec<Row> {
    let mut rows = Vec::new();
    for (bench, param, unit) in [
        ("cluster_map", "trivial_100k", "items/s"),
        ("cluster_map", "chunksize1", "items/s"),
        ("cluster_map", "trivial_100k_chunks", "items/s"),
        ("cluster_submit_latency", "idle", "ms"),
        ("cluster_dict", "set", "ops/s"),
        ("cluster_dict", "get", "ops/s"),
        ("cluster_dict", "update_1000", "ms"),
        ("cluster_lock", "uncontended", "us"),
        ("cluster_queue", "roundtrip", "us"),
        ("cluster_recovery", "agent_sigkill", "ms"),
    ] {
        rows.push(Row::from_measurement(
            NAME,
            Impl::Multiproc,
            Measurement::new(bench, param, unit, Err(why.to_string())),
        ));
    }
    rows
}

/// The maps and the submit latency, ours and raw interleaved. Returns our
/// measurements and the raw ones.
fn measure_ours_and_raw(
    opts: &Options,
    server: &LocalServer,
    plan: &Plan,
) -> (Vec<Measurement>, Vec<Measurement>) {
    let benches = [
        ("cluster_map", "trivial_100k", "items/s"),
        ("cluster_map", "chunksize1", "items/s"),
        ("cluster_map", "trivial_100k_chunks", "items/s"),
        ("cluster_submit_latency", "idle", "ms"),
    ];
    let failed = |why: String| -> (Vec<Measurement>, Vec<Measurement>) {
        let ours = benches
            .iter()
            .map(|(b, p, u)| Measurement::new(b, p, u, Err(why.clone())))
            .collect();
        let raw = benches
            .iter()
            .filter(|(_, p, _)| *p != "trivial_100k_chunks")
            .map(|(b, p, u)| Measurement::new(b, p, u, Err(why.clone())))
            .collect();
        (ours, raw)
    };
    let ours = match Ours::start(server) {
        Ok(o) => o,
        Err(e) => return failed(format!("the cluster pool did not start: {e}")),
    };
    let mut raw = match RawRig::start(server) {
        Ok(r) => r,
        Err(e) => return failed(format!("the raw agents did not start: {e}")),
    };
    opts.progress(
        NAME,
        &format!(
            "{AGENTS} agents of {SLOTS} slot each (ours) and {AGENTS} raw agents ready; \
             cluster_map trivial_100k: ours and raw, {} maps each",
            plan.map_reps
        ),
    );
    let default_chunk = MAP_ITEMS.div_ceil(DEFAULT_CHUNKS) as usize;
    let [m100k, r100k] = interleaved(
        plan.map_reps,
        [&mut || ours.map(MAP_ITEMS, None), &mut || {
            raw.map(MAP_ITEMS, default_chunk)
        }],
    );
    opts.progress(
        NAME,
        &format!(
            "cluster_map chunksize1: ours and raw, {} maps of {} items each",
            plan.map_reps, plan.c1_items
        ),
    );
    let [m1, r1] = interleaved(
        plan.map_reps,
        [&mut || ours.map(plan.c1_items, Some(1)), &mut || {
            raw.map(plan.c1_items, 1)
        }],
    );
    opts.progress(
        NAME,
        &format!(
            "cluster_submit_latency idle: ours and raw, {} operations each",
            plan.latency_ops
        ),
    );
    let mut x = 0;
    let mut y = 0;
    let mut ours_op = || {
        x += 1;
        ours.submit_get(x)
    };
    let mut raw_op = || {
        y += 1;
        raw.submit_get(y)
    };
    let ops: &mut [&mut dyn FnMut() -> Result<(), String>] = &mut [&mut ours_op, &mut raw_op];
    let mut lat = measure::per_op_us(20, plan.latency_ops, 1, ops, &mut || {})
        .into_iter()
        .map(|r| r.map(|us| us.into_iter().map(|u| u / 1e3).collect::<Vec<f64>>()));
    let (ml, rl) = (
        lat.next().unwrap_or_else(|| Err("not measured".into())),
        lat.next().unwrap_or_else(|| Err("not measured".into())),
    );
    let raw_end = raw.finish();
    drop(ours);
    let r = |result: Result<Vec<f64>, String>| match (&raw_end, result) {
        (Err(e), Ok(_)) => Err(e.clone()),
        (_, r) => r,
    };
    let ours = vec![
        Measurement::new("cluster_map", "trivial_100k", "items/s", m100k.clone()),
        Measurement::new("cluster_map", "chunksize1", "items/s", m1),
        Measurement::new("cluster_map", "trivial_100k_chunks", "items/s", m100k),
        Measurement::new("cluster_submit_latency", "idle", "ms", ml),
    ];
    let raw = vec![
        Measurement::new("cluster_map", "trivial_100k", "items/s", r(r100k)),
        Measurement::new("cluster_map", "chunksize1", "items/s", r(r1)),
        Measurement::new("cluster_submit_latency", "idle", "ms", r(rl)),
    ];
    (ours, raw)
}

/// One warm-up run of each, then `reps` rounds in which each runs once;
/// each run returns a sample. A run that fails leaves the rotation with
/// its error.
fn interleaved<const N: usize>(
    reps: usize,
    mut runs: [&mut dyn FnMut() -> Result<f64, String>; N],
) -> [Result<Vec<f64>, String>; N] {
    let mut out: [Result<Vec<f64>, String>; N] =
        std::array::from_fn(|i| runs[i]().map(|_| Vec::with_capacity(reps)));
    for _ in 0..reps {
        for (run, result) in runs.iter_mut().zip(&mut out) {
            let Ok(samples) = result else { continue };
            match run() {
                Ok(s) => samples.push(s),
                Err(e) => *result = Err(e),
            }
        }
    }
    out
}

/// Our side: the agents and a pool on them (dropped in this order).
struct Ours {
    pool: Pool,
    _agents: Vec<LocalAgent>,
}

impl Ours {
    fn start(server: &LocalServer) -> Result<Ours, String> {
        let cluster = Cluster::connect(&server.url())
            .and_then(|c| c.namespace("bench"))
            .map_err(|e| e.to_string())?;
        let agents = (0..AGENTS)
            .map(|_| LocalAgent::start(&cluster, SLOTS))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        let pool = cluster.pool().build().map_err(|e| e.to_string())?;
        Ok(Ours {
            pool,
            _agents: agents,
        })
    }

    /// Maps `incr` over `0..items`, checks the results; items per second.
    fn map(&self, items: u64, chunksize: Option<usize>) -> Result<f64, String> {
        let task = self.pool.task(incr);
        let task = match chunksize {
            Some(n) => task.chunksize(n),
            None => task,
        };
        let t0 = Instant::now();
        let out = task.map(0..items).map_err(|e| format!("map failed: {e}"))?;
        let took = t0.elapsed().as_secs_f64();
        if out.len() as u64 != items || !out.into_iter().eq(1..=items) {
            return Err("the map returned wrong results".to_string());
        }
        Ok(items as f64 / took)
    }

    fn submit_get(&self, x: u64) -> Result<(), String> {
        match self.pool.submit(incr, x).get_timeout(OP_TIMEOUT) {
            Ok(y) if y == x + 1 => Ok(()),
            Ok(y) => Err(format!("incr({x}) gave {y}")),
            Err(e) => Err(format!("submit+get failed: {e:?}")),
        }
    }
}

/// The raw floor's keys.
const RAW_STREAM: &str = "raw:tasks";
const RAW_RESULTS: &str = "raw:results";
const RAW_ALIVE: &str = "raw:alive";
const RAW_STOP: &str = "raw:stop";
const RAW_GROUP: &str = "workers";

/// Our agents' completion script (`COMPLETE_LUA` in
/// `multiproc::cluster::worker`): push the reply only while this consumer
/// still owns the entry, then acknowledge and delete it.
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

/// The raw floor: its agents and the producer's connection.
struct RawRig {
    agents: Vec<Process<()>>,
    conn: redis::Connection,
}

/// What a raw agent is told.
#[derive(Serialize, Deserialize)]
struct RawAgentArgs {
    url: String,
    consumer: String,
}

fn connect(url: &str) -> Result<redis::Connection, String> {
    redis::Client::open(url)
        .and_then(|c| c.get_connection())
        .map_err(|e| format!("cannot connect to {url}: {e}"))
}

impl RawRig {
    fn start(server: &LocalServer) -> Result<RawRig, String> {
        let url = server.url();
        let mut conn = connect(&url)?;
        let created: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(RAW_STREAM)
            .arg(RAW_GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query(&mut conn);
        created.map_err(|e| format!("XGROUP CREATE failed: {e}"))?;
        redis::cmd("SET")
            .arg(RAW_ALIVE)
            .arg(1)
            .query::<()>(&mut conn)
            .map_err(|e| format!("SET failed: {e}"))?;
        let mut agents = Vec::new();
        for i in 0..AGENTS {
            let args = RawAgentArgs {
                url: url.clone(),
                consumer: format!("raw-{i}"),
            };
            match rig::start(StartMethod::ForkServer, raw_agent, args) {
                Ok(p) => agents.push(p),
                Err(e) => {
                    let _ = rig::end(agents, Err::<(), _>(e.clone()));
                    return Err(e);
                }
            }
        }
        Ok(RawRig { agents, conn })
    }

    /// The producer's side of a map of `items` items in chunks of `chunk`:
    /// every entry in one pipeline, then the replies. Items per second.
    fn map(&mut self, items: u64, chunk: usize) -> Result<f64, String> {
        let conn = &mut self.conn;
        let t0 = Instant::now();
        let mut pipe = redis::pipe();
        let mut first = 0u64;
        let mut entries = 0usize;
        while first < items {
            let end = (first + chunk as u64).min(items);
            let bytes: Vec<u8> = (first..end).flat_map(u64::to_le_bytes).collect();
            pipe.cmd("XADD")
                .arg(RAW_STREAM)
                .arg("*")
                .arg("f")
                .arg(first)
                .arg("i")
                .arg(bytes)
                .ignore();
            entries += 1;
            first = end;
        }
        pipe.query::<()>(conn)
            .map_err(|e| format!("XADD pipeline failed: {e}"))?;
        let mut out = vec![0u64; items as usize];
        let mut got = 0usize;
        while got < entries {
            for reply in take_replies(conn)? {
                if reply.len() < 8 || reply.len() % 8 != 0 {
                    return Err("a raw reply is malformed".to_string());
                }
                let first = u64::from_le_bytes(reply[..8].try_into().unwrap_or_default());
                for (k, v) in reply[8..].chunks_exact(8).enumerate() {
                    let i = first as usize + k;
                    if let Some(slot) = out.get_mut(i) {
                        *slot = u64::from_le_bytes(v.try_into().unwrap_or_default());
                    }
                }
                got += 1;
            }
        }
        let took = t0.elapsed().as_secs_f64();
        if !out.into_iter().eq(1..=items) {
            return Err("the raw map returned wrong results".to_string());
        }
        Ok(items as f64 / took)
    }

    /// One entry of one item, and its reply.
    fn submit_get(&mut self, x: u64) -> Result<(), String> {
        let conn = &mut self.conn;
        redis::cmd("XADD")
            .arg(RAW_STREAM)
            .arg("*")
            .arg("f")
            .arg(0)
            .arg("i")
            .arg(&x.to_le_bytes()[..])
            .query::<()>(conn)
            .map_err(|e| format!("XADD failed: {e}"))?;
        let replies = take_replies(conn)?;
        match replies.as_slice() {
            [r] if r.len() == 16 && r[8..] == (x + 1).to_le_bytes() => Ok(()),
            _ => Err("a raw reply is wrong".to_string()),
        }
    }

    /// Stops the raw agents (a stop key, and one wake-up entry each) and
    /// reaps them.
    fn finish(self) -> Result<(), String> {
        let RawRig { agents, mut conn } = self;
        let mut pipe = redis::pipe();
        pipe.cmd("SET").arg(RAW_STOP).arg(1).ignore();
        for _ in 0..AGENTS {
            pipe.cmd("XADD")
                .arg(RAW_STREAM)
                .arg("*")
                .arg("w")
                .arg(1)
                .ignore();
        }
        let stopped = pipe
            .query::<()>(&mut conn)
            .map_err(|e| format!("stopping the raw agents failed: {e}"));
        rig::end(agents, stopped)
    }
}

/// The replies waiting (at least one): `BLPOP`, then `LPOP 1000`.
fn take_replies(conn: &mut redis::Connection) -> Result<Vec<Vec<u8>>, String> {
    let first: Option<(String, Vec<u8>)> = redis::cmd("BLPOP")
        .arg(RAW_RESULTS)
        .arg(OP_TIMEOUT.as_secs())
        .query(conn)
        .map_err(|e| format!("BLPOP failed: {e}"))?;
    let Some((_, first)) = first else {
        return Err(format!("no raw reply within {} s", OP_TIMEOUT.as_secs()));
    };
    let more: Option<Vec<Vec<u8>>> = redis::cmd("LPOP")
        .arg(RAW_RESULTS)
        .arg(1000)
        .query(conn)
        .map_err(|e| format!("LPOP failed: {e}"))?;
    let mut all = vec![first];
    all.extend(more.unwrap_or_default());
    Ok(all)
}

/// A raw agent: reads up to [`RAW_HOLD`] entries at a time, adds 1 to
/// each item and completes each entry with [`COMPLETE_LUA`], until it
/// finds the stop key set (checked when a read times out or brings a
/// wake-up entry).
fn raw_agent(args: RawAgentArgs) {
    let Ok(mut conn) = connect(&args.url) else {
        return;
    };
    let script = redis::Script::new(COMPLETE_LUA);
    loop {
        let read: redis::RedisResult<redis::Value> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(RAW_GROUP)
            .arg(&args.consumer)
            .arg("COUNT")
            .arg(RAW_HOLD)
            .arg("BLOCK")
            .arg(250)
            .arg("STREAMS")
            .arg(RAW_STREAM)
            .arg(">")
            .query(&mut conn);
        let Ok(read) = read else { return };
        let entries = stream_entries(&read);
        let mut check_stop = entries.is_empty();
        for (id, fields) in entries {
            let field = |name: &[u8]| {
                fields
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.as_slice())
            };
            let reply = match (field(b"f"), field(b"i")) {
                (Some(first), Some(items)) => {
                    let first: u64 = std::str::from_utf8(first)
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0);
                    let mut reply = first.to_le_bytes().to_vec();
                    for x in items.chunks_exact(8) {
                        let x = u64::from_le_bytes(x.try_into().unwrap_or_default());
                        reply.extend_from_slice(&(x + 1).to_le_bytes());
                    }
                    reply
                }
                _ => {
                    check_stop = true;
                    Vec::new()
                }
            };
            let done: redis::RedisResult<i64> = script
                .key(RAW_STREAM)
                .key(RAW_RESULTS)
                .key(RAW_ALIVE)
                .arg(RAW_GROUP)
                .arg(&args.consumer)
                .arg(&id)
                .arg(reply)
                .arg(3_600_000)
                .invoke(&mut conn);
            if done.is_err() {
                return;
            }
        }
        if check_stop {
            match redis::cmd("EXISTS").arg(RAW_STOP).query::<bool>(&mut conn) {
                Ok(false) => {}
                _ => return,
            }
        }
    }
}

type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// The entries of an `XREADGROUP` answer on one stream.
fn stream_entries(v: &redis::Value) -> Vec<(String, Fields)> {
    use redis::Value;
    let mut out = Vec::new();
    let Value::Array(streams) = v else {
        return out;
    };
    for s in streams {
        let Value::Array(pair) = s else { continue };
        let [_, Value::Array(entries)] = pair.as_slice() else {
            continue;
        };
        for e in entries {
            let Value::Array(e) = e else { continue };
            let [Value::BulkString(id), Value::Array(kv)] = e.as_slice() else {
                continue;
            };
            let fields = kv
                .chunks(2)
                .filter_map(|p| match p {
                    [Value::BulkString(k), Value::BulkString(v)] => Some((k.clone(), v.clone())),
                    _ => None,
                })
                .collect();
            out.push((String::from_utf8_lossy(id).into_owned(), fields));
        }
    }
    out
}

/// Keys of the named objects' raw floors.
const RAW_DICT: &str = "rawobj:dict";
const RAW_LOCK: &str = "rawobj:lock";
const RAW_FENCE: &str = "rawobj:lock.fence";
const RAW_LOCK_WAKE: &str = "rawobj:lock.wake";
const RAW_PING: [&str; 2] = ["rawobj:ping", "rawobj:ping.meta"];
const RAW_PONG: [&str; 2] = ["rawobj:pong", "rawobj:pong.meta"];

/// The helpers our objects' scripts start with (`LUA_NUM` in
/// `multiproc::cluster::objects`).
const LUA_PRELUDE: &str = r#"local MAX_TOKENS = 16

local function num(v, dflt, what)
  if not v then return dflt end
  local n = tonumber(v)
  if not n then
    error({err = 'WRONGTYPE ' .. what .. ' does not hold a number'})
  end
  return n
end
local function wake(key)
  redis.call('RPUSH', key, '1')
  redis.call('LTRIM', key, -MAX_TOKENS, -1)
end
"#;

/// Our objects' scripts, for the raw floors: a dict's insert, the lock's
/// acquire and release, a queue's put.
const DICT_INSERT_LUA: &str = r#"
local old = redis.call('HGET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return old
"#;
const LOCK_ACQUIRE_LUA: &str = r#"
local pttl = redis.call('PTTL', KEYS[1])
if pttl == -2 then
  num(redis.call('GET', KEYS[2]), 0, 'the fencing counter')
  local t = redis.call('INCR', KEYS[2])
  redis.call('SET', KEYS[1], ARGV[1] .. ':' .. t, 'PX', ARGV[2])
  return {1, t}
end
if pttl < 0 then
  error({err = 'WRONGTYPE the lock is held without a lease: it was not set by multiproc'})
end
return {0, pttl}
"#;
const LOCK_RELEASE_LUA: &str = r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
wake(KEYS[2])
return 1
"#;
const QUEUE_PUT_LUA: &str = r#"
num(redis.call('HGET', KEYS[2], 'unfinished'), 0, 'the unfinished count')
local max = tonumber(ARGV[2])
if max > 0 and redis.call('LLEN', KEYS[1]) >= max then return 0 end
redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('HINCRBY', KEYS[2], 'unfinished', 1)
return 1
"#;

fn lua(body: &str) -> redis::Script {
    redis::Script::new(&format!("{LUA_PRELUDE}\n{body}"))
}

/// Operations per sample of the named objects' benches (but the dict's
/// update): many short batches, so that a burst of load from elsewhere
/// spoils few samples.
const OBJECT_BATCH: usize = 200;

/// Keys of the dict benches, and the lease of the lock's raw floor.
const DICT_KEYS: u64 = 1000;
const LOCK_LEASE_MS: u64 = 10_000;

/// The named objects, ours and raw interleaved: a dict's single `insert`
/// and `get` and its `update` of 1000 pairs, a lock's uncontended acquire
/// and release, and a queue ping-pong with a child process. Returns our
/// measurements and the raw ones.
fn objects(
    opts: &Options,
    server: &LocalServer,
    plan: &Plan,
) -> (Vec<Measurement>, Vec<Measurement>) {
    let benches = [
        ("cluster_dict", "set", "ops/s"),
        ("cluster_dict", "get", "ops/s"),
        ("cluster_dict", "update_1000", "ms"),
        ("cluster_lock", "uncontended", "us"),
        ("cluster_queue", "roundtrip", "us"),
    ];
    opts.progress(
        NAME,
        &format!(
            "cluster_dict, cluster_lock, cluster_queue: ours and raw, {} batches each",
            plan.object_batches
        ),
    );
    match measure_objects(server, plan) {
        Ok((ours, raw)) => {
            let make = |samples: Vec<Result<Vec<f64>, String>>| -> Vec<Measurement> {
                benches
                    .iter()
                    .zip(samples)
                    .map(|(&(b, p, u), s)| Measurement::new(b, p, u, s))
                    .collect()
            };
            (make(ours), make(raw))
        }
        Err(e) => {
            let failed = || -> Vec<Measurement> {
                benches
                    .iter()
                    .map(|&(b, p, u)| Measurement::new(b, p, u, Err(e.clone())))
                    .collect()
            };
            (failed(), failed())
        }
    }
}

/// Samples of each object bench, ours then raw, in the order of
/// [`objects`]' benches.
type ObjectSamples = (Vec<Result<Vec<f64>, String>>, Vec<Result<Vec<f64>, String>>);

fn measure_objects(server: &LocalServer, plan: &Plan) -> Result<ObjectSamples, String> {
    let url = server.url();
    let cluster = Cluster::connect(&url)
        .and_then(|c| c.namespace("bench"))
        .map_err(|e| e.to_string())?;
    let m = cluster.manager();
    let fail = |e: multiproc::cluster::ClusterError| e.to_string();
    let dict = m.dict::<u64, u64>("bench").map_err(fail)?;
    dict.update((0..DICT_KEYS).map(|k| (k, k))).map_err(fail)?;
    let lock = m.lock("bench").map_err(fail)?;
    let mut conn = connect(&url)?;
    let insert = lua(DICT_INSERT_LUA);
    let acquire = lua(LOCK_ACQUIRE_LUA);
    let release = lua(LOCK_RELEASE_LUA);
    let put = lua(QUEUE_PUT_LUA);
    let q = |e: redis::RedisError| e.to_string();
    let mut fill = redis::cmd("HSET");
    fill.arg(RAW_DICT);
    for k in 0..DICT_KEYS {
        fill.arg(&k.to_le_bytes()[..]).arg(&k.to_le_bytes()[..]);
    }
    fill.query::<()>(&mut conn).map_err(q)?;

    let per_sec = |r: Result<Vec<f64>, String>| r.map(|us| us.iter().map(|u| 1e6 / u).collect());
    let per_ms = |r: Result<Vec<f64>, String>| r.map(|us| us.iter().map(|u| u / 1e3).collect());
    let pair = |mut v: Vec<Result<Vec<f64>, String>>| -> [Result<Vec<f64>, String>; 2] {
        let raw = v.pop().unwrap_or_else(|| Err("not measured".into()));
        let ours = v.pop().unwrap_or_else(|| Err("not measured".into()));
        [ours, raw]
    };
    let batch = OBJECT_BATCH;
    let mut ours_out = Vec::new();
    let mut raw_out = Vec::new();

    // Dict insert.
    let (mut i, mut j) = (0u64, 0u64);
    let mut ours_set = || {
        i += 1;
        dict.insert(i % DICT_KEYS, i).map(drop).map_err(fail)
    };
    let mut raw_set = || {
        j += 1;
        insert
            .key(RAW_DICT)
            .arg(&(j % DICT_KEYS).to_le_bytes()[..])
            .arg(&j.to_le_bytes()[..])
            .invoke::<Option<Vec<u8>>>(&mut conn)
            .map(drop)
            .map_err(q)
    };
    let ops: &mut [&mut dyn FnMut() -> Result<(), String>] = &mut [&mut ours_set, &mut raw_set];
    let [o, r] = pair(measure::per_op_us(
        batch,
        plan.object_batches,
        batch,
        ops,
        &mut || {},
    ));
    ours_out.push(per_sec(o));
    raw_out.push(per_sec(r));

    // Dict get: every key is there.
    let (mut i, mut j) = (0u64, 0u64);
    let mut ours_get = || {
        i += 1;
        match dict.get(&(i % DICT_KEYS)) {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(format!("key {} is missing", i % DICT_KEYS)),
            Err(e) => Err(e.to_string()),
        }
    };
    let mut raw_get = || {
        j += 1;
        let v: Option<Vec<u8>> = redis::cmd("HGET")
            .arg(RAW_DICT)
            .arg(&(j % DICT_KEYS).to_le_bytes()[..])
            .query(&mut conn)
            .map_err(q)?;
        v.map(drop)
            .ok_or_else(|| "a raw key is missing".to_string())
    };
    let ops: &mut [&mut dyn FnMut() -> Result<(), String>] = &mut [&mut ours_get, &mut raw_get];
    let [o, r] = pair(measure::per_op_us(
        batch,
        plan.object_batches,
        batch,
        ops,
        &mut || {},
    ));
    ours_out.push(per_sec(o));
    raw_out.push(per_sec(r));

    // Dict update of 1000 pairs: one HSET.
    let (mut i, mut j) = (0u64, 0u64);
    let mut ours_update = || {
        i += 1;
        dict.update((0..DICT_KEYS).map(|k| (k, k + i)))
            .map_err(fail)
    };
    let mut raw_update = || {
        j += 1;
        let mut cmd = redis::cmd("HSET");
        cmd.arg(RAW_DICT);
        for k in 0..DICT_KEYS {
            cmd.arg(&k.to_le_bytes()[..])
                .arg(&(k + j).to_le_bytes()[..]);
        }
        cmd.query::<()>(&mut conn).map_err(q)
    };
    let ops: &mut [&mut dyn FnMut() -> Result<(), String>] =
        &mut [&mut ours_update, &mut raw_update];
    let [o, r] = pair(measure::per_op_us(5, plan.update_ops, 1, ops, &mut || {}));
    ours_out.push(per_ms(o));
    raw_out.push(per_ms(r));

    // Lock: acquire and release, nobody else wanting it.
    let owner = format!("{}:{:016x}", std::process::id(), 0x5eed_u64);
    let mut ours_lock = || {
        let guard = lock.lock().map_err(fail)?;
        guard.release().map_err(fail)
    };
    let mut raw_lock = || {
        let (got, token): (i64, i64) = acquire
            .key(RAW_LOCK)
            .key(RAW_FENCE)
            .arg(&owner)
            .arg(LOCK_LEASE_MS)
            .invoke(&mut conn)
            .map_err(q)?;
        if got != 1 {
            return Err("the raw lock was held".to_string());
        }
        let released: i64 = release
            .key(RAW_LOCK)
            .key(RAW_LOCK_WAKE)
            .arg(format!("{owner}:{token}"))
            .invoke(&mut conn)
            .map_err(q)?;
        if released == 1 {
            Ok(())
        } else {
            Err("the raw lock was lost".to_string())
        }
    };
    let ops: &mut [&mut dyn FnMut() -> Result<(), String>] = &mut [&mut ours_lock, &mut raw_lock];
    let [o, r] = pair(measure::per_op_us(
        100,
        plan.object_batches,
        OBJECT_BATCH,
        ops,
        &mut || {},
    ));
    ours_out.push(o);
    raw_out.push(r);

    // Queue ping-pong with an echo child each.
    let [o, r] = queue_roundtrips(&cluster, &url, &mut conn, &put, plan);
    ours_out.push(o);
    raw_out.push(r);
    Ok((ours_out, raw_out))
}

/// What a queue echo child is told.
#[derive(Serialize, Deserialize)]
struct EchoArgs {
    url: String,
    raw: bool,
}

/// The value that stops an echo child.
const STOP: u64 = u64::MAX;

/// An echo child: gets each value from `ping` and puts it on `pong`,
/// until [`STOP`]; through our queues, or (`raw`) the same commands.
fn queue_echo(args: EchoArgs) {
    if args.raw {
        let Ok(mut conn) = connect(&args.url) else {
            return;
        };
        let put = lua(QUEUE_PUT_LUA);
        loop {
            let got: redis::RedisResult<Option<(String, Vec<u8>)>> = redis::cmd("BLPOP")
                .arg(RAW_PING[0])
                .arg(OP_TIMEOUT.as_secs())
                .query(&mut conn);
            let Ok(Some((_, v))) = got else { return };
            if v == STOP.to_le_bytes() {
                return;
            }
            let done: redis::RedisResult<i64> = put
                .key(RAW_PONG[0])
                .key(RAW_PONG[1])
                .arg(v)
                .arg(0)
                .invoke(&mut conn);
            if done.is_err() {
                return;
            }
        }
    }
    let Ok(cluster) = Cluster::connect(&args.url).and_then(|c| c.namespace("bench")) else {
        return;
    };
    let (Ok(ping), Ok(pong)) = (
        cluster.queue::<u64>("ping").build(),
        cluster.queue::<u64>("pong").build(),
    ) else {
        return;
    };
    while let Ok(v) = ping.get() {
        if v == STOP || pong.put(v).is_err() {
            return;
        }
    }
}

/// `cluster_queue/roundtrip`: a value put on `ping`, echoed by a child
/// onto `pong`, got back; ours and raw interleaved, in batches of
/// [`OBJECT_BATCH`].
fn queue_roundtrips(
    cluster: &Cluster,
    url: &str,
    conn: &mut redis::Connection,
    put: &redis::Script,
    plan: &Plan,
) -> [Result<Vec<f64>, String>; 2] {
    let queues = cluster
        .queue::<u64>("ping")
        .build()
        .and_then(|p| Ok((p, cluster.queue::<u64>("pong").build()?)))
        .map_err(|e| e.to_string());
    let (ping, pong) = match queues {
        Ok(q) => q,
        Err(e) => return [Err(e.clone()), Err(e)],
    };
    let mut children = Vec::new();
    for raw in [false, true] {
        let args = EchoArgs {
            url: url.to_owned(),
            raw,
        };
        match rig::start(StartMethod::ForkServer, queue_echo, args) {
            Ok(p) => children.push(p),
            Err(e) => {
                let _ = rig::end(children, Err::<(), _>(e.clone()));
                return [Err(e.clone()), Err(e)];
            }
        }
    }
    let (mut i, mut j) = (0u64, 0u64);
    let mut ours = || {
        i += 1;
        ping.put(i).map_err(|e| e.to_string())?;
        match pong.get_timeout(OP_TIMEOUT) {
            Ok(v) if v == i => Ok(()),
            other => Err(format!("round trip {i}: {other:?}")),
        }
    };
    let mut raw = || {
        j += 1;
        put.key(RAW_PING[0])
            .key(RAW_PING[1])
            .arg(&j.to_le_bytes()[..])
            .arg(0)
            .invoke::<i64>(conn)
            .map_err(|e| e.to_string())?;
        let got: Option<(String, Vec<u8>)> = redis::cmd("BLPOP")
            .arg(RAW_PONG[0])
            .arg(OP_TIMEOUT.as_secs())
            .query(conn)
            .map_err(|e| e.to_string())?;
        match got {
            Some((_, v)) if v == j.to_le_bytes() => Ok(()),
            other => Err(format!("raw round trip {j}: {other:?}")),
        }
    };
    let ops: &mut [&mut dyn FnMut() -> Result<(), String>] = &mut [&mut ours, &mut raw];
    let mut results =
        measure::per_op_us(100, plan.object_batches, OBJECT_BATCH, ops, &mut || {}).into_iter();
    let out = [
        results.next().unwrap_or_else(|| Err("not measured".into())),
        results.next().unwrap_or_else(|| Err("not measured".into())),
    ];
    let stopped = ping.put(STOP).map_err(|e| e.to_string()).and_then(|()| {
        put.key(RAW_PING[0])
            .key(RAW_PING[1])
            .arg(&STOP.to_le_bytes()[..])
            .arg(0)
            .invoke::<i64>(conn)
            .map(drop)
            .map_err(|e| e.to_string())
    });
    match rig::end(children, stopped) {
        Ok(()) => out,
        Err(e) => [Err(e.clone()), Err(e)],
    }
}

/// `cluster_recovery`: `reps` kills, each with two fresh agents. Returns
/// the `agent_sigkill`, `lost` and `rerun` measurements.
fn recovery(opts: &Options, server: &LocalServer, reps: usize) -> Vec<Measurement> {
    let measured = (|| -> Result<[Vec<f64>; 3], String> {
        let cluster = Cluster::connect(&server.url())
            .and_then(|c| c.namespace("recovery"))
            .map_err(|e| e.to_string())?;
        cluster
            .set_min_idle(RECOVERY_MIN_IDLE)
            .map_err(|e| e.to_string())?;
        let dir =
            std::env::temp_dir().join(format!("multiproc-bench-recovery-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut out = [Vec::new(), Vec::new(), Vec::new()];
        let mut result = Ok(());
        for rep in 0..reps {
            let log = dir.join(format!("run-{rep}.log"));
            match recover_once(&cluster, &log) {
                Ok(r) => {
                    opts.progress(
                        NAME,
                        &format!(
                            "  kill {}: last re-delivered task done {:.0} ms after the kill, \
                             map done after {:.0} ms; {} items re-delivered, {} ran twice, {} lost",
                            rep + 1,
                            r.recovery_ms,
                            r.map_ms,
                            r.redelivered,
                            r.rerun,
                            r.lost
                        ),
                    );
                    out[0].push(r.recovery_ms);
                    out[1].push(r.lost as f64);
                    out[2].push(r.rerun as f64);
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        result.map(|()| out)
    })();
    let names = [
        ("agent_sigkill", "ms"),
        ("lost", "tasks"),
        ("rerun", "tasks"),
    ];
    match measured {
        Ok(samples) => names
            .into_iter()
            .zip(samples)
            .map(|((param, unit), s)| Measurement::new("cluster_recovery", param, unit, Ok(s)))
            .collect(),
        Err(e) => names
            .into_iter()
            .map(|(param, unit)| Measurement::new("cluster_recovery", param, unit, Err(e.clone())))
            .collect(),
    }
}

/// What one kill showed.
struct Recovery {
    /// From the kill to the end of the last re-delivered item.
    recovery_ms: f64,
    /// From the kill to the map's end.
    map_ms: f64,
    redelivered: usize,
    rerun: usize,
    lost: usize,
}

/// One kill: two fresh agents, a pool, the map started on a thread of its
/// own, one agent killed [`RECOVERY_KILL_AFTER`] into it. If the map does
/// not end within [`OP_TIMEOUT`] after the kill (an item lost for good),
/// the thread is left behind and the kill is an error.
fn recover_once(cluster: &Cluster, log: &Path) -> Result<Recovery, String> {
    std::fs::write(log, b"").map_err(|e| format!("{}: {e}", log.display()))?;
    let mut agents = (0..AGENTS)
        .map(|_| LocalAgent::start(cluster, SLOTS))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("an agent did not start: {e}"))?;
    let path = log.display().to_string();
    let items: Vec<(u64, u64, String)> = (0..RECOVERY_ITEMS)
        .map(|i| (i, RECOVERY_ITEM_MS, path.clone()))
        .collect();
    let (started_tx, started) = std::sync::mpsc::channel();
    let (done_tx, done) = std::sync::mpsc::channel();
    let for_map = cluster.clone();
    std::thread::Builder::new()
        .name("recovery-map".into())
        .spawn(move || {
            let pool = match for_map.pool().build() {
                Ok(pool) => pool,
                Err(e) => {
                    let _ = started_tx.send(Err(format!("the pool did not start: {e}")));
                    return;
                }
            };
            let _ = started_tx.send(Ok(()));
            let out = pool
                .task(recovery_item)
                .chunksize(RECOVERY_CHUNK)
                .map_results(items);
            let _ = done_tx.send((out, Instant::now()));
            pool.join();
        })
        .map_err(|e| format!("no thread for the map: {e}"))?;
    started
        .recv_timeout(OP_TIMEOUT)
        .map_err(|e| format!("the map did not start: {e}"))??;
    std::thread::sleep(RECOVERY_KILL_AFTER);
    let kill_ns = unix_ns();
    let killed_at = Instant::now();
    agents[0]
        .kill()
        .map_err(|e| format!("the kill failed: {e}"))?;
    let (outcomes, done_at) = done.recv_timeout(OP_TIMEOUT).map_err(|_| {
        format!(
            "the map did not end within {} s of the kill: an item was lost",
            OP_TIMEOUT.as_secs()
        )
    })?;
    drop(agents);

    let mut lost = 0;
    let mut last_redelivered = None::<u64>;
    let mut redelivered = 0;
    for o in &outcomes {
        match o {
            Ok((deliveries, end_ns)) => {
                if *deliveries > 1 {
                    redelivered += 1;
                    last_redelivered = last_redelivered.max(Some(*end_ns));
                }
            }
            Err(_) => lost += 1,
        }
    }
    lost += (RECOVERY_ITEMS as usize).saturating_sub(outcomes.len());
    let runs = std::fs::read_to_string(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let mut seen = HashSet::new();
    let mut executions = 0;
    for line in runs.lines() {
        executions += 1;
        seen.insert(line.to_owned());
    }
    let Some(last) = last_redelivered else {
        return Err(format!(
            "no item was handed out again: the killed agent held nothing \
             ({lost} lost, {executions} runs)"
        ));
    };
    Ok(Recovery {
        recovery_ms: last.saturating_sub(kill_ns) as f64 / 1e6,
        map_ms: done_at.duration_since(killed_at).as_secs_f64() * 1e3,
        redelivered,
        rerun: executions - seen.len(),
        lost,
    })
}

/// The interpreter of a venv with Celery, under the target directory,
/// made with `$PYTHON -m venv` and `pip install -r
/// python/cluster-requirements.txt` on first use (or when the pinned
/// requirements change).
fn celery_python(opts: &Options) -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let target = exe
        .parent()
        .and_then(Path::parent)
        .ok_or("the executable has no target directory")?;
    let venv = target.join("bench-celery-venv");
    let python = venv.join("bin").join("python");
    let stamp = venv.join("multiproc-bench-requirements.txt");
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s == REQUIREMENTS) && python.exists() {
        return Ok(python);
    }
    opts.progress(
        NAME,
        &format!("installing Celery into {} (pip)", venv.display()),
    );
    let _ = std::fs::remove_dir_all(&venv);
    let mut make = Command::new(opts.python.program());
    make.arg("-m").arg("venv").arg(&venv);
    run_command(make, Duration::from_secs(120))?;
    let requirements = venv.join("requirements.txt");
    std::fs::write(&requirements, REQUIREMENTS).map_err(|e| e.to_string())?;
    let mut pip = Command::new(&python);
    pip.args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "-r",
    ])
    .arg(&requirements);
    run_command(pip, Duration::from_secs(600))?;
    std::fs::write(&stamp, REQUIREMENTS).map_err(|e| e.to_string())?;
    Ok(python)
}

/// Runs `cmd` to its end within `timeout`; its output goes to stderr.
fn run_command(mut cmd: Command, timeout: Duration) -> Result<(), String> {
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("{shown}: {e}"))?;
    let end = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => return Err(format!("{shown} failed ({status})")),
            Ok(None) if Instant::now() < end => std::thread::sleep(Duration::from_millis(50)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{shown} took over {} s", timeout.as_secs()));
            }
            Err(e) => return Err(format!("{shown}: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn celery_gets_the_plan() {
        let plan = Plan::new(true);
        let args = plan.python_args(Path::new("/tmp/r.sock"));
        let value = |flag: &str| {
            let i = args.iter().position(|a| a == flag).unwrap();
            args[i + 1].clone()
        };
        assert_eq!(value("--redis-socket"), "/tmp/r.sock");
        assert_eq!(value("--chunk-size"), "1563");
        assert_eq!(value("--group-items"), plan.celery_group_items.to_string());
        assert_eq!(args.len() % 2, 0);
    }

    #[test]
    fn stream_entries_are_parsed() {
        use redis::Value::{Array, BulkString};
        let v = Array(vec![Array(vec![
            BulkString(b"raw:tasks".to_vec()),
            Array(vec![Array(vec![
                BulkString(b"1-0".to_vec()),
                Array(vec![BulkString(b"f".to_vec()), BulkString(b"7".to_vec())]),
            ])]),
        ])]);
        let e = stream_entries(&v);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].0, "1-0");
        assert_eq!(e[0].1, vec![(b"f".to_vec(), b"7".to_vec())]);
        assert!(stream_entries(&redis::Value::Nil).is_empty());
    }
}
