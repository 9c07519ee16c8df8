//! The contended mode's load: one CPU-bound hog process per core, started
//! and ended by the benchmark itself, so that every process of a bench
//! competes for a processor, as on a machine running more processes than
//! cores (issue 20).
//!
//! The hogs are children forked with multiproc's own `Process`: a hog
//! dies with this process whatever ends it (the kernel's parent-death
//! signal, even on SIGKILL; Ctrl-C reaches the whole process group), its
//! handle kills and reaps it when dropped (on a panic too), and a hog
//! also returns by itself if it finds its parent gone.

use std::hint::black_box;
use std::time::{Duration, Instant};

use multiproc::Process;

/// The running hogs; dropping them kills and reaps every one.
pub struct Hogs {
    children: Vec<Process<()>>,
}

impl Hogs {
    /// Starts `count` hogs (at least one).
    pub fn start(count: usize) -> Result<Hogs, String> {
        let parent = std::process::id();
        let mut hogs = Hogs {
            children: Vec::new(),
        };
        for _ in 0..count.max(1) {
            let child = Process::builder()
                .daemon(true)
                .fork(move || hog(parent))
                .map_err(|e| format!("a hog did not start: {e}"))?;
            hogs.children.push(child);
        }
        Ok(hogs)
    }

    /// How many hogs run.
    pub fn len(&self) -> usize {
        self.children.len()
    }
}

impl Drop for Hogs {
    fn drop(&mut self) {
        for child in &self.children {
            let _ = child.kill();
        }
        for child in self.children.drain(..) {
            // Killed: the join reports the signal, as expected.
            let _ = child.join();
        }
    }
}

/// A hog's work: integer arithmetic in a loop, checking every 10 ms that
/// its parent is still `parent`.
fn hog(parent: u32) {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    loop {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_millis(10) {
            for _ in 0..10_000 {
                x = black_box(x.rotate_left(5) ^ x.wrapping_mul(0x2545_f491_4f6c_dd1d));
            }
        }
        if std::os::unix::process::parent_id() != parent {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hogs_run_until_dropped_and_leave_no_child() {
        let hogs = Hogs::start(2).unwrap();
        assert_eq!(hogs.len(), 2);
        let pids: Vec<i32> = hogs.children.iter().map(|c| c.pid()).collect();
        std::thread::sleep(Duration::from_millis(50));
        for c in &hogs.children {
            assert!(c.is_alive(), "a hog stopped by itself");
        }
        drop(hogs);
        for pid in pids {
            // Reaped: no /proc entry (or a recycled pid that is not ours).
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let ppid_is_us = stat
                .rsplit(')')
                .next()
                .and_then(|rest| rest.split_whitespace().nth(1))
                .is_some_and(|ppid| ppid == std::process::id().to_string());
            assert!(!ppid_is_us, "hog {pid} is still our child");
        }
    }
}
