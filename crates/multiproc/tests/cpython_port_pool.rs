//! Ports of CPython's `_TestPool`, `_TestPoolWorkerErrors` and
//! `_TestPoolWorkerLifetime` (`Lib/test/_test_multiprocessing.py`) to the
//! Rust API: what Python asserts, adapted to Rust types (a raised
//! exception is a `TaskError`, `multiprocessing.TimeoutError` is
//! `ResultTimeoutError::Timeout`, `ValueError` on a closed pool is
//! `TaskError::Closed`, on a bad setting `PoolError::Invalid`). Each test
//! names the Python test it ports.

mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use common::{LIMIT, Unencodable, assert_gone, deadline};
use multiproc::pool::ResultTimeoutError;
use multiproc::{Pool, PoolError, TaskError};

/// Python's `TIMEOUT1`/`TIMEOUT2`, shortened: the tests only need "some
/// time" and "less than the task takes".
const TIMEOUT1: Duration = Duration::from_millis(100);
const TIMEOUT2: Duration = Duration::from_millis(120);

fn sqr(x: u64) -> u64 {
    x * x
}

/// `sqr(x, wait)`.
fn sqr_wait((x, ms): (u64, u64)) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    x * x
}

fn mul((x, y): (u64, u64)) -> u64 {
    x * y
}

/// Python's `int(s)`: fails (panics) on `"a"`.
fn int(s: String) -> i64 {
    s.parse().expect("invalid literal for int()")
}

fn sleep_ms(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

fn pids(pool: &Pool) -> Vec<i32> {
    pool.stats().iter().map(|s| s.pid).collect()
}

/// Drops `pool` and checks its workers are gone.
fn finish(pool: Pool) {
    let pids = pids(&pool);
    drop(pool);
    for pid in pids {
        assert_gone(pid);
    }
}

/// Joins `pool` (Python's `close(); join()`) and checks its workers are gone.
fn close_join(pool: Pool) {
    let pids = pids(&pool);
    pool.close();
    pool.join();
    for pid in pids {
        assert_gone(pid);
    }
}

fn panic_message(e: &TaskError) -> &str {
    match e {
        TaskError::Panicked(report) => &report.message,
        other => panic!("expected a panic, got {other:?}"),
    }
}

/// `test_apply`, `test_map`, `test_starmap`, `test_starmap_async`,
/// `test_map_async`, `test_imap`, `test_imap_unordered`: one pool of 4, as
/// the class shares.
#[test]
fn apply_map_starmap_imap_as_in_python() {
    deadline(LIMIT, || {
        let pool = Pool::new(4).unwrap();
        // test_apply
        assert_eq!(pool.apply(sqr, 5), Ok(25));
        // test_map
        let want: Vec<u64> = (0..100).map(|x| x * x).collect();
        assert_eq!(pool.map(sqr, 0..10).unwrap(), want[..10]);
        assert_eq!(pool.task(sqr).chunksize(20).map(0..100).unwrap(), want);
        // A chunk size of 0 is taken as 1 (Python's imap raises ValueError).
        assert_eq!(pool.task(sqr).chunksize(0).map(0..10).unwrap(), want[..10]);
        let got: Vec<u64> = pool
            .task(sqr)
            .chunksize(0)
            .imap(0..10)
            .map(Result::unwrap)
            .collect();
        assert_eq!(got, want[..10]);
        let items: Vec<u64> = (0..10).collect();
        assert_eq!(
            pool.task(sqr).chunksize(0).map_pod(&items).unwrap(),
            want[..10]
        );
        // test_starmap
        let tuples: Vec<(u64, u64)> = (0..10).zip((0..10).rev()).collect();
        let products: Vec<u64> = tuples.iter().map(|&(a, b)| a * b).collect();
        assert_eq!(pool.starmap(mul, tuples.clone()).unwrap(), products);
        let tuples: Vec<(u64, u64)> = (0..100).zip((0..100).rev()).collect();
        let products: Vec<u64> = tuples.iter().map(|&(a, b)| a * b).collect();
        assert_eq!(
            pool.task(mul).chunksize(20).map(tuples.clone()).unwrap(),
            products
        );
        // test_starmap_async
        assert_eq!(pool.starmap_async(mul, tuples).get().unwrap(), products);
        // test_map_async
        assert_eq!(pool.map_async(sqr, 0..10).get().unwrap(), want[..10]);
        // test_imap
        let all: Vec<u64> = pool.imap(sqr, 0..10).map(Result::unwrap).collect();
        assert_eq!(all, want[..10]);
        let mut it = pool.imap(sqr, 0..10);
        for i in 0..10 {
            assert_eq!(it.next(), Some(Ok(i * i)));
        }
        assert_eq!(it.next(), None, "StopIteration");
        assert_eq!(it.next(), None, "StopIteration again");
        let mut it = pool.task(sqr).chunksize(100).imap(0..1000);
        for i in 0..1000 {
            assert_eq!(it.next(), Some(Ok(i * i)));
        }
        assert_eq!(it.next(), None, "StopIteration");
        drop(it);
        // test_imap_unordered
        let mut got: Vec<u64> = pool
            .imap_unordered(sqr, 0..10)
            .map(Result::unwrap)
            .collect();
        got.sort();
        assert_eq!(got, want[..10]);
        let mut got: Vec<u64> = pool
            .task(sqr)
            .chunksize(100)
            .imap_unordered(0..1000)
            .map(Result::unwrap)
            .collect();
        got.sort();
        assert_eq!(got, (0..1000).map(|x| x * x).collect::<Vec<u64>>());
        let mut it = pool.imap_unordered(sqr, 0..3);
        assert_eq!(it.by_ref().count(), 3);
        assert_eq!(it.next(), None, "StopIteration again");
        close_join(pool);
    });
}

/// What the callbacks of `test_map_async_callbacks` saw.
type Calls = Arc<Mutex<Vec<Result<Vec<i64>, TaskError>>>>;

/// `test_map_async_callbacks`: after `wait()`, exactly one callback ran,
/// with the whole result or the error.
#[test]
fn map_async_callbacks_run_before_wait_returns() {
    deadline(LIMIT, || {
        let pool = Pool::new(2).unwrap();
        let call_args: Calls = Arc::default();
        let (ok, err) = (Arc::clone(&call_args), Arc::clone(&call_args));
        pool.map_async(int, ["1".to_string()])
            .with_callbacks(
                move |v: &[i64]| ok.lock().unwrap().push(Ok(v.to_vec())),
                move |e: &TaskError| err.lock().unwrap().push(Err(e.clone())),
            )
            .wait();
        assert_eq!(call_args.lock().unwrap().len(), 1);
        assert_eq!(call_args.lock().unwrap()[0], Ok(vec![1]));
        let (ok, err) = (Arc::clone(&call_args), Arc::clone(&call_args));
        pool.map_async(int, ["a".to_string()])
            .with_callbacks(
                move |v: &[i64]| ok.lock().unwrap().push(Ok(v.to_vec())),
                move |e: &TaskError| err.lock().unwrap().push(Err(e.clone())),
            )
            .wait();
        let calls = call_args.lock().unwrap();
        assert_eq!(calls.len(), 2);
        match &calls[1] {
            Err(e) => assert!(
                panic_message(e).contains("invalid literal for int()"),
                "{e:?}"
            ),
            other => panic!("{other:?}"),
        }
        drop(calls);
        finish(pool);
    });
}

fn sqr_unpicklable(_: Unencodable) -> u64 {
    0
}

fn unpickleable_result(_: ()) -> Unencodable {
    Unencodable
}

/// `test_map_unplicklable` (Issue #19425: failure to pickle should not
/// cause a hang), and `test_map_chunksize` (an empty map with a chunk size
/// does not stall).
#[test]
fn unencodable_arguments_fail_the_map_and_empty_chunked_maps_return() {
    deadline(LIMIT, || {
        let pool = Pool::new(2).unwrap();
        let items: Vec<Unencodable> = (0..10).map(|_| Unencodable).collect();
        let got = pool.map(sqr_unpicklable, items);
        assert!(matches!(got, Err(TaskError::ArgumentEncode(_))), "{got:?}");
        // The pool goes on.
        assert_eq!(pool.map(sqr, 0..4).unwrap(), [0, 1, 4, 9]);
        // test_map_chunksize
        let got = pool
            .task(sqr)
            .chunksize(1)
            .map_async(Vec::<u64>::new())
            .get_timeout(TIMEOUT1 * 10);
        assert!(matches!(&got, Ok(v) if v.is_empty()), "{got:?}");
        finish(pool);
    });
}

/// Python's `exception_throwing_generator(total, when)`: the iterator
/// itself fails (here, panics) at item `when`.
struct Thrower {
    next: u64,
    total: u64,
    when: Option<u64>,
}

fn exception_throwing_generator(total: u64, when: Option<u64>) -> Thrower {
    Thrower {
        next: 0,
        total,
        when,
    }
}

impl Iterator for Thrower {
    type Item = u64;
    fn next(&mut self) -> Option<u64> {
        if self.when == Some(self.next) || (self.when.is_none() && self.total == 0) {
            panic!("Somebody said when");
        }
        if self.next == self.total {
            return None;
        }
        self.next += 1;
        Some(self.next - 1)
    }
}

fn said_when(p: Box<dyn std::any::Any + Send>) -> bool {
    p.downcast_ref::<&str>() == Some(&"Somebody said when")
}

/// `test_map_handle_iterable_exception`: an input that fails makes `map`
/// fail with that failure (in Rust, the panic goes on), and the pool is
/// reusable afterwards.
#[test]
fn a_failing_input_fails_map_and_the_pool_goes_on() {
    deadline(LIMIT, || {
        let pool = Pool::new(2).unwrap();
        for (total, when) in [(0, None), (0, None), (10, Some(3))] {
            let r = catch_unwind(AssertUnwindSafe(|| {
                pool.task(sqr)
                    .chunksize(1)
                    .map(exception_throwing_generator(total, when))
            }));
            match r {
                Err(p) => assert!(said_when(p)),
                Ok(v) => panic!("the input's failure was lost: {v:?}"),
            }
        }
        // An input that knows its length is read as the map goes: the
        // panic still comes out, once, and the pool goes on.
        let knows_its_length = (0..10u64).inspect(|&i| assert!(i != 3, "Somebody said when"));
        let r = catch_unwind(AssertUnwindSafe(|| {
            pool.task(sqr).chunksize(1).map(knows_its_length)
        }));
        assert!(r.is_err());
        assert_eq!(pool.map(sqr, 0..4).unwrap(), [0, 1, 4, 9]);
        finish(pool);
    });
}

/// `test_imap_handle_iterable_exception` and
/// `test_imap_unordered_handle_iterable_exception`: the results of the
/// items before the failing one come out first, then the failure.
/// The results `it` gives before it resumes the input's panic (checked
/// to be the generator's).
fn results_until_the_inputs_panic(
    it: &mut impl Iterator<Item = Result<u64, TaskError>>,
) -> Vec<u64> {
    let mut got = Vec::new();
    let failure = loop {
        match catch_unwind(AssertUnwindSafe(|| it.next())) {
            Ok(Some(v)) => got.push(v.unwrap()),
            Ok(None) => panic!("the input's failure was lost"),
            Err(p) => break p,
        }
    };
    assert!(said_when(failure));
    got
}

#[test]
fn a_failing_input_fails_imap_after_the_items_before_it() {
    deadline(LIMIT, || {
        let pool = Pool::new(4).unwrap();
        for _ in 0..2 {
            let mut it = pool
                .task(sqr)
                .chunksize(1)
                .imap(exception_throwing_generator(0, None));
            let r = catch_unwind(AssertUnwindSafe(|| it.next()));
            assert!(said_when(r.unwrap_err()));
        }
        for (total, when, chunksize, before) in [(10, 3, 1, 3), (20, 7, 2, 6), (20, 7, 4, 4)] {
            let mut it = pool
                .task(sqr)
                .chunksize(chunksize)
                .imap(exception_throwing_generator(total, Some(when)));
            let got = results_until_the_inputs_panic(&mut it);
            // Python yields the `before` results of the chunks before the
            // failing one (the items of its chunk read before the failure
            // are lost); ours yields every item read before the failure.
            assert!(before <= when as usize);
            assert_eq!(got.len(), when as usize, "chunks of {chunksize}");
            for (i, v) in got.iter().enumerate() {
                assert_eq!(*v, (i * i) as u64);
            }
            // Then the iteration is over, as a Python generator that raised.
            assert_eq!(it.next(), None);
        }
        for (total, when, chunksize) in [(10, 3, 1), (20, 7, 2)] {
            let mut it = pool
                .task(sqr)
                .chunksize(chunksize)
                .imap_unordered(exception_throwing_generator(total, Some(when)));
            let mut got = results_until_the_inputs_panic(&mut it);
            got.sort();
            // The stream form says the same.
            let stream = pool
                .task(sqr)
                .chunksize(chunksize)
                .imap(exception_throwing_generator(total, Some(when)))
                .into_stream();
            let r = catch_unwind(AssertUnwindSafe(|| {
                futures::executor::block_on(futures::StreamExt::collect::<Vec<_>>(stream))
            }));
            assert!(said_when(r.unwrap_err()));
            assert_eq!(got, (0..when).map(|i| i * i).collect::<Vec<u64>>());
            assert_eq!(it.next(), None);
        }
        assert_eq!(pool.map(sqr, 0..4).unwrap(), [0, 1, 4, 9]);
        finish(pool);
    });
}

/// `test_async` and `test_async_timeout`.
#[test]
fn apply_async_get_and_get_timeout() {
    deadline(LIMIT, || {
        let pool = Pool::new(3).unwrap();
        let res = pool.apply_async(sqr_wait, (7, TIMEOUT1.as_millis() as u64));
        assert!(!res.ready());
        assert_eq!(res.successful(), None);
        let t = Instant::now();
        assert_eq!(res.get(), Ok(49));
        assert!(t.elapsed() >= TIMEOUT1 / 2);

        let res = pool.apply_async(sqr_wait, (6, 60_000));
        let t = Instant::now();
        let res = match res.get_timeout(TIMEOUT2) {
            Err(ResultTimeoutError::Timeout(h)) => h,
            other => panic!("{other:?}"),
        };
        assert!(t.elapsed() >= TIMEOUT2);
        assert!(!res.ready());
        assert!(!res.wait_timeout(Duration::from_millis(10)));
        finish(pool);
        assert_eq!(res.get(), Err(TaskError::Terminated));
    });
}

/// `AsyncResult.wait(timeout)`, `ready()` and `successful()` on a
/// `map_async` result (`_TestPool.test_async_timeout`'s, for a map).
#[test]
fn map_async_wait_with_a_timeout() {
    deadline(LIMIT, || {
        let pool = Pool::new(2).unwrap();
        let res = pool.map_async(sqr_wait, [(1, 60_000), (2, 0)]);
        let t = Instant::now();
        assert!(!res.wait_timeout(TIMEOUT1));
        assert!(t.elapsed() >= TIMEOUT1);
        assert!(!res.ready());
        assert_eq!(res.successful(), None);
        let res = pool.map_async(int, ["1".to_string(), "a".to_string()]);
        assert!(res.wait_timeout(Duration::from_secs(30)));
        assert!(res.ready());
        assert_eq!(res.successful(), Some(false));
        let res = pool.map_async(sqr, 0..3);
        assert!(res.wait_timeout(Duration::from_secs(30)));
        assert_eq!(res.successful(), Some(true));
        assert_eq!(res.get(), Ok(vec![0, 1, 4]));
        finish(pool);
    });
}

/// `test_make_pool` and `test_pool_maxtasksperchild_invalid`.
#[test]
fn invalid_pool_settings_are_refused() {
    deadline(LIMIT, || {
        assert!(matches!(Pool::new(0), Err(PoolError::Invalid(_))));
        assert!(matches!(
            Pool::builder().workers(3).max_tasks_per_child(0).build(),
            Err(PoolError::Invalid(_))
        ));
        let pool = Pool::new(3).unwrap();
        assert_eq!(pool.workers(), 3);
        assert_eq!(pool.stats().len(), 3);
        close_join(pool);
    });
}

/// `test_terminate`: slow tasks that take "forever"; terminate and join
/// return at once.
#[test]
fn terminate_while_many_slow_tasks_are_queued() {
    deadline(LIMIT, || {
        let pool = Pool::new(3).unwrap();
        let pids = pids(&pool);
        let result = pool
            .task(sleep_ms)
            .chunksize(1)
            .map_async(vec![60_000; 10_000]);
        std::thread::sleep(Duration::from_millis(50));
        pool.terminate();
        assert_eq!(result.get(), Err(TaskError::Terminated));
        for pid in pids {
            assert_gone(pid);
        }
    });
}

/// `test_empty_iterable` (Issue 12157).
#[test]
fn empty_iterables() {
    deadline(LIMIT, || {
        let pool = Pool::new(1).unwrap();
        assert_eq!(pool.map(sqr, Vec::new()).unwrap(), Vec::<u64>::new());
        assert_eq!(pool.imap(sqr, Vec::new()).count(), 0);
        assert_eq!(pool.imap_unordered(sqr, Vec::new()).count(), 0);
        assert_eq!(pool.map_async(sqr, Vec::new()).get().unwrap(), vec![]);
        assert_eq!(pool.starmap(mul, Vec::new()).unwrap(), Vec::<u64>::new());
        close_join(pool);
    });
}

/// `test_context` and `test_enter`: a pool that is no longer running
/// refuses new work (Python's `ValueError`), whichever call it is.
#[test]
fn a_closed_pool_refuses_every_kind_of_call() {
    deadline(LIMIT, || {
        let pool = Pool::new(2).unwrap();
        let r = pool.map_async(sqr, 0..10);
        assert_eq!(r.get().unwrap(), (0..10).map(|x| x * x).collect::<Vec<_>>());
        pool.close();
        assert_eq!(pool.map_async(sqr, 0..10).get(), Err(TaskError::Closed));
        assert_eq!(pool.map(sqr, 0..10), Err(TaskError::Closed));
        assert_eq!(pool.apply(sqr, 1), Err(TaskError::Closed));
        assert_eq!(pool.apply_async(sqr, 1).get(), Err(TaskError::Closed));
        assert_eq!(pool.starmap(mul, [(1, 2)]), Err(TaskError::Closed));
        let first = pool.imap(sqr, 0..3).next();
        assert_eq!(first, Some(Err(TaskError::Closed)));
        close_join(pool);
    });
}

fn raise_runtime_error(_: ()) -> u64 {
    panic!("RuntimeError(123)")
}

/// `test_traceback` and `test_wrapped_exception`: the error comes back
/// with its message and where it was raised.
#[test]
fn a_task_panic_comes_back_with_message_and_location() {
    deadline(LIMIT, || {
        let pool = Pool::new(1).unwrap();
        match pool.apply(raise_runtime_error, ()) {
            Err(TaskError::Panicked(report)) => {
                assert_eq!(report.message, "RuntimeError(123)");
                let location = format!("{report}");
                assert!(location.contains("cpython_port_pool.rs"), "{location}");
            }
            other => panic!("{other:?}"),
        }
        finish(pool);
    });
}

fn raise_large_valueerror(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    panic!("{}", "x".repeat(1024 * 1024))
}

/// `test_map_no_failfast` (Issue #23992): a map whose tasks fail with a
/// large error, then close and join: no deadlock, and join waits.
#[test]
fn a_failed_map_with_large_errors_then_close_and_join() {
    deadline(LIMIT, || {
        let pool = Pool::new(2).unwrap();
        let got = pool.map(raise_large_valueerror, [0, 1]);
        match &got {
            Err(e) => assert_eq!(panic_message(e).len(), 1024 * 1024),
            Ok(v) => panic!("{v:?}"),
        }
        close_join(pool);
    });
}

fn raising(_: ()) -> u64 {
    panic!("KeyError('key')")
}

/// `_TestPoolWorkerErrors.test_async_error_callback`.
#[test]
fn async_error_callback_runs_before_get_returns() {
    deadline(LIMIT, || {
        let pool = Pool::new(2).unwrap();
        let scratchpad: Arc<Mutex<Option<TaskError>>> = Arc::default();
        let pad = Arc::clone(&scratchpad);
        let res = pool
            .apply_async(raising, ())
            .with_callbacks(|_| {}, move |e| *pad.lock().unwrap() = Some(e.clone()));
        let got = res.get();
        assert_eq!(panic_message(got.as_ref().unwrap_err()), "KeyError('key')");
        let seen = scratchpad.lock().unwrap().take();
        assert_eq!(seen.as_ref(), got.as_ref().err());
        close_join(pool);
    });
}

/// `_TestPoolWorkerErrors.test_unpickleable_result`: make sure we don't
/// lose pool processes because of encoding errors.
#[test]
fn unencodable_results_fail_their_task_and_lose_no_worker() {
    deadline(LIMIT, || {
        let pool = Pool::new(2).unwrap();
        let before = pids(&pool);
        for _ in 0..20 {
            let (tx, rx) = mpsc::channel();
            let res = pool.apply_async(unpickleable_result, ()).with_callbacks(
                |_| panic!("a success?"),
                move |e| tx.send(e.clone()).unwrap(),
            );
            let got = res.get();
            assert!(matches!(got, Err(TaskError::ResultEncode(_))), "{got:?}");
            let wrapped = rx
                .try_recv()
                .expect("the error callback ran before get returned");
            assert!(matches!(wrapped, TaskError::ResultEncode(_)));
        }
        assert_eq!(pids(&pool), before);
        assert_eq!(pool.stats().iter().map(|s| s.restarts).sum::<u64>(), 0);
        close_join(pool);
    });
}

/// `_TestPoolWorkerLifetime.test_pool_worker_lifetime`.
#[test]
fn max_tasks_per_child_replaces_every_worker() {
    deadline(LIMIT, || {
        let pool = Pool::builder()
            .workers(3)
            .max_tasks_per_child(10)
            .build()
            .unwrap();
        assert_eq!(pool.stats().len(), 3);
        let orig = pids(&pool);
        let results: Vec<_> = (0..100).map(|i| pool.apply_async(sqr, i)).collect();
        for (j, res) in results.into_iter().enumerate() {
            assert_eq!(res.get(), Ok((j * j) as u64));
        }
        let fin = pids(&pool);
        assert!(!orig.contains(&0) && !fin.contains(&0));
        let (mut a, mut b) = (orig.clone(), fin);
        a.sort();
        b.sort();
        assert_ne!(a, b);
        close_join(pool);
        for pid in orig {
            assert_gone(pid);
        }
    });
}

/// `_TestPoolWorkerLifetime.test_pool_worker_lifetime_early_close`
/// (Issue #10332): closing a pool whose workers have limited lifetimes
/// before all the tasks completed must not make join hang.
#[test]
fn close_and_join_with_max_tasks_per_child_before_tasks_finish() {
    deadline(LIMIT, || {
        let pool = Pool::builder()
            .workers(3)
            .max_tasks_per_child(1)
            .build()
            .unwrap();
        let results: Vec<_> = (0..6)
            .map(|i| pool.apply_async(sqr_wait, (i, 100)))
            .collect();
        close_join(pool);
        for (j, res) in results.into_iter().enumerate() {
            assert_eq!(res.get(), Ok((j * j) as u64));
        }
    });
}

fn sqr_unless_three(x: u64) -> u64 {
    assert!(x != 3, "SayWhenError");
    x * x
}

/// `IMapIterator.next()` after a failed item goes on with the next items
/// (chunk size 1, as in Python; with bigger chunks ours still fails only
/// the item, which the README documents).
#[test]
fn imap_goes_on_after_a_failed_item() {
    deadline(LIMIT, || {
        let pool = Pool::new(2).unwrap();
        for chunksize in [1, 3] {
            let got: Vec<_> = pool
                .task(sqr_unless_three)
                .chunksize(chunksize)
                .imap(0..10)
                .collect();
            for (i, r) in got.iter().enumerate() {
                let i = i as u64;
                if i == 3 {
                    assert_eq!(panic_message(r.as_ref().unwrap_err()), "SayWhenError");
                } else {
                    assert_eq!(r, &Ok(i * i));
                }
            }
            assert_eq!(got.len(), 10);
            let mut got: Vec<_> = pool
                .task(sqr_unless_three)
                .chunksize(chunksize)
                .imap_unordered(0..10)
                .filter_map(Result::ok)
                .collect();
            got.sort();
            assert_eq!(got, [0, 1, 4, 16, 25, 36, 49, 64, 81]);
        }
        finish(pool);
    });
}

/// `IMapIterator.next(timeout)`: a timeout takes nothing and the
/// iteration goes on (no CPython test; its documented behaviour).
#[test]
fn imap_next_with_a_timeout() {
    deadline(LIMIT, || {
        let pool = Pool::new(2).unwrap();
        let mut it = pool.imap(sqr_wait, [(2, 400), (3, 0)]);
        let t = Instant::now();
        assert!(!it.wait_timeout(TIMEOUT1), "TimeoutError");
        assert!(t.elapsed() >= TIMEOUT1);
        assert!(it.wait_timeout(Duration::from_secs(30)));
        assert_eq!(it.next(), Some(Ok(4)));
        assert!(it.wait_timeout(Duration::ZERO));
        assert_eq!(it.next(), Some(Ok(9)));
        assert!(it.wait_timeout(Duration::ZERO), "the end is ready too");
        assert_eq!(it.next(), None);

        let mut it = pool.imap_unordered(sqr_wait, [(2, 60_000), (3, 0)]);
        assert!(it.wait_timeout(Duration::from_secs(30)));
        assert_eq!(it.next(), Some(Ok(9)));
        assert!(!it.wait_timeout(TIMEOUT1), "TimeoutError");
        drop(it);
        finish(pool);
    });
}
