//! The pool under every start method, and its failure paths on purpose: a
//! worker SIGKILLed mid-map, a task that segfaults, one that panics, one
//! that sleeps past its timeout, a leaking task that trips the memory
//! limit, a failing initializer, cancellation, Ctrl-C in the parent.
//! Every test has a deadline and checks that no worker is left behind.

mod common;

use std::time::{Duration, Instant};

use common::{LIMIT, Unencodable, assert_gone, deadline};
use multiproc::pool::{ResultTimeoutError, as_completed, with_state};
use multiproc::{
    Event, ExitStatus, Pool, PoolError, Process, Queue, Signal, StartMethod, TaskError,
};

fn square(x: u64) -> u64 {
    x * x
}

fn add_pair((a, b): (u64, u64)) -> u64 {
    a + b
}

fn pids(pool: &Pool) -> Vec<i32> {
    pool.stats().iter().map(|s| s.pid).collect()
}

/// Joins or drops `pool` and checks its workers are gone.
fn finish(pool: Pool) {
    let pids = pids(&pool);
    drop(pool);
    for pid in pids {
        assert_gone(pid);
    }
}

#[test]
fn map_imap_apply_under_every_start_method() {
    deadline(LIMIT, || {
        for m in StartMethod::ALL {
            let pool = Pool::builder().workers(2).start_method(m).build().unwrap();
            assert_eq!(pool.start_method(), m);
            let want: Vec<u64> = (0..1000u64).map(|x| x * x).collect();
            assert_eq!(pool.map(square, 0..1000).unwrap(), want, "{m}");
            assert_eq!(
                pool.task(square).chunksize(1).map(0..200).unwrap(),
                want[..200],
                "{m}"
            );
            let lazy: Vec<u64> = pool.imap(square, 0..500).map(Result::unwrap).collect();
            assert_eq!(lazy, want[..500], "{m}");
            let mut unordered: Vec<u64> = pool
                .imap_unordered(square, 0..500)
                .map(Result::unwrap)
                .collect();
            unordered.sort();
            assert_eq!(unordered, want[..500], "{m}");
            assert_eq!(pool.apply(square, 9).unwrap(), 81);
            assert_eq!(pool.map_async(square, [1, 2, 3]).get().unwrap(), [1, 4, 9]);
            let pairs: Vec<(u64, u64)> = (0..100).map(|i| (i, 2 * i)).collect();
            let sums = pool.starmap_async(add_pair, pairs.clone());
            let chunked = pool.task(add_pair).chunksize(7).starmap_async(pairs);
            let want_sums: Vec<u64> = (0..100).map(|i| 3 * i).collect();
            assert_eq!(sums.get().unwrap(), want_sums, "{m}");
            assert_eq!(chunked.get().unwrap(), want_sums, "{m}");
            assert_eq!(pool.map(square, Vec::new()).unwrap(), Vec::<u64>::new());
            let stats = pool.stats();
            assert_eq!(stats.len(), 2);
            assert_eq!(stats.iter().map(|s| s.tasks_done).sum::<u64>(), 2404, "{m}");
            let pids = pids(&pool);
            pool.join();
            for pid in pids {
                assert_gone(pid);
            }
        }
    });
}

/// Never-ending input: imap reads only as results are taken.
#[test]
fn imap_is_lazy_over_an_endless_input() {
    deadline(LIMIT, || {
        let pool = Pool::new(2).unwrap();
        let first: Vec<u64> = pool
            .imap(square, 0u64..)
            .take(20_000)
            .map(Result::unwrap)
            .collect();
        assert_eq!(first.len(), 20_000);
        assert_eq!(first[19_999], 19_999 * 19_999);
        // The pool is still usable after dropping a half-read imap.
        assert_eq!(pool.map(square, [3]).unwrap(), [9]);
        finish(pool);
    });
}

fn pid_then_sleep(ms: u64) -> i32 {
    std::thread::sleep(Duration::from_millis(ms));
    std::process::id() as i32
}

fn slow_square(x: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(2));
    x * x
}

fn report_pids(q: Queue<i32>) -> Result<Queue<i32>, String> {
    Ok(q)
}

/// Item 150 tells the test which process runs it, then waits to be
/// killed from outside: the kill lands mid-item, never between chunks.
fn square_or_await_kill(x: u64) -> u64 {
    if x == 150 {
        with_state(|q: &mut Queue<i32>| q.put(std::process::id() as i32).unwrap()).unwrap();
        std::thread::sleep(Duration::from_secs(60));
    }
    slow_square(x)
}

#[test]
fn a_worker_killed_mid_map_fails_only_its_own_item() {
    deadline(LIMIT, || {
        for m in StartMethod::ALL {
            let running = Queue::new().unwrap();
            let pool = Pool::builder()
                .workers(2)
                .start_method(m)
                .initializer(report_pids, running.clone())
                .build()
                .unwrap();
            let killer = std::thread::spawn(move || {
                let victim = running.get().unwrap();
                assert!(common::send_signal(victim, libc::SIGKILL));
            });
            let results = pool
                .task(square_or_await_kill)
                .chunksize(10)
                .map_results(0..400u64);
            killer.join().unwrap();
            let failed: Vec<_> = results.iter().filter(|r| r.is_err()).collect();
            assert_eq!(
                failed.len(),
                1,
                "{m}: exactly the running item fails: {failed:?}"
            );
            assert!(
                matches!(
                    failed[0],
                    Err(TaskError::WorkerDied {
                        status: ExitStatus::Signaled {
                            signal: Signal::KILL,
                            ..
                        },
                        ..
                    })
                ),
                "{m}: {failed:?}"
            );
            assert!(results[150].is_err(), "{m}: the killed item is item 150");
            for (i, r) in results.iter().enumerate() {
                if let Ok(v) = r {
                    assert_eq!(*v, (i * i) as u64);
                }
            }
            let stats = pool.stats();
            assert_eq!(
                stats.iter().map(|s| s.restarts).sum::<u64>(),
                1,
                "{m}: replaced once"
            );
            // The replacement works.
            assert_eq!(pool.map(square, 0..10).unwrap().len(), 10);
            finish(pool);
        }
    });
}

fn segfault_on(x: i32) -> i32 {
    if x == 5 {
        common::send_signal(std::process::id() as i32, libc::SIGSEGV);
        std::thread::sleep(Duration::from_secs(10));
    }
    x
}

fn panic_on(x: i32) -> i32 {
    assert!(x != 7, "seven is unlucky");
    x
}

#[test]
fn a_segfault_or_a_panic_fails_only_that_item() {
    deadline(LIMIT, || {
        let pool = Pool::new(2).unwrap();
        let out = pool.map_results(segfault_on, 0..10);
        for (i, r) in out.iter().enumerate() {
            if i == 5 {
                assert!(
                    matches!(
                        r,
                        Err(TaskError::WorkerDied {
                            status: ExitStatus::Signaled {
                                signal: Signal::SEGV,
                                ..
                            },
                            ..
                        })
                    ),
                    "{r:?}"
                );
            } else {
                assert_eq!(*r, Ok(i as i32));
            }
        }
        let out = pool.map_results(panic_on, 0..10);
        assert!(
            matches!(&out[7], Err(TaskError::Panicked(p)) if p.message == "seven is unlucky"),
            "{:?}",
            out[7]
        );
        assert_eq!(out.iter().filter(|r| r.is_ok()).count(), 9);
        // A panic does not cost a worker.
        assert_eq!(pool.stats().iter().map(|s| s.restarts).sum::<u64>(), 1);
        // map (fail-fast) returns the first failure.
        assert!(matches!(
            pool.map(panic_on, 0..10),
            Err(TaskError::Panicked(_))
        ));
        finish(pool);
    });
}

#[test]
fn a_task_past_its_timeout_is_killed_and_the_rest_goes_on() {
    deadline(LIMIT, || {
        for m in StartMethod::ALL {
            let pool = Pool::builder().workers(2).start_method(m).build().unwrap();
            let t = Instant::now();
            let out = pool
                .task(pid_then_sleep)
                .timeout(Duration::from_millis(300))
                .map_results([10, 60_000, 10, 20]);
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "{m}: {:?}",
                t.elapsed()
            );
            assert!(
                out[0].is_ok() && out[2].is_ok() && out[3].is_ok(),
                "{m}: {out:?}"
            );
            assert_eq!(
                out[1],
                Err(TaskError::TimedOut(Duration::from_millis(300))),
                "{m}"
            );
            // The killed worker was replaced.
            assert_eq!(pool.stats().iter().map(|s| s.restarts).sum::<u64>(), 1);
            finish(pool);
        }
    });
}

fn leak(mib: usize) -> usize {
    // Touch the memory so it is resident, then keep it.
    let block = vec![1u8; mib << 20];
    let len = block.len();
    std::mem::forget(block);
    len
}

#[test]
fn a_leaking_task_trips_the_memory_limit_and_the_worker_is_recycled() {
    deadline(LIMIT, || {
        let pool = Pool::builder()
            .workers(1)
            .memory_limit(64 << 20)
            .build()
            .unwrap();
        let first = pids(&pool)[0];
        let out = pool.task(leak).chunksize(4).map(vec![40usize; 8]).unwrap();
        assert_eq!(out.len(), 8);
        let stats = pool.stats();
        assert!(stats[0].restarts >= 2, "recycled: {stats:?}");
        assert_ne!(stats[0].pid, first);
        assert_gone(first);
        finish(pool);
    });
}

#[test]
fn max_tasks_per_child_replaces_workers() {
    deadline(LIMIT, || {
        let pool = Pool::builder()
            .workers(2)
            .max_tasks_per_child(5)
            .build()
            .unwrap();
        let seen = pool
            .task(pid_then_sleep)
            .chunksize(3)
            .map(vec![0; 40])
            .unwrap();
        let mut distinct = seen.clone();
        distinct.sort();
        distinct.dedup();
        assert!(distinct.len() >= 8, "40 items, 5 per worker: {distinct:?}");
        for pid in distinct.iter().filter(|p| !pids(&pool).contains(p)) {
            assert_gone(*pid);
        }
        finish(pool);
    });
}

fn failing_init(reason: String) -> Result<(), String> {
    Err(reason)
}

fn panicking_init(_: ()) -> Result<(), String> {
    panic!("no model file")
}

fn offset_init(offset: u64) -> Result<u64, String> {
    Ok(offset)
}

fn add_offset(x: u64) -> u64 {
    with_state(|o: &mut u64| x + *o).unwrap()
}

#[test]
fn initializers_build_state_and_their_failures_are_reported_once() {
    deadline(LIMIT, || {
        let pool = Pool::builder()
            .workers(2)
            .initializer(offset_init, 1000)
            .build()
            .unwrap();
        assert_eq!(pool.map(add_offset, [1, 2]).unwrap(), [1001, 1002]);
        finish(pool);
        for m in StartMethod::ALL {
            let t = Instant::now();
            match Pool::builder()
                .workers(2)
                .start_method(m)
                .initializer(failing_init, "no database".to_string())
                .build()
            {
                Err(PoolError::Initializer { message, .. }) => assert_eq!(message, "no database"),
                other => panic!("{m}: {other:?}"),
            }
            match Pool::builder()
                .workers(2)
                .start_method(m)
                .initializer(panicking_init, ())
                .build()
            {
                Err(PoolError::Initializer { message, .. }) => {
                    assert!(message.contains("no model file"), "{message}")
                }
                other => panic!("{m}: {other:?}"),
            }
            assert!(t.elapsed() < Duration::from_secs(10));
        }
        assert!(matches!(Pool::new(0), Err(PoolError::Invalid(_))));
    });
}

fn report_to(q: Queue<u32>) -> Result<Queue<u32>, String> {
    Ok(q)
}

fn send_home(x: u32) -> u32 {
    with_state(|q: &mut Queue<u32>| q.put(x).unwrap()).unwrap();
    x
}

#[test]
fn an_initializer_argument_carries_handles() {
    deadline(LIMIT, || {
        for m in StartMethod::ALL {
            let q = Queue::new().unwrap();
            let pool = Pool::builder()
                .workers(2)
                .start_method(m)
                .initializer(report_to, q.clone())
                .build()
                .unwrap();
            pool.map(send_home, 0..50).unwrap();
            let mut got: Vec<u32> = (0..50).map(|_| q.get().unwrap()).collect();
            got.sort();
            assert_eq!(got, (0..50).collect::<Vec<_>>(), "{m}");
            finish(pool);
        }
    });
}

fn wait_then(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[test]
fn handles_futures_cancel_and_as_completed() {
    deadline(LIMIT, || {
        let pool = Pool::new(2).unwrap();
        let slow = pool.submit(wait_then, 60_000);
        let blocker = pool.submit(wait_then, 60_000);
        // Each went to an idle worker as it was submitted; both workers are
        // now busy, so this one waits in the queue.
        let queued = pool.submit(wait_then, 1);
        let quick = match queued.get_timeout(Duration::from_millis(50)) {
            Err(ResultTimeoutError::Timeout(h)) => h,
            other => panic!("{other:?}"),
        };
        assert!(!slow.ready());
        assert_eq!(slow.successful(), None);
        // Cancelling a running task kills its worker; the queued one runs
        // on the replacement.
        slow.cancel();
        assert_eq!(slow.get(), Err(TaskError::Cancelled));
        assert_eq!(quick.get(), Ok(1));
        assert!(!blocker.ready());
        blocker.cancel();
        assert_eq!(blocker.get(), Err(TaskError::Cancelled));
        // Cancelling a queued task: it never runs.
        let a = pool.submit(wait_then, 60_000);
        let b = pool.submit(wait_then, 60_000);
        let never = pool.submit(wait_then, 1);
        never.cancel();
        assert_eq!(never.get(), Err(TaskError::Cancelled));
        a.cancel();
        b.cancel();
        assert_eq!(a.get(), Err(TaskError::Cancelled));
        assert_eq!(b.get(), Err(TaskError::Cancelled));
        // `slow` and `blocker` were running: their workers were replaced.
        // (`a` and `b` may have been queued, waiting for those replacements.)
        let restarts: u64 = pool.stats().iter().map(|s| s.restarts).sum();
        assert!(restarts >= 2, "{restarts}");

        // A handle is a future: any executor can drive it.
        let h = pool.submit(square, 12);
        assert_eq!(block_on(h), Ok(144));

        let handles = vec![pool.submit(wait_then, 400), pool.submit(wait_then, 5)];
        let order: Vec<u64> = as_completed(handles).map(|h| h.get().unwrap()).collect();
        assert_eq!(order, [5, 400]);
        finish(pool);
    });
}

/// Tells the test which process runs it, then sleeps.
fn announce_then_sleep(ms: u64) -> u64 {
    with_state(|q: &mut Queue<i32>| q.put(std::process::id() as i32).unwrap()).unwrap();
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[test]
fn a_dropped_handle_detaches_and_a_cancel_on_drop_handle_cancels() {
    deadline(LIMIT, || {
        let running = Queue::new().unwrap();
        let pool = Pool::builder()
            .workers(1)
            .initializer(report_pids, running.clone())
            .build()
            .unwrap();
        let worker = pids(&pool)[0];

        // A plain handle dropped while its task runs: the task goes on to
        // its end, on the same process, before the next one.
        let detached = pool.submit(announce_then_sleep, 300);
        assert_eq!(running.get().unwrap(), worker);
        drop(detached);
        assert_eq!(pool.apply(pid_then_sleep, 0), Ok(worker));
        let stats = pool.stats();
        assert_eq!(
            (stats[0].restarts, stats[0].tasks_done),
            (0, 2),
            "{stats:?}"
        );

        // A cancel-on-drop handle dropped while its task runs: the worker
        // is killed and replaced, as `cancel` does.
        let guarded = pool.submit(announce_then_sleep, 60_000).cancel_on_drop();
        assert_eq!(running.get().unwrap(), worker);
        assert!(!guarded.ready());
        drop(guarded);
        assert_gone(worker);
        let second = pool.apply(pid_then_sleep, 0).unwrap();
        assert_ne!(second, worker);
        assert_eq!(pool.stats()[0].restarts, 1);

        // The same for a future polled once and then dropped, as `select!`
        // or a timeout drops the branch that lost.
        let mut lost = pool.submit(announce_then_sleep, 60_000).cancel_on_drop();
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(std::pin::Pin::new(&mut lost).poll(&mut cx).is_pending());
        assert_eq!(running.get().unwrap(), second);
        drop(lost);
        assert_gone(second);
        // Counted when the replacement starts, just after the reap (a
        // loaded machine's run read 1 here).
        assert!(
            common::eventually(Duration::from_secs(10), || pool.stats()[0].restarts == 2),
            "{:?}",
            pool.stats()
        );

        // Dropped while queued behind another task: it never runs, and
        // nothing is killed.
        let third = pids(&pool)[0];
        let blocker = pool.submit(announce_then_sleep, 300);
        assert_eq!(running.get().unwrap(), third);
        drop(pool.submit(announce_then_sleep, 1).cancel_on_drop());
        assert_eq!(blocker.get(), Ok(300));
        assert_eq!(pool.apply(square, 3), Ok(9));
        assert!(running.try_get().is_err(), "the cancelled task ran");
        assert_eq!(pool.stats()[0].restarts, 2);

        // Waited for, or detached again, it is an ordinary handle.
        assert_eq!(pool.submit(square, 4).cancel_on_drop().get(), Ok(16));
        let back = pool
            .submit(announce_then_sleep, 100)
            .cancel_on_drop()
            .detach();
        assert_eq!(running.get().unwrap(), third);
        drop(back);
        assert_eq!(pool.apply(pid_then_sleep, 0), Ok(third));
        assert_eq!(pool.stats()[0].restarts, 2);
        finish(pool);
    });
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    use std::sync::Arc;
    use std::task::{Context, Poll, Wake, Waker};
    struct ThreadWaker(std::thread::Thread);
    impl Wake for ThreadWaker {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

#[test]
fn terminate_and_drop_end_everything_in_bounded_time() {
    deadline(LIMIT, || {
        let pool = Pool::new(2).unwrap();
        let pids = pids(&pool);
        let pending = pool.submit(wait_then, 60_000);
        let t = Instant::now();
        pool.terminate();
        assert!(t.elapsed() < Duration::from_secs(5));
        assert_eq!(pending.get(), Err(TaskError::Terminated));
        for pid in pids {
            assert_gone(pid);
        }
        let pool = Pool::new(1).unwrap();
        pool.close();
        assert_eq!(pool.apply(square, 2), Err(TaskError::Closed));
        finish(pool);
    });
}

fn pool_under_interrupt((ready, pids_out): (Event, Queue<i32>)) {
    let pool = Pool::new(2).unwrap();
    for s in pool.stats() {
        pids_out.put(s.pid).unwrap();
    }
    ready.set();
    let _ = pool.map(wait_then, vec![60_000u64; 4]);
}

#[test]
fn ctrl_c_in_the_parent_leaves_no_worker_behind() {
    deadline(LIMIT, || {
        let (ready, pids) = (Event::new().unwrap(), Queue::new().unwrap());
        let parent = Process::spawn(pool_under_interrupt, (ready.clone(), pids.clone())).unwrap();
        assert!(ready.wait_timeout(Duration::from_secs(20)));
        let workers = [pids.get().unwrap(), pids.get().unwrap()];
        parent.signal(Signal::INT).unwrap();
        match parent.join() {
            Err(multiproc::JoinError::Signaled { signal, .. }) => assert_eq!(signal, Signal::INT),
            other => panic!("{other:?}"),
        }
        for pid in workers {
            assert_gone(pid);
        }
    });
}

#[test]
fn unserializable_results_and_arguments_are_errors_not_hangs() {
    deadline(LIMIT, || {
        let pool = Pool::new(1).unwrap();
        // A handle cannot be a task argument: a typed error for that item.
        let q: Queue<u8> = Queue::new().unwrap();
        let out = pool.map_results(drop_queue, vec![q]);
        assert!(
            matches!(out[0], Err(TaskError::ArgumentEncode(_))),
            "{out:?}"
        );
        let out = pool.map_results(refuse, [1, 2]);
        assert!(matches!(out[0], Err(TaskError::ResultEncode(_))), "{out:?}");
        finish(pool);
    });
}

fn drop_queue(q: Queue<u8>) -> bool {
    q.is_empty()
}

fn refuse(_: u8) -> Unencodable {
    Unencodable
}

fn square_or_hang(x: u64) -> u64 {
    if x == 3 {
        std::thread::sleep(Duration::from_secs(120));
    }
    x * x
}

/// A slow item queued behind quick ones of the same worker: the worker may
/// hold their answers while it runs it, and the timeout must still find it.
#[test]
fn timeouts_hold_with_many_pools_at_once() {
    deadline(LIMIT, || {
        let threads: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(|| {
                    for _ in 0..3 {
                        let pool = Pool::new(2).unwrap();
                        let out = pool
                            .task(square_or_hang)
                            .timeout(Duration::from_millis(300))
                            .map_results(0..6);
                        assert_eq!(out[3], Err(TaskError::TimedOut(Duration::from_millis(300))));
                        for i in [0, 1, 2, 4, 5] {
                            assert_eq!(out[i as usize], Ok(i * i));
                        }
                        finish(pool);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    });
}

#[test]
fn a_pool_and_its_handles_can_be_shared_between_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Pool>();
    send_sync::<multiproc::TaskHandle<u64>>();
    send_sync::<multiproc::MapHandle<String>>();
    deadline(LIMIT, || {
        let pool = std::sync::Arc::new(Pool::new(2).unwrap());
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let pool = std::sync::Arc::clone(&pool);
                std::thread::spawn(move || pool.map(square, t * 100..(t + 1) * 100).unwrap())
            })
            .collect();
        for (t, h) in threads.into_iter().enumerate() {
            let got = h.join().unwrap();
            let t = t as u64;
            assert_eq!(
                got,
                (t * 100..(t + 1) * 100).map(|x| x * x).collect::<Vec<_>>()
            );
        }
        let pool = std::sync::Arc::into_inner(pool).unwrap();
        finish(pool);
    });
}
