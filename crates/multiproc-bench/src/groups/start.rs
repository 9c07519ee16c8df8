//! Group `start`: what it costs to have a child process, per start method.
//!
//! * `start_join`: latency of starting a child that runs a trivial
//!   function and joining it, one child at a time (ms per child). Beside
//!   the fork row, a raw floor: `fork`, `_exit(0)` in the child and
//!   `waitpid`, one child of each in turn with ours.
//! * `worker_private_memory`: private memory (`Private_Clean` +
//!   `Private_Dirty` from `/proc/<pid>/smaps_rollup`) of an idle child
//!   (KiB). The child creates a marker file and then sleeps; once the
//!   parent sees the file it waits a fixed settle delay, reads the memory,
//!   and kills the child.
//!
//! The Python side is `python/start.py`, run with the same repetition
//! counts and settle delay; its `start_join` samples come in rounds that
//! alternate with ours (`python::Session`), so that a drift in the
//! machine's load hits both sides alike.

use std::time::Duration;

use multiproc::{Process, StartMethod};

use super::Options;
use crate::measure;
use crate::report::{self, Impl, Measurement, Row};

/// The group's name on the command line and in the output.
pub const NAME: &str = "start";

/// Start methods in the order they are reported (fastest first).
const METHODS: [StartMethod; 3] = [
    StartMethod::Fork,
    StartMethod::ForkServer,
    StartMethod::Spawn,
];

/// How long a worker is left alone after it signalled readiness, before
/// its memory is read.
const SETTLE: Duration = Duration::from_millis(50);

/// How long a worker may take to signal readiness.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Repetition counts of one run.
#[derive(Debug, Clone, Copy)]
struct Plan {
    /// `start_join` repetitions for every multiproc method and for
    /// Python's fork and forkserver.
    join_reps: usize,
    /// `start_join` repetitions for Python's spawn (about 100 ms each).
    join_reps_python_spawn: usize,
    /// Idle workers measured per method and implementation.
    memory_samples: usize,
    /// How long the Python script may run.
    python_timeout: Duration,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                join_reps: 100,
                join_reps_python_spawn: 10,
                memory_samples: 7,
                python_timeout: Duration::from_secs(120),
            }
        } else {
            Plan {
                join_reps: 500,
                join_reps_python_spawn: 20,
                memory_samples: 20,
                python_timeout: Duration::from_secs(600),
            }
        }
    }
}

/// The trivial function whose start and join `start_join` times.
fn noop(_: ()) {}

/// An idle worker: announces that it runs by creating `marker`, then sleeps
/// until it is killed.
fn idle(marker: String) {
    if std::fs::File::create(&marker).is_ok() {
        std::thread::sleep(Duration::from_secs(60));
    }
}

/// Rounds of `start_join` samples: ours, then Python's turn, in each.
const ROUNDS: usize = 10;

/// This round's share of `total` samples: the rounds split it as evenly
/// as they can (as `start.py` does).
fn share(total: usize, round: usize) -> usize {
    total * (round + 1) / ROUNDS - total * round / ROUNDS
}

/// Appends `more` samples to `all`; an error stays (the first one).
fn extend(all: &mut Result<Vec<f64>, String>, more: Result<Vec<f64>, String>) {
    match (all.as_mut(), more) {
        (Ok(list), Ok(more)) => list.extend(more),
        (Ok(_), Err(e)) => *all = Err(e),
        (Err(_), _) => {}
    }
}

/// Runs the group: `start_join` in rounds, ours (with the bare fork and
/// procspawn beside it) and Python's alternating, then the idle workers'
/// memory of each side.
pub fn run(opts: &Options) -> Vec<Row> {
    let plan = Plan::new(opts.quick);
    opts.progress(
        NAME,
        "python (start.py) starting, its start_join rounds interleaved with ours",
    );
    let args = [
        "--join-reps".to_string(),
        plan.join_reps.to_string(),
        "--join-reps-spawn".to_string(),
        plan.join_reps_python_spawn.to_string(),
        "--memory-samples".to_string(),
        plan.memory_samples.to_string(),
        "--settle-ms".to_string(),
        SETTLE.as_millis().to_string(),
        "--rounds".to_string(),
        ROUNDS.to_string(),
    ];
    let mut python = opts.python.session("start.py", &args, plan.python_timeout);

    let fork = || start_join_once(StartMethod::Fork);
    let forkserver = || start_join_once(StartMethod::ForkServer);
    let spawn = || start_join_once(StartMethod::Spawn);
    // Warm-ups, untimed: the first of each (the forkserver starts).
    let warm = |op: &dyn Fn() -> Result<(), String>| op().map(|()| Vec::new());
    let mut ours_fork = warm(&fork);
    let mut bare = warm(&bare_fork_once);
    let mut ours_forkserver = warm(&forkserver);
    let mut ours_spawn = warm(&spawn);
    let mut theirs_spawn = warm(&procspawn_once);
    for round in 0..ROUNDS {
        let reps = share(plan.join_reps, round);
        opts.progress(
            NAME,
            &format!(
                "round {}/{ROUNDS}: multiproc start_join per method (a bare fork+exit+wait \
                 and procspawn alternating with ours), then python's",
                round + 1
            ),
        );
        // The fork row alternates with a bare fork+exit+wait (its floor),
        // the spawn row with procspawn, which re-executes this program as
        // spawn does: one child of each in turn.
        let (a, b) = alternating(reps, &ours_fork, &bare, &fork, &bare_fork_once);
        extend(&mut ours_fork, a);
        extend(&mut bare, b);
        if ours_forkserver.is_ok() {
            extend(
                &mut ours_forkserver,
                measure::time_each_ms(reps, forkserver),
            );
        }
        let (a, b) = alternating(reps, &ours_spawn, &theirs_spawn, &spawn, &procspawn_once);
        extend(&mut ours_spawn, a);
        extend(&mut theirs_spawn, b);
        python.turn();
    }
    let method = |m: StartMethod| m.as_str();
    let mut multiproc = vec![
        Measurement::new("start_join", method(StartMethod::Fork), "ms", ours_fork),
        Measurement::new(
            "start_join",
            method(StartMethod::ForkServer),
            "ms",
            ours_forkserver,
        ),
        Measurement::new("start_join", method(StartMethod::Spawn), "ms", ours_spawn),
    ];
    let floor = vec![Measurement::new(
        "start_join",
        method(StartMethod::Fork),
        "ms",
        bare,
    )];
    let peer = vec![Measurement::new(
        "start_join",
        method(StartMethod::Spawn),
        "ms",
        theirs_spawn,
    )];
    // Python measures its idle workers after its last round, before it
    // ends: `finish` waits for that, and ours come after, never at once.
    let python = python.finish();
    for method in METHODS {
        opts.progress(NAME, &format!("multiproc worker_private_memory {method}"));
        multiproc.push(Measurement::new(
            "worker_private_memory",
            method.as_str(),
            "KiB",
            worker_private_memory(method, plan.memory_samples),
        ));
    }
    let rows = report::pair(
        NAME,
        multiproc,
        python.measurements,
        python.failure.as_deref(),
    );
    let rows = report::add_raw(NAME, rows, floor);
    report::add_reference(NAME, rows, Impl::Procspawn, peer)
}

/// A child forked to do nothing but `_exit(0)`, and reaped.
fn bare_fork_once() -> Result<(), String> {
    multiproc::__bench::bare_fork_exit_wait().map_err(|e| format!("bare fork failed: {e}"))
}

/// `procspawn::spawn` of a trivial function and its join.
fn procspawn_once() -> Result<(), String> {
    procspawn::spawn((), |()| ())
        .join()
        .map_err(|e| format!("procspawn failed: {e}"))
}

/// Times in ms of `reps` runs each of `ours_op` and `theirs_op` (a
/// start+join each), one of each in turn; a side whose samples so far
/// (`ours`, `theirs`) are an error is skipped, and one that fails stops.
fn alternating(
    reps: usize,
    ours: &Result<Vec<f64>, String>,
    theirs: &Result<Vec<f64>, String>,
    ours_op: &dyn Fn() -> Result<(), String>,
    theirs_op: &dyn Fn() -> Result<(), String>,
) -> (Result<Vec<f64>, String>, Result<Vec<f64>, String>) {
    let start = |side: &Result<Vec<f64>, String>| match side {
        Ok(_) => Ok(Vec::with_capacity(reps)),
        Err(e) => Err(e.clone()),
    };
    let (mut ours, mut theirs) = (start(ours), start(theirs));
    for _ in 0..reps {
        for (samples, op) in [(&mut ours, ours_op), (&mut theirs, theirs_op)] {
            if let Ok(list) = samples {
                let t0 = std::time::Instant::now();
                match op() {
                    Ok(()) => list.push(t0.elapsed().as_secs_f64() * 1e3),
                    Err(e) => *samples = Err(e),
                }
            }
        }
    }
    (ours, theirs)
}

/// Starts and joins one `noop` child with `method`.
fn start_join_once(method: StartMethod) -> Result<(), String> {
    Process::builder()
        .start_method(method)
        .spawn(noop, ())
        .map_err(|e| format!("start failed: {e}"))?
        .join()
        .map_err(|e| format!("join failed: {e}"))
}

/// Private memory, in KiB, of `samples` idle workers started with `method`,
/// one at a time.
fn worker_private_memory(method: StartMethod, samples: usize) -> Result<Vec<f64>, String> {
    if method == StartMethod::ForkServer {
        // Start the server first: the worker is measured, not the server.
        start_join_once(method)?;
    }
    (0..samples).map(|_| idle_worker_kib(method)).collect()
}

/// Starts one idle worker, waits until it is ready plus [`SETTLE`], reads
/// its private memory, and kills and reaps it whatever happened.
fn idle_worker_kib(method: StartMethod) -> Result<f64, String> {
    let marker = measure::marker_path(method.as_str());
    let marker_arg = marker.to_string_lossy().into_owned();
    // A daemon child is killed if its handle is dropped unjoined (on a
    // panic here, say), so no idle worker outlives the measurement.
    let child = Process::builder()
        .start_method(method)
        .daemon(true)
        .spawn(idle, marker_arg)
        .map_err(|e| format!("start failed: {e}"))?;
    let result =
        measure::wait_for_file(&marker, READY_TIMEOUT, || child.is_alive()).and_then(|()| {
            std::thread::sleep(SETTLE);
            measure::private_kib(child.pid())
        });
    let killed = child.kill();
    // Killed, the child has no result: the join error is expected.
    let _ = child.join();
    let _ = std::fs::remove_file(&marker);
    killed.map_err(|e| format!("kill failed: {e}"))?;
    result
}
