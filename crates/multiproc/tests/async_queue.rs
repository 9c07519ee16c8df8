//! Async forms of the queue: `get_async`, `put_async`, `get_delivery_async`
//! on every executor, a runtime that keeps running other tasks while a get
//! waits, and futures dropped at random points that lose nothing.

mod common;
#[path = "common/executors.rs"]
mod executors;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use executors::{Rng, on_each, run_on, timeout};
use multiproc::{GetError, Process, Queue};

/// Puts `0..n` with a short pause every 64 values, so gets both find
/// values and wait for them.
fn produce((q, n): (Queue<u64>, u64)) {
    for i in 0..n {
        q.put(i).unwrap();
        if i % 64 == 63 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

#[test]
fn get_async_takes_what_a_child_puts_on_every_executor() {
    common::deadline(common::LIMIT, || {
        on_each(|_| async {
            let q = Queue::<u64>::new().unwrap();
            let child = Process::spawn(produce, (q.clone(), 2000)).unwrap();
            for i in 0..2000 {
                assert_eq!(q.get_async().await.unwrap(), i);
            }
            child.join_async().await.unwrap();
        });
    });
}

#[test]
fn put_async_waits_for_room_on_every_executor() {
    common::deadline(common::LIMIT, || {
        on_each(|_| async {
            let q = Queue::<u64>::bounded(4).unwrap();
            let theirs = q.clone();
            let reader = std::thread::spawn(move || {
                (0..500)
                    .map(|_| theirs.get_timeout(Duration::from_secs(20)).unwrap())
                    .collect::<Vec<_>>()
            });
            for i in 0..500 {
                q.put_async(i).await.unwrap();
            }
            assert_eq!(reader.join().unwrap(), (0..500).collect::<Vec<_>>());
        });
    });
}

#[test]
fn a_get_async_alone_on_its_queue_is_disconnected() {
    common::deadline(common::LIMIT, || {
        on_each(|_| async {
            let q = Queue::<u64>::new().unwrap();
            assert!(matches!(q.get_async().await, Err(GetError::Disconnected)));
        });
    });
}

#[test]
fn a_current_thread_runtime_runs_other_tasks_while_a_get_waits() {
    common::deadline(common::LIMIT, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let ticks = Arc::new(AtomicU64::new(0));
        let t = Arc::clone(&ticks);
        rt.block_on(async move {
            let ticker = tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    t.fetch_add(1, Ordering::Relaxed);
                }
            });
            let q = Queue::<u64>::new().unwrap();
            let theirs = q.clone();
            let putter = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(400));
                theirs.put(9).unwrap();
            });
            assert_eq!(q.get_async().await.unwrap(), 9);
            putter.join().unwrap();
            ticker.abort();
        });
        // A get that blocked the thread would leave the ticker at 0.
        let n = ticks.load(Ordering::Relaxed);
        assert!(n >= 20, "the ticker ran {n} times in 400 ms");
    });
}

/// Gets with futures dropped at random points (random short timeouts)
/// while a thread puts `0..n` at random pace; then takes the rest. Every
/// value comes exactly once.
async fn gets_dropped_at_random(which: usize, acked: bool, seed: u64) {
    let n = 400u64;
    let q = Queue::<u64>::new().unwrap();
    let theirs = q.clone();
    let putter = std::thread::spawn(move || {
        let mut rng = Rng(seed ^ 0x9e37_79b9);
        for i in 0..n {
            theirs.put(i).unwrap();
            if rng.below(4) == 0 {
                std::thread::sleep(Duration::from_micros(rng.below(3000)));
            }
        }
    });
    let mut rng = Rng(seed);
    let mut got = Vec::new();
    let mut dropped = 0;
    for _ in 0..300 {
        let wait = Duration::from_micros(rng.below(2500));
        let r = if acked {
            timeout(which, wait, async {
                q.get_delivery_async().await.map(|d| d.ack().unwrap())
            })
            .await
        } else {
            timeout(which, wait, q.get_async()).await
        };
        match r {
            Some(v) => got.push(v.unwrap()),
            None => dropped += 1,
        }
    }
    putter.join().unwrap();
    while let Ok(v) = q.get_timeout(Duration::from_millis(200)) {
        got.push(v);
    }
    assert!(
        dropped > 0,
        "no future was dropped: the test tested nothing"
    );
    let unique: BTreeSet<u64> = got.iter().copied().collect();
    assert_eq!(got.len() as u64, n, "{dropped} dropped; got {}", got.len());
    assert_eq!(unique, (0..n).collect::<BTreeSet<_>>());
}

#[test]
fn a_dropped_get_async_takes_nothing() {
    common::deadline(common::LIMIT, || {
        for which in 0..4 {
            run_on(
                which,
                gets_dropped_at_random(which, false, 7 + which as u64),
            );
        }
    });
}

#[test]
fn a_dropped_get_delivery_async_takes_nothing() {
    common::deadline(common::LIMIT, || {
        for which in [0, 2] {
            run_on(
                which,
                gets_dropped_at_random(which, true, 11 + which as u64),
            );
        }
    });
}

#[test]
fn a_dropped_put_async_puts_nothing() {
    common::deadline(common::LIMIT, || {
        run_on(0, async {
            let q = Queue::<u64>::bounded(1).unwrap();
            q.put(0).unwrap();
            // Full: each put waits, and is dropped at a random point.
            let mut rng = Rng(3);
            for i in 1..100 {
                let wait = Duration::from_micros(rng.below(2000));
                assert!(timeout(0, wait, q.put_async(i)).await.is_none());
            }
            assert_eq!(q.len(), 1);
            assert_eq!(q.get().unwrap(), 0);
            assert!(q.try_get().is_err());
        });
    });
}

/// Takes the queue's consumer lock and stops itself (SIGSTOP), as a peer
/// stopped by a debugger while holding it would.
fn wedge_and_stop(q: Queue<u64>) {
    multiproc::__bench::wedge_queue_lock(&q, true);
    common::send_signal(std::process::id() as i32, libc::SIGSTOP);
    loop {
        std::thread::park();
    }
}

#[test]
fn a_get_async_sleeps_while_a_stopped_peer_holds_the_consumer_lock() {
    common::deadline(common::LIMIT, || {
        let q = Queue::<u64>::new().unwrap();
        q.put(1).unwrap();
        let child = Process::builder()
            .start_method(multiproc::StartMethod::Fork)
            .spawn(wedge_and_stop, q.clone())
            .unwrap();
        let end = std::time::Instant::now() + Duration::from_secs(10);
        while common::state(child.pid()) != Some('T') {
            assert!(std::time::Instant::now() < end, "the child did not stop");
            std::thread::sleep(Duration::from_millis(5));
        }
        // A value waits, but the lock is held: the future must sleep on the
        // lock, not spin between its task and a waiter thread.
        let polls = Arc::new(AtomicU64::new(0));
        let p = Arc::clone(&polls);
        executors::run_local(3, async {
            let mut get = std::pin::pin!(q.get_async());
            let counted = futures::future::poll_fn(move |cx| {
                p.fetch_add(1, Ordering::Relaxed);
                get.as_mut().poll(cx)
            });
            assert!(
                timeout(3, Duration::from_millis(500), counted)
                    .await
                    .is_none()
            );
        });
        let n = polls.load(Ordering::Relaxed);
        // 64 eager polls, then about one per 50 ms slice.
        assert!(n < 300, "{n} polls in 500 ms");
        let pid = child.pid();
        child.kill().unwrap();
        assert!(child.join().is_err());
        common::assert_gone(pid);
        // The dead holder's lock is recovered, and the value comes.
        assert_eq!(run_on(0, async move { q.get_async().await }).unwrap(), 1);
    });
}

#[test]
fn a_forked_child_waits_asynchronously_too() {
    common::deadline(common::LIMIT, || {
        let q = Queue::<u64>::new().unwrap();
        let back = Queue::<u64>::new().unwrap();
        // The parent has waiter threads (one sleeps in a get right now).
        let theirs = q.clone();
        let waiting =
            std::thread::spawn(move || run_on(3, async move { theirs.get_async().await }));
        std::thread::sleep(Duration::from_millis(50));
        let (q2, back2) = (q.clone(), back.clone());
        let child = Process::fork(move || {
            futures::executor::block_on(async {
                let mut sum = 0;
                for _ in 0..3 {
                    sum += q2.get_async().await.unwrap();
                }
                back2.put_async(sum).await.unwrap();
            })
        })
        .unwrap();
        // Let the child's gets sleep on waiter threads, then feed both.
        std::thread::sleep(Duration::from_millis(150));
        for v in [1, 2, 3, 4] {
            q.put(v).unwrap();
        }
        let parent_got = waiting.join().unwrap().unwrap();
        let child_sum = back.get_timeout(Duration::from_secs(20)).unwrap();
        assert_eq!(parent_got + child_sum, 10);
        child.join().unwrap();
    });
}

fn finish_all(q: multiproc::JoinableQueue<u64>) {
    while let Ok(_v) = q.get_timeout(Duration::from_millis(300)) {
        std::thread::sleep(Duration::from_millis(5));
        q.task_done().unwrap();
    }
}

#[test]
fn simple_and_joinable_queues_on_every_executor() {
    common::deadline(common::LIMIT, || {
        on_each(|_| async {
            let sq = multiproc::SimpleQueue::<String>::new().unwrap();
            sq.put_async("a".to_string()).await.unwrap();
            assert_eq!(sq.get_async().await.unwrap(), "a");
            let jq = multiproc::JoinableQueue::<u64>::new().unwrap();
            for i in 0..10 {
                jq.put_async(i).await.unwrap();
            }
            let worker = Process::spawn(finish_all, jq.clone()).unwrap();
            // Done only once the worker marked all ten done.
            jq.join_async().await;
            assert!(jq.is_empty());
            assert!(jq.join_timeout(Duration::ZERO));
            worker.join_async().await.unwrap();
        });
    });
}
