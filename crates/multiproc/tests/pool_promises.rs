//! The README's pool promises that no other test pinned down: workers
//! ignore SIGINT (a terminal's Ctrl-C reaches the whole process group, and
//! the parent decides).

mod common;

use common::{LIMIT, assert_gone, deadline, send_signal};
use multiproc::{Pool, StartMethod};

fn square(x: u64) -> u64 {
    x * x
}

/// Whether `pid` ignores `signal`, from the `SigIgn` mask in /proc.
fn ignores(pid: i32, signal: i32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let mask = status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .map(|m| u64::from_str_radix(m.trim(), 16).unwrap())
        .unwrap();
    mask & (1 << (signal - 1)) != 0
}

#[test]
fn workers_ignore_sigint_and_keep_working() {
    deadline(LIMIT, || {
        for m in StartMethod::ALL {
            let pool = Pool::builder().workers(2).start_method(m).build().unwrap();
            assert_eq!(pool.map(square, 0..8u64).unwrap()[7], 49, "{m}");
            let pids: Vec<i32> = pool.stats().iter().map(|s| s.pid).collect();
            for &pid in &pids {
                assert!(ignores(pid, libc::SIGINT), "{m}: worker {pid}");
                assert!(send_signal(pid, libc::SIGINT), "{m}");
            }
            assert_eq!(pool.map(square, 0..64u64).unwrap()[63], 63 * 63, "{m}");
            let after: Vec<i32> = pool.stats().iter().map(|s| s.pid).collect();
            assert_eq!(after, pids, "{m}: a worker was replaced");
            assert!(pool.stats().iter().all(|s| s.restarts == 0), "{m}");
            drop(pool);
            for pid in pids {
                assert_gone(pid);
            }
        }
    });
}
