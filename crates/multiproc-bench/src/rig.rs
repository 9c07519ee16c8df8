//! Children that the parent drives through command pipes, shared by the
//! groups whose benches are throughput runs (`queue`, `sync`).
//!
//! A bench is a [`Rig`]: its children, each blocked in `recv` on its own
//! command pipe between runs, and the parent's side of one run, which
//! performs a given number of operations (commanding the children) and
//! returns how long they took. [`measure_rigs`] warms the rigs up,
//! calibrates and times them, and ends the children: dropping the parent's
//! ends of the command pipes ends their input, so they return.

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

/// The children of one bench and the parent's side of a run. `run` owns
/// the parent's ends of the command pipes, so dropping it ends the
/// children's input.
pub struct Rig {
    /// The bench's children (none if the parent does all the work).
    pub children: Vec<Process<()>>,
    /// The parent's side of one run.
    pub run: Box<Run>,
}

impl Rig {
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
/// ([`measure::timed_runs`]), then ends every child. Returns one result
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
) -> [Runs; N] {
    let mut out: [Option<Runs>; N] = std::array::from_fn(|_| None);
    let mut started = Vec::new();
    for (i, rig) in rigs.into_iter().enumerate() {
        match rig.and_then(|mut rig| match measure::calibrate(target, &mut *rig.run) {
            Ok(_) => Ok(rig),
            Err(e) => rig.finish(Err(e)),
        }) {
            Ok(rig) => started.push((i, rig)),
            Err(e) => out[i] = Some(Err(e)),
        }
    }
    let results = {
        let mut runs: Vec<&mut Run> = started.iter_mut().map(|(_, r)| &mut *r.run).collect();
        measure::timed_runs(target, reps, &mut runs)
    };
    for ((i, rig), result) in started.into_iter().zip(results) {
        out[i] = Some(rig.finish(result));
    }
    out.map(|r| r.unwrap_or_else(|| Err("not measured".to_string())))
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
