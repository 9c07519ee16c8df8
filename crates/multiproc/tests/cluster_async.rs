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
