//! What a user sees of a running map: a result is not held back by the
//! items that follow it (a worker batches the answers of quick items into
//! one write, but a long item after them must not keep them from the parent
//! until it ends), a progress bar knows the whole length at once, and a
//! worker does not print the panics the pool reports to its caller.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{LIMIT, deadline};
use multiproc::pool::Progress;
use multiproc::{Pool, PoolError, StartMethod, TaskError};

const LONG: u64 = 150;

fn quick_then_long(x: u64) -> u64 {
    if x == LONG {
        std::thread::sleep(Duration::from_secs(3));
    }
    x
}

#[test]
fn quick_results_arrive_while_a_long_item_after_them_runs() {
    deadline(LIMIT, || {
        let pool = Pool::builder().workers(1).build().unwrap();
        let start = Instant::now();
        let mut before_long = Vec::new();
        for r in pool
            .task(quick_then_long)
            .chunksize(1)
            .imap_unordered(0..200u64)
        {
            let x = r.unwrap();
            if x < LONG {
                before_long.push((x, start.elapsed()));
            }
        }
        assert_eq!(before_long.len(), LONG as usize);
        // The long item takes 3 s; every item before it finishes within
        // milliseconds of the start and must arrive well before the end of
        // the long one.
        let (x, late) = *before_long.iter().max_by_key(|(_, t)| *t).unwrap();
        assert!(
            late < Duration::from_millis(1500),
            "item {x} arrived {late:?} after the start"
        );
    });
}

fn twice(x: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(1));
    2 * x
}

/// A [`Progress`] that remembers what it was told.
#[derive(Default)]
struct Seen {
    total: AtomicU64,
    done: AtomicU64,
    finished: AtomicU64,
    /// Every total it was told, in order.
    totals: Mutex<Vec<u64>>,
}

impl Progress for Seen {
    fn set_total(&self, total: u64) {
        self.total.store(total, Ordering::SeqCst);
        self.totals.lock().unwrap().push(total);
    }
    fn advance(&self, n: u64) {
        self.done.fetch_add(n, Ordering::SeqCst);
    }
    fn finish(&self) {
        self.finished.fetch_add(1, Ordering::SeqCst);
    }
}

impl Seen {
    fn now(&self) -> (u64, u64, u64) {
        (
            self.done.load(Ordering::SeqCst),
            self.total.load(Ordering::SeqCst),
            self.finished.load(Ordering::SeqCst),
        )
    }
}

#[test]
fn a_progress_bar_knows_the_whole_length_from_the_start() {
    deadline(LIMIT, || {
        let pool = Pool::builder().workers(2).build().unwrap();
        let seen = Arc::new(Seen::default());
        let handle = pool
            .task(twice)
            .progress_to(Arc::clone(&seen))
            .map_async(0..300u64);
        // Not counted up chunk by chunk as they are submitted.
        assert_eq!(seen.totals.lock().unwrap()[0], 300);
        assert_eq!(handle.get().unwrap().len(), 300);
        // Finished, once, before `get` returned.
        assert_eq!(seen.now(), (300, 300, 1));
        assert!(seen.totals.lock().unwrap().iter().all(|&t| t == 300));
        // An imap reads its input lazily, but a range knows its length.
        let seen = Arc::new(Seen::default());
        let mut results = pool
            .task(twice)
            .progress_to(Arc::clone(&seen))
            .imap_unordered(0..300u64);
        assert!(results.next().unwrap().is_ok());
        assert_eq!(seen.total.load(Ordering::SeqCst), 300);
        assert_eq!(seen.finished.load(Ordering::SeqCst), 0);
        assert_eq!(results.count(), 299);
        assert_eq!(seen.now(), (300, 300, 1));
        // A lazy imap over an input of unknown length grows it instead.
        let seen = Arc::new(Seen::default());
        let out: Vec<u64> = pool
            .task(twice)
            .progress_to(Arc::clone(&seen))
            .imap((0..50u64).filter(|x| x % 2 == 0))
            .map(Result::unwrap)
            .collect();
        assert_eq!(out.len(), 25);
        assert_eq!(seen.now(), (25, 25, 1));
        // One that says a wrong length ends at its true one.
        let seen = Arc::new(Seen::default());
        let out: Vec<u64> = pool
            .task(twice)
            .progress_to(Arc::clone(&seen))
            .imap(Liar(0..10))
            .map(Result::unwrap)
            .collect();
        assert_eq!(out.len(), 10);
        assert_eq!(seen.now(), (10, 10, 1));
        // A submitted task, awaited: finished too.
        let seen = Arc::new(Seen::default());
        let handle = pool.task(twice).progress_to(Arc::clone(&seen)).submit(21);
        assert_eq!(futures::executor::block_on(handle), Ok(42));
        assert_eq!(seen.now(), (1, 1, 1));
    });
}

/// An iterator that claims 20 items and yields those of its range.
struct Liar(std::ops::Range<u64>);

impl Iterator for Liar {
    type Item = u64;
    fn next(&mut self) -> Option<u64> {
        self.0.next()
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        (20, Some(20))
    }
}

/// Set in the copy of this test binary that runs the panicking pools.
const QUIET_ENV: &str = "MULTIPROC_TEST_QUIET_PANICS";

fn unlucky(x: u64) -> u64 {
    assert!(x != 3, "task panic on purpose");
    x
}

fn panicking_initializer(_: ()) -> Result<(), String> {
    panic!("initializer panic on purpose")
}

/// Run by [`a_worker_does_not_print_the_panics_its_pool_reports`] in a
/// copy of this binary whose stderr it reads; passes at once otherwise.
#[test]
fn panicking_pools() {
    if std::env::var_os(QUIET_ENV).is_none() {
        return;
    }
    for m in StartMethod::ALL {
        let pool = Pool::builder().workers(2).start_method(m).build().unwrap();
        let out = pool.map_results(unlucky, 0..6u64);
        assert!(
            matches!(&out[3], Err(TaskError::Panicked(p)) if p.message == "task panic on purpose"),
            "{m}: {:?}",
            out[3]
        );
        pool.join();
        match Pool::builder()
            .workers(1)
            .start_method(m)
            .initializer(panicking_initializer, ())
            .build()
        {
            Err(PoolError::Initializer { message, .. }) => {
                assert!(
                    message.contains("initializer panic on purpose"),
                    "{m}: {message}"
                )
            }
            other => panic!("{m}: {other:?}"),
        }
    }
    println!("the panicking pools ran");
}

#[test]
fn a_worker_does_not_print_the_panics_its_pool_reports() {
    deadline(LIMIT, || {
        let (stdout, stderr) = common::run_this_test_alone("panicking_pools", QUIET_ENV);
        assert!(stdout.contains("the panicking pools ran"), "{stdout}");
        // The caller got both panics; the workers printed neither.
        assert!(!stderr.contains("on purpose"), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    });
}
