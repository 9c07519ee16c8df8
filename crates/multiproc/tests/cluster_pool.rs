//! The cluster pool against a private redis-server and agents started as
//! a user would start them (this test binary, with MULTIPROC_CLUSTER).
#![cfg(feature = "cluster")]

mod common;

use std::time::{Duration, Instant};

use common::{LIMIT, deadline};
use multiproc::TaskError;
use multiproc::pool::as_completed;

#[multiproc::task]
fn square(x: u64) -> u64 {
    x * x
}

#[multiproc::task]
fn fragile(x: u64) -> u64 {
    assert!(x != 3, "three is not allowed");
    x
}

#[multiproc::task]
fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[multiproc::task]
fn crash(x: u64) -> u64 {
    if x == 2 {
        std::process::abort();
    }
    x
}

#[multiproc::task]
fn add((a, b): (u64, u64)) -> u64 {
    a + b
}

#[multiproc::task]
fn whoami(_: u64) -> Option<(String, u64, u64)> {
    multiproc::cluster::current_task().map(|t| (t.id(), t.index, t.deliveries))
}

fn unregistered(x: u64) -> u64 {
    x
}

use common::cluster_setup as setup;

#[test]
fn the_local_pool_api_works_on_the_cluster() {
    deadline(LIMIT, || {
        let Some(s) = setup(2, 2) else { return };
        assert_eq!(s.cluster.agents().unwrap().len(), 2);
        let pool = s.cluster.pool().build().unwrap();
        assert_eq!(pool.workers(), 4);
        let expected: Vec<u64> = (0..10_000).map(|x| x * x).collect();
        assert_eq!(pool.map(square, 0..10_000u64).unwrap(), expected);
        assert_eq!(pool.apply(square, 12).unwrap(), 144);
        assert_eq!(pool.submit(square, 7).get().unwrap(), 49);
        let lazy: Vec<u64> = pool.imap(square, 0..100u64).map(Result::unwrap).collect();
        assert_eq!(lazy, expected[..100]);
        let mut unordered: Vec<u64> = pool
            .imap_unordered(square, 0..100u64)
            .map(Result::unwrap)
            .collect();
        unordered.sort_unstable();
        assert_eq!(unordered, expected[..100]);
        assert_eq!(pool.starmap(add, [(1, 2), (3, 4)]).unwrap(), [3, 7]);
        let handles: Vec<_> = (0..8u64).map(|x| pool.submit(square, x)).collect();
        let mut done: Vec<u64> = as_completed(handles).map(|h| h.get().unwrap()).collect();
        done.sort_unstable();
        assert_eq!(done, expected[..8]);
        let out = pool.task(square).chunksize(1).map(0..50u64).unwrap();
        assert_eq!(out, expected[..50]);
        // Agents publish their counts with each heartbeat.
        assert!(common::eventually(Duration::from_secs(10), || {
            pool.stats().iter().map(|w| w.tasks_done).sum::<u64>() > 0
        }));
        pool.join();
    });
}

#[test]
fn a_failing_item_fails_alone() {
    deadline(LIMIT, || {
        let Some(s) = setup(1, 2) else { return };
        let pool = s.cluster.pool().build().unwrap();
        let out = pool.map_results(fragile, 1..=5u64);
        assert_eq!(out[0], Ok(1));
        assert!(
            matches!(&out[2], Err(TaskError::Panicked(p)) if p.message == "three is not allowed")
        );
        assert_eq!(out[4], Ok(5));
        let out = pool.task(crash).chunksize(1).map_results(1..=3u64);
        assert_eq!(out[0], Ok(1));
        assert!(
            matches!(out[1], Err(TaskError::WorkerDied { .. })),
            "{:?}",
            out[1]
        );
        assert_eq!(out[2], Ok(3));
        let out = pool
            .task(nap)
            .timeout(Duration::from_millis(200))
            .map_results([1, 30_000, 2]);
        assert_eq!(out[0], Ok(1));
        assert!(
            matches!(out[1], Err(TaskError::TimedOut(_))),
            "{:?}",
            out[1]
        );
        assert_eq!(out[2], Ok(2));
        // The agent survived all of it.
        assert_eq!(pool.map(square, [3u64]).unwrap(), [9]);
    });
}

#[test]
fn an_unregistered_function_fails_at_submit_without_traffic() {
    deadline(LIMIT, || {
        let Some(s) = setup(0, 1) else { return };
        let pool = s.cluster.pool().build().unwrap();
        let e = pool.map(unregistered, [1u64, 2]).unwrap_err();
        assert!(matches!(e, TaskError::NotRegistered(_)), "{e:?}");
        let client = redis::Client::open(s.server.url()).unwrap();
        let mut conn = client.get_connection().unwrap();
        let len: u64 = redis::cmd("XLEN")
            .arg("mp:{default}:tasks")
            .query(&mut conn)
            .unwrap();
        assert_eq!(len, 0, "something was sent");
    });
}

#[test]
fn cancel_stops_a_running_task_and_the_pool_goes_on() {
    deadline(LIMIT, || {
        let Some(s) = setup(1, 1) else { return };
        let pool = s.cluster.pool().build().unwrap();
        let h = pool.submit(nap, 60_000);
        std::thread::sleep(Duration::from_millis(300));
        h.cancel();
        assert_eq!(h.get(), Err(TaskError::Cancelled));
        // The only slot is free again within a few heartbeats.
        let started = Instant::now();
        assert_eq!(pool.apply(square, 5).unwrap(), 25);
        assert!(started.elapsed() < Duration::from_secs(20));
    });
}

#[test]
fn a_killed_agents_chunks_are_taken_over_and_nothing_is_lost() {
    deadline(LIMIT, || {
        let Some(mut s) = setup(2, 2) else { return };
        let pool = s.cluster.pool().build().unwrap();
        let victim = s.agents[0].pid();
        let items: Vec<u64> = (0..400).map(|i| 1 + i % 3).collect();
        let handle = pool.task(nap).chunksize(4).map_async(items.clone());
        std::thread::sleep(Duration::from_millis(150));
        s.agents[0].kill().unwrap();
        assert!(common::wait_gone(victim as i32, Duration::from_secs(5)));
        let out = handle.get().unwrap();
        assert_eq!(out, items);
    });
}

#[test]
fn a_task_knows_its_id_and_delivery_count() {
    deadline(LIMIT, || {
        let Some(s) = setup(1, 2) else { return };
        let pool = s.cluster.pool().build().unwrap();
        let out = pool.task(whoami).chunksize(3).map(0..10u64).unwrap();
        for (i, info) in out.into_iter().enumerate() {
            let (id, index, deliveries) = info.expect("a cluster task has an id");
            assert_eq!(index, i as u64);
            assert!(id.ends_with(&format!(":{i}")), "{id}");
            assert_eq!(deliveries, 1);
        }
        assert!(multiproc::cluster::current_task().is_none());
        // A local pool's task has none.
        let local = multiproc::Pool::new(1).unwrap();
        assert_eq!(local.map(whoami, [0u64]).unwrap(), [None]);
    });
}
