//! Async forms of the cluster's queue, event and semaphore on every
//! executor, with futures dropped at random points that lose nothing.
#![cfg(feature = "cluster")]

mod common;
#[path = "common/executors.rs"]
mod executors;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{LIMIT, deadline, redis_server};
use executors::{NAMES, Rng, run_on, timeout};
use multiproc::cluster::Cluster;

#[test]
fn queue_event_and_semaphore_await_on_every_executor() {
    deadline(LIMIT, || {
        let Some(server) = redis_server() else { return };
        let cluster = Cluster::connect(&server.url()).unwrap();
        for (which, name) in NAMES.iter().enumerate() {
            let c = cluster.namespace(&format!("ex{which}")).unwrap();
            run_on(which, async move {
                let q = c.queue::<String>("q").bounded(1).build().unwrap();
                let producer = q.clone();
                // The queue holds one: the second put waits for the get.
                let put = std::thread::spawn(move || {
                    producer.put("a".into()).unwrap();
                    producer.put("b".into()).unwrap();
                });
                assert_eq!(q.get_async().await.unwrap(), "a");
                assert_eq!(q.get_async().await.unwrap(), "b");
                put.join().unwrap();
                q.put_async("c".into()).await.unwrap();
                assert_eq!(q.get().unwrap(), "c");

                let m = c.manager();
                let ev = m.event("go").unwrap();
                let setter = ev.clone();
                let t = std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(150));
                    setter.set().unwrap();
                });
                ev.wait_async().await.unwrap();
                t.join().unwrap();

                let sem = m.semaphore("s", 1).unwrap();
                sem.acquire_async().await.unwrap();
                assert!(!sem.try_acquire().unwrap());
                sem.release().unwrap();
            });
            eprintln!("{name}: ok");
        }
    });
}

#[test]
fn dropped_gets_lose_nothing_and_dropped_acquires_hold_nothing() {
    deadline(LIMIT, || {
        let Some(server) = redis_server() else { return };
        let cluster = Cluster::connect(&server.url()).unwrap();
        let q = cluster.queue::<u64>("numbers").build_joinable().unwrap();
        let n = 200u64;
        let producer = q.clone();
        let putter = std::thread::spawn(move || {
            let mut rng = Rng(99);
            for i in 0..n {
                producer.put(i).unwrap();
                if rng.below(3) == 0 {
                    std::thread::sleep(Duration::from_millis(rng.below(4)));
                }
            }
        });
        let (got, dropped) = run_on(0, {
            let q = q.clone();
            async move {
                let mut rng = Rng(7);
                let (mut got, mut dropped) = (Vec::new(), 0);
                for _ in 0..150 {
                    let wait = Duration::from_micros(200 + rng.below(3000));
                    match timeout(0, wait, q.get_async()).await {
                        Some(v) => got.push(v.unwrap()),
                        None => dropped += 1,
                    }
                }
                (got, dropped)
            }
        });
        putter.join().unwrap();
        let mut got = got;
        while let Ok(v) = q.get_timeout(Duration::from_millis(300)) {
            got.push(v);
        }
        assert!(
            dropped > 0,
            "no future was dropped: the test tested nothing"
        );
        assert_eq!(got.len() as u64, n, "{dropped} dropped");
        assert_eq!(
            got.iter().copied().collect::<BTreeSet<_>>(),
            (0..n).collect()
        );
        // The unfinished count is exactly the values taken.
        for _ in 0..n {
            q.task_done().unwrap();
        }
        assert!(q.task_done().is_err(), "one value was counted twice");

        let sem = cluster.manager().semaphore("units", 1).unwrap();
        let holder = sem.clone();
        run_on(2, async move {
            let mut rng = Rng(3);
            for _ in 0..60 {
                holder.acquire().unwrap();
                // Others wait on a taken unit, and are dropped.
                let waiting = timeout(
                    2,
                    Duration::from_micros(rng.below(2000)),
                    sem.acquire_async(),
                );
                let t = std::thread::spawn({
                    let h = holder.clone();
                    move || {
                        std::thread::sleep(Duration::from_micros(500));
                        h.release().unwrap();
                    }
                });
                if waiting.await.is_some() {
                    sem.release().unwrap();
                }
                t.join().unwrap();
            }
            // Every unit is back: one can be taken, not two.
            // (A dropped acquire's undo runs on its waiter thread.)
            assert!(common::eventually(Duration::from_secs(5), || sem
                .try_acquire()
                .unwrap()));
            assert!(!sem.try_acquire().unwrap());
        });
    });
}

#[test]
fn lock_barrier_and_join_await_on_every_executor() {
    deadline(LIMIT, || {
        let Some(server) = redis_server() else { return };
        let cluster = Cluster::connect(&server.url()).unwrap();
        for (which, name) in NAMES.iter().enumerate() {
            let c = cluster.namespace(&format!("lb{which}")).unwrap();
            run_on(which, async move {
                let m = c.manager();
                let lock = m.lock("l").unwrap();
                let (tx, rx) = std::sync::mpsc::channel();
                let holder = lock.clone();
                let t = std::thread::spawn(move || {
                    let held = holder.lock().unwrap();
                    tx.send(()).unwrap();
                    std::thread::sleep(Duration::from_millis(150));
                    drop(held);
                });
                rx.recv().unwrap();
                let mine = m.lock("l").unwrap();
                let g = mine.lock_async().await.unwrap();
                assert!(g.is_held());
                assert!(lock.try_lock().is_err());
                g.release().unwrap();
                t.join().unwrap();

                let barrier = m.barrier("b", 2).unwrap();
                let theirs = barrier.clone();
                let t = std::thread::spawn(move || theirs.wait().unwrap());
                let index = barrier.wait_async().await.unwrap();
                let mut both = [index, t.join().unwrap()];
                both.sort_unstable();
                assert_eq!(both, [0, 1]);

                let jobs = c.queue::<u32>("jobs").build_joinable().unwrap();
                jobs.put(1).unwrap();
                let worker = jobs.clone();
                let t = std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(100));
                    worker.get().unwrap();
                    worker.task_done().unwrap();
                });
                jobs.join_async().await.unwrap();
                t.join().unwrap();
            });
            eprintln!("{name}: ok");
        }
    });
}

#[test]
fn a_dropped_lock_holds_nothing_and_a_dropped_barrier_wait_breaks_it() {
    deadline(LIMIT, || {
        let Some(server) = redis_server() else { return };
        let cluster = Cluster::connect(&server.url()).unwrap();
        let m = cluster.manager();
        for which in [0, 2, 3] {
            let lock = m.lock(&format!("d{which}")).unwrap();
            let held = lock.lock().unwrap();
            let waiting = lock.clone();
            // Release while the dropped future's slice may be in flight:
            // whatever it took, it gives back.
            let none = run_on(which, async move {
                timeout(which, Duration::from_millis(50), waiting.lock_async())
                    .await
                    .map(|g| g.map(drop))
            });
            assert!(none.is_none());
            held.release().unwrap();
            std::thread::sleep(Duration::from_millis(300));
            let again = lock.lock_timeout(Duration::from_secs(5));
            assert!(again.is_ok(), "a dropped lock_async kept the lock");
            drop(again);

            let barrier = m.barrier(&format!("bd{which}"), 2).unwrap();
            let b = barrier.clone();
            let none = run_on(which, async move {
                timeout(which, Duration::from_millis(50), b.wait_async()).await
            });
            assert!(none.is_none());
            assert!(common::eventually(Duration::from_secs(5), || barrier
                .is_broken()
                .unwrap()));
        }
    });
}
