//! Group `manager`: objects served by a `multiproc::Manager` to proxies in
//! other processes (Python: `multiprocessing.Manager()`).
//!
//! * `dict_set` (ops/s): clients set `d[i % 1000] = i` on a manager dict.
//!   Param `1client` (one client process) or `2clients` (two at once, half
//!   of a run's operations each; the rate is the total over the wall time).
//! * `dict_get` (ops/s): the same with `d.get(i % 1000)` on a dict
//!   holding those 1000 keys.
//! * `list_append` (`1client`, ops/s): one client appends `i` to a
//!   manager list.
//! * `manager_queue` (`8B`, msg/s): a client puts `u64`s into a manager
//!   queue, the parent gets them.
//! * `manager_start` (`-`, ms): from nothing to a usable manager: start
//!   the server and make a first dict through it (Python:
//!   `ctx.Manager()` and `m.dict()`); the shutdown is not timed.
//!
//! Each proxy call is one round trip to the server, from a client process
//! on this machine: ours takes the shared-memory request path (a pair of
//! queues handed over at connection), Python's a socket. Every client
//! (and the server) is started with forkserver and waits for commands on
//! its own pipe; a run is timed from the first command to the last
//! client's report (or the parent's last `get`). The rigs are measured
//! interleaved, one run of each in turn, after a warm-up, with the counts
//! calibrated so that a run lasts about [`Plan::target`]. The Python side,
//! `python/manager_bench.py`, runs with the same plan and design as a
//! [`crate::python::Session`], its rounds between ours (its start-ups
//! after ours). `dict_get` 1client has the `socketpair` baseline beside
//! it: one 8-byte round trip over a plain socket pair per get.

use std::time::{Duration, Instant};

use multiproc::{Connection, DictProxy, ListProxy, Manager, ProxyError, QueueProxy, StartMethod};
use serde::{Deserialize, Serialize};

use super::Options;
use crate::report::{self, Impl, Measurement, Row};
use crate::rig::{Plan, Rig, Run, Runs, command_pipe, measure_rigs, socket_roundtrip_rig, start};

/// The group's name on the command line and in the output.
pub const NAME: &str = "manager";

/// How the server, every client (and Python's) is started.
const METHOD: StartMethod = StartMethod::ForkServer;

/// Distinct keys of the dict benches.
const KEYS: u64 = 1000;

/// How long the parent waits for a client's report, or a queue message.
const REPORT_TIMEOUT: Duration = Duration::from_secs(60);

/// What a client does for each command `n`.
#[derive(Serialize, Deserialize)]
enum Job {
    /// `d[i % KEYS] = i`, n times.
    DictSet(DictProxy<u64, u64>),
    /// `d.get(i % KEYS)`, n times; each must find its key.
    DictGet(DictProxy<u64, u64>),
    /// `l.append(i)`, n times.
    ListAppend(ListProxy<u64>),
    /// `q.put(i)`, n times.
    QueuePut(QueueProxy<u64>),
}

impl Job {
    fn run(&self, n: u64) -> Result<(), String> {
        let fail = |e: ProxyError| e.to_string();
        for i in 0..n {
            match self {
                Job::DictSet(d) => drop(d.insert(i % KEYS, i).map_err(fail)?),
                Job::DictGet(d) => {
                    if d.get(&(i % KEYS)).map_err(fail)?.is_none() {
                        return Err(format!("key {} is missing", i % KEYS));
                    }
                }
                Job::ListAppend(l) => l.push(i).map_err(fail)?,
                Job::QueuePut(q) => q.put(i).map_err(|e| e.to_string())?,
            }
        }
        Ok(())
    }
}

/// A client: for every command `n`, does its job `n` times, then reports.
/// Returns when the command pipe closes, or on the first failure (the
/// parent then gets no report, and the run fails).
fn client((cmd, job): (Connection<(), u64>, Job)) {
    while let Ok(n) = cmd.recv() {
        if job.run(n).is_err() || cmd.send(&()).is_err() {
            return;
        }
    }
}

/// A rig of `jobs.len()` clients sharing each run's operations; if
/// `queue` is given, the parent gets every operation's message from it.
fn clients_rig(jobs: Vec<Job>, queue: Option<QueueProxy<u64>>) -> Result<Rig, String> {
    // On a failure, the clients already started are dropped: daemons, they
    // are killed and reaped.
    let (cmds, children): (Vec<_>, Vec<_>) = jobs
        .into_iter()
        .map(|job| -> Result<_, String> {
            let (ours, theirs) = command_pipe::<u64, ()>()?;
            Ok((ours, start(METHOD, client, (theirs, job))?))
        })
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .unzip();
    let run: Box<Run> = Box::new(move |count| {
        let share = count / cmds.len() as u64;
        let t0 = Instant::now();
        for (i, cmd) in cmds.iter().enumerate() {
            let n = if i == 0 {
                count - share * (cmds.len() as u64 - 1)
            } else {
                share
            };
            cmd.send(&n).map_err(|e| format!("command failed: {e}"))?;
        }
        if let Some(q) = &queue {
            for i in 0..count {
                match q.get_timeout(REPORT_TIMEOUT) {
                    Ok(v) if v < count => {}
                    other => return Err(format!("message {i} of {count}: {other:?}")),
                }
            }
        }
        for cmd in &cmds {
            cmd.recv_timeout(REPORT_TIMEOUT)
                .map_err(|e| format!("no report from a client: {e}"))?;
        }
        Ok(t0.elapsed())
    });
    Ok(Rig { children, run })
}

/// The benches measured with client rigs: name, param, unit.
const RIGS: [(&str, &str, &str); 6] = [
    ("dict_set", "1client", "ops/s"),
    ("dict_set", "2clients", "ops/s"),
    ("dict_get", "1client", "ops/s"),
    ("dict_get", "2clients", "ops/s"),
    ("list_append", "1client", "ops/s"),
    ("manager_queue", "8B", "msg/s"),
];

/// Makes the rigs, in the order of [`RIGS`], on `manager`.
fn rigs(manager: &Manager) -> Result<[Result<Rig, String>; 6], String> {
    let fail = |e: ProxyError| format!("manager call failed: {e}");
    let set = manager.dict::<u64, u64>().map_err(fail)?;
    let get = manager.dict::<u64, u64>().map_err(fail)?;
    get.update((0..KEYS).map(|k| (k, k))).map_err(fail)?;
    let list = manager.list::<u64>().map_err(fail)?;
    let queue = manager.queue::<u64>().map_err(fail)?;
    Ok([
        clients_rig(vec![Job::DictSet(set.clone())], None),
        clients_rig(vec![Job::DictSet(set.clone()), Job::DictSet(set)], None),
        clients_rig(vec![Job::DictGet(get.clone())], None),
        clients_rig(vec![Job::DictGet(get.clone()), Job::DictGet(get)], None),
        clients_rig(vec![Job::ListAppend(list)], None),
        clients_rig(vec![Job::QueuePut(queue.clone())], Some(queue)),
    ])
}

/// Times `reps` start-ups: start a manager and make a dict through it;
/// each is shut down untimed. One untimed start-up first warms up.
fn start_times(reps: usize) -> Result<Vec<f64>, String> {
    let start_one = || -> Result<(Duration, Manager), String> {
        let t0 = Instant::now();
        let manager = Manager::builder()
            .start_method(METHOD)
            .start()
            .map_err(|e| format!("start failed: {e}"))?;
        let d = manager
            .dict::<u64, u64>()
            .map_err(|e| format!("dict failed: {e}"))?;
        let took = t0.elapsed();
        drop(d);
        Ok((took, manager))
    };
    let (_, warm) = start_one()?;
    warm.shutdown()
        .map_err(|e| format!("shutdown failed: {e}"))?;
    let mut samples = Vec::with_capacity(reps);
    for _ in 0..reps {
        let (took, manager) = start_one()?;
        samples.push(took.as_secs_f64() * 1e3);
        manager
            .shutdown()
            .map_err(|e| format!("shutdown failed: {e}"))?;
    }
    Ok(samples)
}

/// The rate of per-run `(operations, seconds)`.
fn rate(bench: &str, param: &str, unit: &str, runs: Runs) -> Measurement {
    let samples = runs.map(|runs| {
        runs.iter()
            .map(|&(n, secs)| n as f64 / secs.max(1e-12))
            .collect()
    });
    Measurement::new(bench, param, unit, samples)
}

/// Runs the group: multiproc, then Python.
pub fn run(opts: &Options) -> Vec<Row> {
    let plan = Plan::new(opts.quick);
    let mut multiproc = Vec::new();
    let mut socket = Vec::new();
    opts.progress(
        NAME,
        "python (manager_bench.py) starting, its rounds interleaved with ours",
    );
    let mut python = opts.python.session(
        "manager_bench.py",
        &plan.python_args(METHOD),
        plan.python_timeout,
    );
    opts.progress(
        NAME,
        "dict, list and queue round trips: multiproc, socketpair, python",
    );
    // Forked first: it holds copies of the parent's descriptors, and must
    // not hold the clients' command pipes (`rig::socket_roundtrip_rig`).
    let socket_rig = socket_roundtrip_rig();
    match Manager::builder().start_method(METHOD).start() {
        Ok(manager) => match rigs(&manager) {
            Ok([a, b, c, d, e, f]) => {
                let [a, b, c, d, e, f, sock] = measure_rigs(
                    plan.target,
                    plan.reps,
                    [a, b, c, d, e, f, socket_rig],
                    &mut || python.turn(),
                );
                for ((bench, param, unit), runs) in RIGS.into_iter().zip([a, b, c, d, e, f]) {
                    multiproc.push(rate(bench, param, unit, runs));
                }
                // The socket pair's round trips, one per operation: the
                // baseline of a dict get from one client (issue 20).
                socket.push(rate("dict_get", "1client", "ops/s", sock));
            }
            Err(e) => {
                for (bench, param, unit) in RIGS {
                    multiproc.push(Measurement::new(bench, param, unit, Err(e.clone())));
                }
            }
        },
        Err(e) => {
            for (bench, param, unit) in RIGS {
                let why = format!("the manager did not start: {e}");
                multiproc.push(Measurement::new(bench, param, unit, Err(why)));
            }
        }
    }
    opts.progress(NAME, "multiproc: manager_start, then python's");
    multiproc.push(Measurement::new(
        "manager_start",
        "-",
        "ms",
        start_times(plan.reps),
    ));

    let python = python.finish();
    let rows = report::pair(
        NAME,
        multiproc,
        python.measurements,
        python.failure.as_deref(),
    );
    report::add_reference(NAME, rows, Impl::Socketpair, socket)
}
