//! Helpers shared by the groups' multiproc side: timing, memory of a
//! process, and waiting for a child to be ready.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Runs `op` `reps` times and returns each run's wall time in milliseconds.
/// Stops at the first error.
pub fn time_each_ms<E>(reps: usize, mut op: impl FnMut() -> Result<(), E>) -> Result<Vec<f64>, E> {
    let mut samples = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t0 = Instant::now();
        op()?;
        samples.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    Ok(samples)
}

/// Times several operations in interleaved batches: each runs `warmup`
/// times untimed, then `batches` rounds in which every operation runs one
/// batch of `batch` times. Returns, per operation, each batch's mean time
/// per run in microseconds. Interleaving exposes all of them alike to
/// drifts in the machine's load. An operation that fails leaves the
/// rotation with its error; the others go on. `between` runs at the start
/// of every round, untimed: the other side's turn (Python's batch of the
/// same round, see [`crate::python::Session`]), so that its samples and
/// ours alternate too.
pub fn per_op_us<F: FnMut() -> Result<(), String> + ?Sized>(
    warmup: usize,
    batches: usize,
    batch: usize,
    ops: &mut [&mut F],
    between: &mut dyn FnMut(),
) -> Vec<Result<Vec<f64>, String>> {
    let mut results: Vec<Result<Vec<f64>, String>> = ops
        .iter_mut()
        .map(|op| (0..warmup).try_for_each(|_| op()).map(|()| Vec::new()))
        .collect();
    let n = ops.len();
    for b in 0..batches {
        between();
        // The order rotates from batch to batch: the op timed right after
        // another one inherits where the scheduler left the processes
        // (after a blocking socket's wake-ups, for example, the next rig's
        // two ends may share a processor for a while), and a fixed order
        // would hand that cost to the same op every time.
        for k in 0..n {
            let i = (b + k) % n;
            let (op, result) = (&mut ops[i], &mut results[i]);
            let Ok(samples) = result else { continue };
            let t0 = Instant::now();
            match (0..batch).try_for_each(|_| op()) {
                Ok(()) => samples.push(t0.elapsed().as_secs_f64() * 1e6 / batch.max(1) as f64),
                Err(e) => *result = Err(e),
            }
        }
    }
    results
}

/// Times several throughput benchmarks, interleaved. Each `run(count)`
/// performs `count` operations and returns how long they took. Each is
/// first calibrated ([`calibrate`]) to last about `target`, then `reps`
/// rounds run every one once. Returns, per run, each repetition's
/// `(operations, seconds)`. A run that fails leaves the rotation with its
/// error. `between` runs at the start of every round, untimed (the other
/// side's turn, as in [`per_op_us`]).
pub fn timed_runs<F: FnMut(u64) -> Result<Duration, String> + ?Sized>(
    target: Duration,
    reps: usize,
    runs: &mut [&mut F],
    between: &mut dyn FnMut(),
) -> Vec<Result<Vec<(u64, f64)>, String>> {
    let counts: Vec<Result<u64, String>> = runs
        .iter_mut()
        .map(|run| calibrate(target, &mut **run))
        .collect();
    let mut results: Vec<Result<Vec<(u64, f64)>, String>> = counts
        .iter()
        .map(|c| c.clone().map(|_| Vec::new()))
        .collect();
    for _ in 0..reps {
        between();
        for ((run, count), result) in runs.iter_mut().zip(&counts).zip(&mut results) {
            let (Ok(samples), Ok(count)) = (&mut *result, count) else {
                continue;
            };
            match run(*count) {
                Ok(took) => samples.push((*count, took.as_secs_f64())),
                Err(e) => *result = Err(e),
            }
        }
    }
    results
}

/// Finds how many operations make `run(count)` (which performs `count` of
/// them and returns how long that took) last about `target`. Counts grow
/// fourfold from 16 until a run lasts at least an eighth of `target`, then
/// scale linearly. The runs double as a warm-up.
pub fn calibrate<E>(
    target: Duration,
    mut run: impl FnMut(u64) -> Result<Duration, E>,
) -> Result<u64, E> {
    let mut count: u64 = 16;
    loop {
        let took = run(count)?;
        if took >= target / 8 || count >= 1 << 40 {
            let scaled = count as f64 * target.as_secs_f64() / took.as_secs_f64().max(1e-9);
            return Ok(scaled.ceil().max(1.0) as u64);
        }
        count *= 4;
    }
}

/// Private memory of process `pid` in KiB: the sum of its `Private_Clean`
/// and `Private_Dirty` from `/proc/<pid>/smaps_rollup` (or, on kernels
/// without it, summed over `/proc/<pid>/smaps`).
pub fn private_kib(pid: i32) -> Result<f64, String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .or_else(|_| std::fs::read_to_string(format!("/proc/{pid}/smaps")))
        .map_err(|e| format!("cannot read /proc/{pid}/smaps_rollup: {e}"))?;
    let mut total = 0.0;
    let mut seen = false;
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        if key == "Private_Clean" || key == "Private_Dirty" {
            let kib = rest
                .split_whitespace()
                .next()
                .and_then(|n| n.parse::<f64>().ok())
                .ok_or_else(|| format!("bad line in smaps of {pid}: {line}"))?;
            total += kib;
            seen = true;
        }
    }
    if seen {
        Ok(total)
    } else {
        Err(format!("no Private_* lines in smaps of {pid}"))
    }
}

/// Polls every millisecond until `path` exists. Fails if `alive` says the
/// process that should create it is gone, or at `timeout`.
pub fn wait_for_file(
    path: &Path,
    timeout: Duration,
    mut alive: impl FnMut() -> bool,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        if path.exists() {
            return Ok(());
        }
        if !alive() {
            return Err(format!(
                "the child exited before creating {}",
                path.display()
            ));
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "the child did not create {} within {} s",
                path.display(),
                timeout.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A fresh path in the temporary directory, unique to this process, for a
/// child to create when it is ready. The caller removes the file.
pub fn marker_path(tag: &str) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!(
        "multiproc-bench-{}-{tag}-{n}.ready",
        std::process::id()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calibration_scales_to_the_target() {
        // 1 µs per operation: 100 ms is 100_000 operations.
        let count = calibrate(Duration::from_millis(100), |n| {
            Ok::<_, ()>(Duration::from_micros(n))
        })
        .unwrap();
        assert!((100_000..=100_001).contains(&count), "{count}");
    }

    #[test]
    fn per_op_us_interleaves_and_drops_failures() {
        let (mut a, mut b) = (0, 0);
        let mut op_a = || {
            a += 1;
            Ok(())
        };
        let mut op_b = || {
            b += 1;
            if b > 10 {
                Err("tired".to_string())
            } else {
                Ok(())
            }
        };
        let ops: &mut [&mut dyn FnMut() -> Result<(), String>] = &mut [&mut op_a, &mut op_b];
        let mut turns = 0;
        let results = per_op_us(3, 4, 5, ops, &mut || turns += 1);
        assert_eq!(turns, 4);
        assert_eq!(results[0].as_ref().map(Vec::len), Ok(4));
        assert_eq!(results[1], Err("tired".to_string()));
        // 3 warm-up runs and 4 batches of 5; b fails in its second batch.
        assert_eq!((a, b), (23, 11));
    }

    #[test]
    fn timed_runs_use_the_calibrated_count() {
        let mut run = |n: u64| Ok(Duration::from_micros(n));
        let mut turns = 0;
        let results = timed_runs(Duration::from_millis(100), 3, &mut [&mut run], &mut || {
            turns += 1
        });
        assert_eq!(turns, 3);
        let runs = results[0].as_ref().unwrap();
        assert_eq!(runs.len(), 3);
        assert!(runs.iter().all(|&(n, secs)| n >= 100_000 && secs > 0.09));
    }

    #[test]
    fn own_private_memory_is_positive() {
        let kib = private_kib(std::process::id() as i32).unwrap();
        assert!(kib > 0.0);
    }
}
