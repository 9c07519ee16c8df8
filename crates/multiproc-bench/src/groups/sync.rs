//! Group `sync`: the synchronisation primitives, `multiproc::Lock`,
//! `Value`, `Event` and `Barrier` (Python: `multiprocessing.Lock`, `Value`,
//! `Event` and `Barrier`). Every bench is a rate; none has a param (`-`).
//!
//! * `lock_uncontended` (ops/s): acquire and release of a `Lock` in the
//!   parent alone, no other process touching it (Python: `acquire()` and
//!   `release()`).
//! * `value_incr_locked_2p` (ops/s): two children each increment a shared
//!   `Value<u64>` under its lock (`*v.get_lock().unwrap() += 1`), half of
//!   a run's increments each; the rate is the total over the wall time,
//!   and the parent checks that the value ends at the total.
//! * `event_pingpong_2p` (roundtrips/s): the parent and a child ping-pong
//!   with two events, `ping` and `pong` (see [`pinger`] and [`ponger`] for
//!   why no wake-up is lost).
//! * `barrier_2p` (cycles/s): the parent and a child each call `wait` on a
//!   `Barrier` of two parties, once per cycle; the parent checks that every
//!   cycle handed out index 0 exactly once.
//!
//! Every child is started with forkserver and waits for commands on its
//! own pipe, blocked in `recv` ([`crate::rig`]). A run sends the children
//! their share of the operations and is timed from the first command to
//! the parent's last operation (ping-pong, barrier) or the last child's
//! report (value). After a warm-up (a calibration whose result is thrown
//! away), the count is calibrated so that a run lasts about
//! [`Plan::target`]. The benches are measured one after another; the
//! Python side, `python/sync_bench.py`, runs with the same plan and the
//! same designs as a [`crate::python::Session`], its rounds between ours.
//!
//! `event_pingpong_2p` has the `socketpair` baseline beside it (a round
//! trip of 8 bytes over a plain socket pair per ping-pong round trip,
//! [`crate::rig::socket_roundtrip_rig`]), the baseline of its contended
//! target (issue 20).

use std::time::{Duration, Instant};

use multiproc::{Barrier, Connection, Event, Lock, StartMethod, Value};

use super::Options;
use crate::report::{self, Impl, Measurement, Row};
use crate::rig::{
    Plan, Rig, Run, Runs, command_pipe, end, measure_rigs, socket_roundtrip_rig, start,
};

/// The group's name on the command line and in the output.
pub const NAME: &str = "sync";

/// How every child (and Python's) is started.
const METHOD: StartMethod = StartMethod::ForkServer;

/// The param of every bench: none applies.
const PARAM: &str = "-";

/// How long the parent waits for the other side in one ping-pong round or
/// barrier cycle; past it, the child is taken for dead and the run fails
/// (rather than hanging).
const WAIT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the parent waits for a child's report at the end of a run.
const REPORT_TIMEOUT: Duration = Duration::from_secs(60);

/// The bench measured beside the socket pair's round trips, its baseline
/// in the contended run (issue 20): one ping-pong round trip against one
/// 8-byte round trip over a plain socket pair.
const PINGPONG: &str = "event_pingpong_2p";

/// Sets up a bench: its children and the parent's side of a run.
type MakeRig = fn() -> Result<Rig, String>;

/// The benches in report order: name, unit, and what sets up its rig.
const BENCHES: [(&str, &str, MakeRig); 4] = [
    ("lock_uncontended", "ops/s", lock_rig),
    ("value_incr_locked_2p", "ops/s", value_rig),
    ("event_pingpong_2p", "roundtrips/s", pingpong_rig),
    ("barrier_2p", "cycles/s", barrier_rig),
];

/// Runs the group: multiproc (and the socket pair beside the ping-pong),
/// with Python's rounds interleaved.
pub fn run(opts: &Options) -> Vec<Row> {
    let plan = Plan::new(opts.quick);
    let mut multiproc = Vec::new();
    let mut socket = Vec::new();
    opts.progress(
        NAME,
        "python (sync_bench.py) starting, its rounds interleaved with ours",
    );
    let args = plan.python_args(METHOD);
    let mut python = opts
        .python
        .session("sync_bench.py", &args, plan.python_timeout);
    for (bench, unit, rig) in BENCHES {
        if bench == PINGPONG {
            opts.progress(NAME, &format!("{bench}: multiproc, socketpair, python"));
            // The socket child is forked first (`rig::socket_roundtrip_rig`).
            let sock = socket_roundtrip_rig();
            let [runs, sock] =
                measure_rigs(plan.target, plan.reps, [rig(), sock], &mut || python.turn());
            multiproc.push(rate(bench, unit, runs));
            socket.push(rate(bench, unit, sock));
        } else {
            opts.progress(NAME, &format!("{bench}: multiproc, python"));
            let [runs] = measure_rigs(plan.target, plan.reps, [rig()], &mut || python.turn());
            multiproc.push(rate(bench, unit, runs));
        }
    }
    let python = python.finish();
    let rows = report::pair(
        NAME,
        multiproc,
        python.measurements,
        python.failure.as_deref(),
    );
    report::add_reference(NAME, rows, Impl::Socketpair, socket)
}

/// The rate (operations per second) of per-run `(operations, seconds)`.
fn rate(bench: &str, unit: &str, runs: Runs) -> Measurement {
    let samples = runs.map(|runs| {
        runs.iter()
            .map(|&(n, secs)| n as f64 / secs.max(1e-12))
            .collect()
    });
    Measurement::new(bench, PARAM, unit, samples)
}

// ---------------------------------------------------------------------------
// Children

/// `value_incr_locked_2p`: for every command `n`, increments the value `n`
/// times under its lock, then reports. Returns when the command pipe
/// closes, or if the lock reports a dead holder (the parent then gets no
/// report, and the run fails).
fn incrementer((cmd, v): (Connection<(), u64>, Value<u64>)) {
    while let Ok(n) = cmd.recv() {
        for _ in 0..n {
            let Ok(mut guard) = v.get_lock() else {
                return;
            };
            *guard += 1;
        }
        if cmd.send(&()).is_err() {
            return;
        }
    }
}

/// `event_pingpong_2p`, the child's side (B): for every command `n`, `n`
/// times waits for `ping`, clears it, then sets `pong`; then reports.
///
/// B clears `ping` *before* it sets `pong`, and the parent (A, see
/// [`pinger`]) clears `pong` before it sets `ping` again: so each event is
/// cleared by its waiter before the waiter's answer, which is what lets the
/// other side set it again. A set is never undone by a late clear, and no
/// set is seen twice. `wait` returns at once if the event is already set,
/// so a set that comes before the wait is not lost either.
fn ponger((cmd, ping, pong): (Connection<(), u64>, Event, Event)) {
    while let Ok(n) = cmd.recv() {
        for _ in 0..n {
            ping.wait();
            ping.clear();
            pong.set();
        }
        if cmd.send(&()).is_err() {
            return;
        }
    }
}

/// `barrier_2p`, the child's party: for every command `n`, waits on the
/// barrier `n` times, then reports how many of those waits returned index
/// 0. Returns if the barrier breaks (the parent's wait timed out).
fn party((cmd, barrier): (Connection<u64, u64>, Barrier)) {
    while let Ok(n) = cmd.recv() {
        let mut zeros = 0u64;
        for _ in 0..n {
            match barrier.wait() {
                Ok(0) => zeros += 1,
                Ok(_) => {}
                Err(_) => return,
            }
        }
        if cmd.send(&zeros).is_err() {
            return;
        }
    }
}

// ---------------------------------------------------------------------------
// Rigs: the children of a bench and the parent's side of a run

/// `lock_uncontended`: the parent takes and releases the lock `count`
/// times; no child.
fn lock_rig() -> Result<Rig, String> {
    let lock = Lock::new().map_err(|e| format!("lock failed: {e}"))?;
    let run: Box<Run> = Box::new(move |count| {
        let t0 = Instant::now();
        for _ in 0..count {
            let guard = lock
                .lock()
                .map_err(|_| "the lock reported a dead holder".to_string())?;
            drop(guard);
        }
        Ok(t0.elapsed())
    });
    Ok(Rig {
        children: Vec::new(),
        run,
    })
}

/// `value_incr_locked_2p`: two [`incrementer`] children; a run of `count`
/// increments gives each half, waits for both reports, and checks that
/// the value (reset to 0 before the run) is `count`.
fn value_rig() -> Result<Rig, String> {
    let v = Value::new(0u64).map_err(|e| format!("value failed: {e}"))?;
    let mut children = Vec::new();
    let mut cmds = Vec::new();
    for _ in 0..2 {
        let started = command_pipe::<u64, ()>().and_then(|(ours, theirs)| {
            start(METHOD, incrementer, (theirs, v.clone())).map(|child| (ours, child))
        });
        match started {
            Ok((ours, child)) => {
                cmds.push(ours);
                children.push(child);
            }
            Err(e) => {
                drop(cmds);
                return end(children, Err(e));
            }
        }
    }
    let run: Box<Run> = Box::new(move |count| {
        v.set(0);
        let half = count / 2;
        let t0 = Instant::now();
        for (cmd, n) in cmds.iter().zip([half, count - half]) {
            cmd.send(&n).map_err(|e| format!("command failed: {e}"))?;
        }
        for cmd in &cmds {
            cmd.recv_timeout(REPORT_TIMEOUT)
                .map_err(|e| format!("no report from an incrementer: {e}"))?;
        }
        let took = t0.elapsed();
        let got = v.get();
        if got != count {
            return Err(format!("the value is {got} after {count} increments"));
        }
        Ok(took)
    });
    Ok(Rig { children, run })
}

/// `event_pingpong_2p`: a [`ponger`] child; the parent is [`pinger`].
fn pingpong_rig() -> Result<Rig, String> {
    let ping = Event::new().map_err(|e| format!("event failed: {e}"))?;
    let pong = Event::new().map_err(|e| format!("event failed: {e}"))?;
    let (ours, theirs) = command_pipe::<u64, ()>()?;
    let child = start(METHOD, ponger, (theirs, ping.clone(), pong.clone()))?;
    let run: Box<Run> = Box::new(move |count| pinger(&ours, &ping, &pong, count));
    Ok(Rig {
        children: vec![child],
        run,
    })
}

/// `event_pingpong_2p`, the parent's side (A) of a run of `count` round
/// trips: tells the child the count, then per round trip sets `ping`,
/// waits for `pong` and clears it (before the next `ping`: see
/// [`ponger`]). Timed up to the last `pong`; then checks the child's
/// report and that both events ended clear.
fn pinger(
    cmd: &Connection<u64, ()>,
    ping: &Event,
    pong: &Event,
    count: u64,
) -> Result<Duration, String> {
    let t0 = Instant::now();
    cmd.send(&count)
        .map_err(|e| format!("command failed: {e}"))?;
    for i in 0..count {
        ping.set();
        if !pong.wait_timeout(WAIT_TIMEOUT) {
            return Err(format!(
                "no pong within {} s in round trip {i}",
                WAIT_TIMEOUT.as_secs()
            ));
        }
        pong.clear();
    }
    let took = t0.elapsed();
    cmd.recv_timeout(REPORT_TIMEOUT)
        .map_err(|e| format!("no report from the ponger: {e}"))?;
    if ping.is_set() || pong.is_set() {
        return Err("an event was left set after the run".to_string());
    }
    Ok(took)
}

/// `barrier_2p`: a [`party`] child; the parent is the other party. A run
/// of `count` cycles tells the child the count, then waits on the barrier
/// `count` times; timed up to the parent's last wait. Every cycle must
/// hand out index 0 to exactly one party: the parent's and the child's
/// zeros must add up to `count`.
fn barrier_rig() -> Result<Rig, String> {
    let barrier = Barrier::new(2).map_err(|e| format!("barrier failed: {e}"))?;
    let (ours, theirs) = command_pipe::<u64, u64>()?;
    let child = start(METHOD, party, (theirs, barrier.clone()))?;
    let run: Box<Run> = Box::new(move |count| {
        let t0 = Instant::now();
        ours.send(&count)
            .map_err(|e| format!("command failed: {e}"))?;
        let mut zeros = 0u64;
        for i in 0..count {
            match barrier.wait_timeout(WAIT_TIMEOUT) {
                Ok(0) => zeros += 1,
                Ok(_) => {}
                Err(e) => return Err(format!("cycle {i}: {e}")),
            }
        }
        let took = t0.elapsed();
        let theirs = ours
            .recv_timeout(REPORT_TIMEOUT)
            .map_err(|e| format!("no report from the child party: {e}"))?;
        if zeros + theirs != count {
            return Err(format!(
                "index 0 was handed out {} times in {count} cycles",
                zeros + theirs
            ));
        }
        Ok(took)
    });
    Ok(Rig {
        children: vec![child],
        run,
    })
}
