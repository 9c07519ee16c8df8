//! The README's pool promises that no other test pinned down: workers
//! ignore SIGINT (a terminal's Ctrl-C reaches the whole process group, and
//! the parent decides).

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{LIMIT, assert_gone, deadline, send_signal};
use multiproc::pool::with_state;
use multiproc::{Pool, Queue, SharedMemory, StartMethod};

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

/// Counts each run of an item in a shared block, item 155 (the sixth of
/// its chunk of 10) tells the test its pid and waits to be killed.
fn count_then_maybe_wait((x, slow): (u64, bool)) -> u64 {
    with_state(|(block, pids): &mut (SharedMemory, Queue<i32>)| {
        block.as_atomic_u64()[x as usize].fetch_add(1, Ordering::SeqCst);
        if x == 155 {
            pids.put(std::process::id() as i32).unwrap();
            std::thread::sleep(Duration::from_secs(60));
        }
    })
    .unwrap();
    if slow {
        std::thread::sleep(Duration::from_millis(2));
    }
    x
}

fn keep(state: (SharedMemory, Queue<i32>)) -> Result<(SharedMemory, Queue<i32>), String> {
    Ok(state)
}

/// Runs `0..400` in chunks of `chunk` on two workers, kills the worker
/// running item 155, and returns how many times each item ran.
fn runs_with_a_kill(chunk: usize, slow: bool) -> Vec<u64> {
    let block = SharedMemory::create(400 * 8).unwrap();
    let running = Queue::new().unwrap();
    let pool = Pool::builder()
        .workers(2)
        .initializer(keep, (block.clone(), running.clone()))
        .build()
        .unwrap();
    let killer = std::thread::spawn(move || {
        let victim = running.get().unwrap();
        assert!(send_signal(victim, libc::SIGKILL));
        victim
    });
    let results = pool
        .task(count_then_maybe_wait)
        .chunksize(chunk)
        .map_results((0..400u64).map(|x| (x, slow)));
    let victim = killer.join().unwrap();
    for (i, r) in results.iter().enumerate() {
        match r {
            Ok(v) => assert_eq!(*v, i as u64),
            Err(e) => assert!(i == 155, "item {i}: {e:?}"),
        }
    }
    assert!(results[155].is_err());
    let pids: Vec<i32> = pool.stats().iter().map(|s| s.pid).collect();
    drop(pool);
    for pid in pids.into_iter().chain([victim]) {
        assert_gone(pid);
    }
    let runs: Vec<u64> = block.as_atomic_u64()[..400]
        .iter()
        .map(|c| c.load(Ordering::SeqCst))
        .collect();
    assert_eq!(runs[155], 1, "the killed item is not run again");
    assert!(
        runs.iter().all(|&n| (1..=2).contains(&n)),
        "every item runs, none more than twice: {runs:?}"
    );
    runs
}

#[test]
fn finished_items_whose_results_died_with_their_worker_run_again() {
    deadline(LIMIT, || {
        // Slow items (2 ms) send each result before the next item starts:
        // with chunks of 10, the five items of the killed one's chunk that
        // ran before it run again, and nothing else does.
        let runs = runs_with_a_kill(10, true);
        assert_eq!(runs[150..155], [2; 5], "{:?}", &runs[140..170]);
        let twice: Vec<usize> = (0..400).filter(|&i| runs[i] == 2).collect();
        assert_eq!(twice, (150..155).collect::<Vec<_>>());
        // With chunks of one, a slow item never runs twice.
        let runs = runs_with_a_kill(1, true);
        assert!(runs.iter().all(|&n| n == 1), "{runs:?}");
        // Quick items (microseconds) send their results in batches, up to
        // 0.5 ms worth: those the killed worker had not sent yet run again,
        // whatever the chunk size (here too, at most twice).
        runs_with_a_kill(1, false);
    });
}

/// The name and pid of the worker that runs it.
fn worker_name(_: u64) -> (String, i32) {
    (multiproc::current_process().name, std::process::id() as i32)
}

/// Workers are named `PoolWorker-<index>`, the index that `stats()` and
/// `TaskError::WorkerDied` report (from 0); a replacement takes the name
/// of the worker it replaces.
#[test]
fn workers_are_named_by_their_index() {
    deadline(LIMIT, || {
        let pool = Pool::builder().workers(2).build().unwrap();
        let check = |pool: &Pool| {
            let seen = pool.task(worker_name).chunksize(1).map(0..64u64).unwrap();
            let stats = pool.stats();
            for (name, pid) in seen {
                let index = stats.iter().find(|s| s.pid == pid).map(|s| s.index);
                assert_eq!(Some(name), index.map(|i| format!("PoolWorker-{i}")));
            }
        };
        check(&pool);
        let first = pool.stats()[0].pid;
        assert!(send_signal(first, libc::SIGKILL));
        assert_gone(first);
        check(&pool);
        assert!(pool.stats()[0].pid != first, "worker 0 was not replaced");
    });
}
