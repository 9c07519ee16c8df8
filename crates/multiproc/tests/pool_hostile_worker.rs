//! A pool worker runs user code, and user code can reach the shared memory
//! in which the worker tells the parent what it runs: from safe code, by
//! opening its own memfd through `/proc/self/fd` and writing the file.
//! These tests do exactly that, as a hostile or corrupted task would, and
//! check that the parent neither trusts what it reads there beyond that
//! worker's own items, nor loops forever on it. Also: a result type whose
//! `Deserialize` panics on what a worker sent (the parent decodes results
//! in the pool's scheduler thread). Every test has a deadline and checks
//! that no worker is left behind.

mod common;

use std::time::{Duration, Instant};

use common::{assert_gone, deadline, small_raw_blocks};
use multiproc::pool::{ResultTimeoutError, TaskHandle};
use multiproc::{Pool, StartMethod, TaskError};

const LIMIT: Duration = Duration::from_secs(40);

/// Slot words (a block per worker): the running item's index, and when
/// it started.
const ITEM: usize = 1;
const START: usize = 2;

/// Item 0 writes an impossible item index (and start time) into every slot
/// word it can reach, keeping the task word, then dies.
fn corrupt_then_die(x: u64) -> u64 {
    if x == 0 {
        // A worker's slot words: task, item, start, then one per part of
        // its return area.
        let written = small_raw_blocks()
            .iter()
            .filter(|block| block.store(ITEM, u64::MAX) & block.store(START, u64::MAX))
            .count();
        assert!(written > 0, "no slot block reachable");
        std::process::exit(3);
    }
    x * 10
}

#[test]
fn a_garbage_item_index_blames_the_running_item_once() {
    // Before the fix, an index out of range made the parent requeue the
    // whole chunk without blame: it ran again, died again, forever.
    deadline(LIMIT, || {
        for m in StartMethod::ALL {
            let pool = Pool::builder().workers(1).start_method(m).build().unwrap();
            let handles: Vec<_> = (0..4)
                .map(|x| pool.task(corrupt_then_die).submit(x))
                .collect();
            let out = outcomes(handles, Duration::from_secs(10), m);
            assert!(
                matches!(&out[0], Err(TaskError::WorkerDied { .. })),
                "{m}: {:?}",
                out[0]
            );
            for (i, r) in out.iter().enumerate().skip(1) {
                assert_eq!(r.as_ref().ok(), Some(&(i as u64 * 10)), "{m}: item {i}");
            }
            finish(pool);
        }
    });
}

/// `(0, marker)`: the victim, which creates `marker` once running, then
/// works for a while. `(1, marker)`: the attacker, which waits for the
/// victim to run, then sets every start-time word it can reach to the
/// dawn of time, so that a parent trusting it would see every timed item
/// as overdue.
fn victim_or_attacker((role, marker): (u8, String)) -> u8 {
    if role == 0 {
        std::fs::write(&marker, b"running").unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        return 0;
    }
    let end = Instant::now() + Duration::from_secs(20);
    while !std::path::Path::new(&marker).exists() {
        assert!(Instant::now() < end, "the victim never started");
        std::thread::sleep(Duration::from_millis(2));
    }
    let written = small_raw_blocks()
        .iter()
        .filter(|block| block.store(START, 1))
        .count();
    assert!(written > 0, "no slot block reachable");
    1
}

#[test]
fn a_worker_cannot_get_another_worker_s_item_killed() {
    // Before the fix, all workers shared one slot table: the attacker made
    // the victim's item (timeout 30 s, running 1.5 s) time out.
    deadline(LIMIT, || {
        for m in StartMethod::ALL {
            let marker = std::env::temp_dir().join(format!(
                "multiproc-victim-{}-{m}-{:?}",
                std::process::id(),
                Instant::now()
            ));
            let marker = marker.to_string_lossy().into_owned();
            let pool = Pool::builder().workers(2).start_method(m).build().unwrap();
            let handles: Vec<_> = [0u8, 1]
                .into_iter()
                .map(|role| {
                    pool.task(victim_or_attacker)
                        .timeout(Duration::from_secs(30))
                        .submit((role, marker.clone()))
                })
                .collect();
            let out = outcomes(handles, Duration::from_secs(25), m);
            let _ = std::fs::remove_file(&marker);
            assert_eq!(
                out[0].as_ref().ok(),
                Some(&0),
                "{m}: the victim: {:?}",
                out[0]
            );
            // The attacker may well be killed for the time it claimed.
            assert!(
                matches!(&out[1], Ok(1) | Err(TaskError::TimedOut(_))),
                "{m}: the attacker: {:?}",
                out[1]
            );
            finish(pool);
        }
    });
}

/// Each task's outcome, all within `within`.
fn outcomes<R: serde::de::DeserializeOwned + Send + 'static>(
    handles: Vec<TaskHandle<R>>,
    within: Duration,
    m: StartMethod,
) -> Vec<Result<R, TaskError>> {
    let end = Instant::now() + within;
    handles
        .into_iter()
        .map(
            |h| match h.get_timeout(end.saturating_duration_since(Instant::now())) {
                Ok(v) => Ok(v),
                Err(ResultTimeoutError::Failed(e)) => Err(e),
                Err(ResultTimeoutError::Timeout(_)) => panic!("{m}: a task never ended"),
            },
        )
        .collect()
}

/// Drops `pool` and checks its workers are gone.
fn finish(pool: Pool) {
    let pids: Vec<i32> = pool.stats().iter().map(|s| s.pid).collect();
    drop(pool);
    for pid in pids.into_iter().filter(|&p| p != 0) {
        assert_gone(pid);
    }
}

/// A result whose `Deserialize` panics on 13, in the parent.
#[derive(Debug, PartialEq, serde::Serialize)]
struct Unlucky(u8);

impl<'de> serde::Deserialize<'de> for Unlucky {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = <u8 as serde::Deserialize>::deserialize(d)?;
        assert_ne!(v, 13, "unlucky");
        Ok(Unlucky(v))
    }
}

fn unlucky(x: u8) -> Unlucky {
    Unlucky(x)
}

#[test]
fn a_result_whose_deserialize_panics_fails_its_item_and_the_pool_goes_on() {
    // Before the fix, the panic killed the scheduler thread: that task and
    // every later one waited forever.
    deadline(LIMIT, || {
        let pool = Pool::builder().workers(1).build().unwrap();
        let m = pool.start_method();
        let out = outcomes(
            vec![pool.task(unlucky).submit(12), pool.task(unlucky).submit(13)],
            Duration::from_secs(10),
            m,
        );
        assert_eq!(out[0].as_ref().ok(), Some(&Unlucky(12)));
        match &out[1] {
            Err(TaskError::ResultDecode(e)) => {
                assert!(e.message.contains("unlucky"), "{e}")
            }
            other => panic!("{other:?}"),
        }
        // In one chunk: the panicking item and those after it fail, the
        // ones before it do not.
        let chunk = pool
            .task(unlucky)
            .chunksize(4)
            .map_async([1, 13, 2, 3])
            .get_timeout(Duration::from_secs(10));
        assert!(
            matches!(
                chunk,
                Err(ResultTimeoutError::Failed(TaskError::ResultDecode(_)))
            ),
            "{chunk:?}"
        );
        let again = outcomes(
            vec![pool.task(unlucky).submit(7)],
            Duration::from_secs(10),
            m,
        );
        assert_eq!(again[0].as_ref().ok(), Some(&Unlucky(7)));
        finish(pool);
    });
}
