//! Children that the parent drives through pipes, shared by the groups
//! whose benches are round trips or throughput runs (`pipe`, `queue`,
//! `sync`).
//!
//! A bench is a [`Rig`]: its children, each blocked in `recv` on its own
//! pipe between runs, and the parent's side of the work: one run, which
//! performs a given number of operations (commanding the children) and
//! returns how long they took ([`Run`]), or one round trip (`pipe`).
//! [`measure_rigs`] warms throughput rigs up, calibrates and times them,
//! and ends the children: dropping the parent's ends of the pipes ends
//! their input, so they return. [`measure_each`] does the same around any
//! measurement of the rigs' operations.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use multiproc::{Connection, JoinTimeoutError, Process, StartMethod, pipe};

use crate::measure;

/// How long a child may take to exit once its input has ended.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Per-run `(operations, seconds)` of one bench, or why it failed.
pub type Runs = Result<Vec<(u64, f64)>, String>;

/// One run of the given number of operations, driven by the parent;
/// returns how long it took.
pub type Run = dyn FnMut(u64) -> Result<Duration, String>;

/// The children of one bench and the parent's side of the work (by
/// default, of a throughput [`Run`]). `run` owns the parent's ends of the
/// pipes (or whatever else ends the children's input when dropped), so
/// dropping it ends the children's input.
pub struct Rig<F: ?Sized = Run> {
    /// The bench's children (none if the parent does all the work).
    pub children: Vec<Process<()>>,
    /// The parent's side of one run (or round trip).
    pub run: Box<F>,
}

impl<F: ?Sized> Rig<F> {
    /// Ends the children's input and then the children, after a
    /// measurement that produced `result` (see [`end`]).
    pub fn finish<T>(self, result: Result<T, String>) -> Result<T, String> {
        let Rig { children, run } = self;
        drop(run);
        end(children, result)
    }
}

/// Ends `children` after `result`: on success each must exit by itself
/// within [`EXIT_TIMEOUT`] (their input has ended); on failure they are
/// killed. Either way every one is reaped. Returns `result`, or the first
/// thing that went wrong with a child.
pub fn end<T>(children: Vec<Process<()>>, result: Result<T, String>) -> Result<T, String> {
    if result.is_err() {
        for child in &children {
            let _ = child.kill();
        }
        for child in children {
            // Killed, the child has no result: the join error is expected.
            let _ = child.join();
        }
        return result;
    }
    let mut result = result;
    let deadline = Instant::now() + EXIT_TIMEOUT;
    for child in children {
        let failure = match child.join_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(()) => None,
            Err(JoinTimeoutError::Timeout(child)) => {
                let _ = child.kill();
                let _ = child.join();
                Some(format!(
                    "a child did not exit within {} s of the end of its input",
                    EXIT_TIMEOUT.as_secs()
                ))
            }
            Err(JoinTimeoutError::Failed(e)) => Some(format!("a child failed: {e}")),
        };
        if let (Some(why), Ok(_)) = (failure, &result) {
            result = Err(why);
        }
    }
    result
}

/// Warms up the rigs that started, then calibrates them to runs of about
/// `target` and times `reps` runs of each, interleaved
/// ([`measure::timed_runs`], which calls `between` at the start of every
/// round: Python's turn), then ends every child. Returns one result
/// per rig, in order; a rig that did not start has its start error.
///
/// The warm-up is a calibration whose result is thrown away: its first
/// run waits for the children to come up, and the first runs after that
/// are slower than the steady state (pages touched for the first time).
/// Left in the real calibration, they would make the timed runs shorter
/// than `target`.
pub fn measure_rigs<const N: usize>(
    target: Duration,
    reps: usize,
    rigs: [Result<Rig, String>; N],
    between: &mut dyn FnMut(),
) -> [Runs; N] {
    let warmed = rigs.map(|rig| {
        rig.and_then(|mut rig| match measure::calibrate(target, &mut *rig.run) {
            Ok(_) => Ok(rig),
            Err(e) => rig.finish(Err(e)),
        })
    });
    measure_each(warmed, |runs| {
        measure::timed_runs(target, reps, runs, between)
    })
}

/// Measures the rigs that started with `measure` (which gets their
/// operations, in order, and returns one result per operation), then ends
/// every child ([`Rig::finish`]). Returns one result per rig, in order; a
/// rig that did not start has its start error.
pub fn measure_each<F: ?Sized, T, const N: usize>(
    rigs: [Result<Rig<F>, String>; N],
    measure: impl FnOnce(&mut [&mut F]) -> Vec<Result<T, String>>,
) -> [Result<T, String>; N] {
    let mut out: [Option<Result<T, String>>; N] = std::array::from_fn(|_| None);
    let mut started = Vec::new();
    for (i, rig) in rigs.into_iter().enumerate() {
        match rig {
            Ok(rig) => started.push((i, rig)),
            Err(e) => out[i] = Some(Err(e)),
        }
    }
    let results = {
        let mut ops: Vec<&mut F> = started.iter_mut().map(|(_, r)| &mut *r.run).collect();
        measure(&mut ops)
    };
    let mut results = results.into_iter();
    for (i, rig) in started {
        let result = results
            .next()
            .unwrap_or_else(|| Err("no result was measured".to_string()));
        out[i] = Some(rig.finish(result));
    }
    out.map(|r| r.unwrap_or_else(|| Err("not measured".to_string())))
}

/// Repetitions of a group's throughput runs, and how long its Python
/// script may take.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Timed runs (samples) per bench.
    pub reps: usize,
    /// How long one run should last.
    pub target: Duration,
    /// How long the Python script may run.
    pub python_timeout: Duration,
}

impl Plan {
    /// 9 runs of 0.5 s each, or with `quick` 7 of 0.15 s (three were too
    /// few for a stable median, and no min or max worth printing).
    pub fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                reps: 7,
                target: Duration::from_millis(150),
                python_timeout: Duration::from_secs(120),
            }
        } else {
            Plan {
                reps: 9,
                target: Duration::from_millis(500),
                python_timeout: Duration::from_secs(600),
            }
        }
    }

    /// The options that give a group's Python script the same plan and
    /// start method (`--reps`, `--target-ms`, `--start-method`; see
    /// `benchutil.plan_parser`).
    pub fn python_args(&self, method: StartMethod) -> Vec<String> {
        [
            "--reps",
            &self.reps.to_string(),
            "--target-ms",
            &self.target.as_millis().to_string(),
            "--start-method",
            method.as_str(),
        ]
        .map(String::from)
        .to_vec()
    }
}

/// Starts `f(arg)` in a daemon child with `method`.
pub fn start<A>(method: StartMethod, f: fn(A), arg: A) -> Result<Process<()>, String>
where
    A: serde::Serialize + serde::de::DeserializeOwned + Send + 'static,
{
    Process::builder()
        .start_method(method)
        .daemon(true)
        .spawn(f, arg)
        .map_err(|e| format!("start failed: {e}"))
}

/// Both ends of a command pipe: the parent's, then the child's.
pub type Ends<S, R> = (Connection<S, R>, Connection<R, S>);

/// A command pipe: the parent's end and the child's.
pub fn command_pipe<S, R>() -> Result<Ends<S, R>, String> {
    pipe::<S, R>().map_err(|e| format!("pipe failed: {e}"))
}

/// Shuts down the write side of a socket when dropped: the end of input
/// for a forked child, which holds a copy of our descriptor, so that
/// closing ours would not end it.
pub struct ShutdownOnDrop(pub UnixStream);

impl Drop for ShutdownOnDrop {
    fn drop(&mut self) {
        let _ = self.0.shutdown(Shutdown::Write);
    }
}

/// The socket-pair baseline of a round trip, as a throughput rig: a
/// child forked with a closure echoes 8 bytes over a plain
/// `UnixStream::pair()` (one `read` and one `write` per direction, no
/// library); a run of `count` round trips is timed. The blocking
/// transport a user would otherwise write by hand, and the baseline of
/// the contended round trips (issue 20). Fork it before the rigs whose
/// children must see the end of their pipes: the forked child holds
/// copies of every descriptor the parent has then.
pub fn socket_roundtrip_rig() -> Result<Rig, String> {
    let (mut ours, mut theirs) = UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
    let closer = ShutdownOnDrop(ours.try_clone().map_err(|e| format!("dup: {e}"))?);
    let child = Process::builder()
        .daemon(true)
        .fork(move || {
            let mut buf = [0u8; 8];
            while theirs.read_exact(&mut buf).is_ok() {
                if theirs.write_all(&buf).is_err() {
                    break;
                }
            }
        })
        .map_err(|e| format!("fork failed: {e}"))?;
    let mut buf = [0u8; 8];
    let run: Box<Run> = Box::new(move |count| {
        let _ = &closer;
        let t0 = Instant::now();
        for _ in 0..count {
            ours.write_all(b"ping-pon")
                .map_err(|e| format!("write: {e}"))?;
            ours.read_exact(&mut buf)
                .map_err(|e| format!("read: {e}"))?;
        }
        Ok(t0.elapsed())
    });
    Ok(Rig {
        children: vec![child],
        run,
    })
}
