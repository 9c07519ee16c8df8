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
    fn own_private_memory_is_positive() {
        let kib = private_kib(std::process::id() as i32).unwrap();
        assert!(kib > 0.0);
    }
}
