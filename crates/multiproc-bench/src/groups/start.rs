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
//! counts and settle delay.

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

/// Runs the group: multiproc first, then Python.
pub fn run(opts: &Options) -> Vec<Row> {
    let plan = Plan::new(opts.quick);
    let mut multiproc = Vec::new();
    let mut peer = Vec::new();
    let mut floor = Vec::new();
    for method in METHODS {
        if method == StartMethod::Fork {
            opts.progress(
                NAME,
                "multiproc start_join fork and a bare fork+exit+wait, alternating",
            );
            let (ours, bare) = alternating(
                plan.join_reps,
                &|| start_join_once(StartMethod::Fork),
                &bare_fork_once,
            );
            multiproc.push(Measurement::new("start_join", method.as_str(), "ms", ours));
            floor.push(Measurement::new("start_join", method.as_str(), "ms", bare));
            continue;
        }
        if method == StartMethod::Spawn {
            // procspawn re-executes this program, as spawn does: its
            // start+join and ours alternate, one child each in turn.
            opts.progress(
                NAME,
                "multiproc and procspawn start_join spawn, alternating",
            );
            let (ours, theirs) = alternating(
                plan.join_reps,
                &|| start_join_once(StartMethod::Spawn),
                &procspawn_once,
            );
            multiproc.push(Measurement::new("start_join", method.as_str(), "ms", ours));
            peer.push(Measurement::new(
                "start_join",
                method.as_str(),
                "ms",
                theirs,
            ));
            continue;
        }
        opts.progress(NAME, &format!("multiproc start_join {method}"));
        multiproc.push(Measurement::new(
            "start_join",
            method.as_str(),
            "ms",
            start_join(method, plan.join_reps),
        ));
    }
    for method in METHODS {
        opts.progress(NAME, &format!("multiproc worker_private_memory {method}"));
        multiproc.push(Measurement::new(
            "worker_private_memory",
            method.as_str(),
            "KiB",
            worker_private_memory(method, plan.memory_samples),
        ));
    }

    opts.progress(NAME, "python (start.py)");
    let args = [
        "--join-reps".to_string(),
        plan.join_reps.to_string(),
        "--join-reps-spawn".to_string(),
        plan.join_reps_python_spawn.to_string(),
        "--memory-samples".to_string(),
        plan.memory_samples.to_string(),
        "--settle-ms".to_string(),
        SETTLE.as_millis().to_string(),
    ];
    let python = opts.python.run("start.py", &args, plan.python_timeout);
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

/// Times in ms of `ours` and `theirs` (a start+join each), one of each in
/// turn, after a warm-up call of each.
fn alternating(
    reps: usize,
    ours_op: &dyn Fn() -> Result<(), String>,
    theirs_op: &dyn Fn() -> Result<(), String>,
) -> (Result<Vec<f64>, String>, Result<Vec<f64>, String>) {
    let warm = (ours_op(), theirs_op());
    let mut ours = warm.0.map(|()| Vec::with_capacity(reps));
    let mut theirs = warm.1.map(|()| Vec::with_capacity(reps));
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

/// Per-child start+join times in ms, after one warm-up child (which also
/// starts the forkserver).
fn start_join(method: StartMethod, reps: usize) -> Result<Vec<f64>, String> {
    start_join_once(method)?;
    measure::time_each_ms(reps, || start_join_once(method))
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
