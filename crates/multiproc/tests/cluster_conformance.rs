//! The same checks on a local pool and on a cluster pool: where their
//! semantics agree, they must behave the same.
#![cfg(feature = "cluster")]

mod common;

use std::time::Duration;

use common::{LIMIT, deadline, redis_server};
use multiproc::cluster::{Cluster, LocalAgent};
use multiproc::{Pool, TaskError};

#[multiproc::task]
fn square(x: u64) -> u64 {
    x * x
}

#[multiproc::task]
fn echo(v: Vec<u8>) -> Vec<u8> {
    v
}

#[multiproc::task]
fn len_of(v: Vec<u8>) -> usize {
    v.len()
}

#[multiproc::task]
fn fail_odd(x: u64) -> Result<u64, String> {
    if x % 2 == 1 {
        Err(format!("{x} is odd"))
    } else {
        Ok(x)
    }
}

#[multiproc::task]
fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[multiproc::task]
fn panics_on(x: u64) -> u64 {
    assert!(x != 7, "seven");
    x
}

fn checks(pool: &Pool) {
    // Empty input, order, sizes.
    assert_eq!(
        pool.map(square, Vec::<u64>::new()).unwrap(),
        Vec::<u64>::new()
    );
    let n = 3_000u64;
    let expected: Vec<u64> = (0..n).map(|x| x * x).collect();
    assert_eq!(pool.map(square, 0..n).unwrap(), expected);
    for chunk in [1, 7, 5_000] {
        assert_eq!(
            pool.task(square).chunksize(chunk).map(0..200u64).unwrap(),
            expected[..200]
        );
    }
    // An iterator of unknown length.
    let odd = (0..n).filter(|x| x % 2 == 1);
    assert_eq!(pool.map(square, odd).unwrap().len(), (n / 2) as usize);
    // Values the user's type reports as errors are values.
    let out = pool.map(fail_odd, 0..4u64).unwrap();
    assert_eq!(out[1], Err("1 is odd".to_owned()));
    // The first failure stops a map; map_results runs every item.
    let e = pool.map(panics_on, 0..20u64).unwrap_err();
    assert!(
        matches!(e, TaskError::Panicked(ref p) if p.message == "seven"),
        "{e:?}"
    );
    let all = pool.map_results(panics_on, 0..20u64);
    assert_eq!(all.iter().filter(|r| r.is_err()).count(), 1);
    assert_eq!(all[19], Ok(19));
    // Big values both ways: 1 MiB items and results (past the cluster's
    // inline limit: blobs), and many items in one chunk.
    let big: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i; 1 << 20]).collect();
    assert_eq!(pool.map(echo, big.clone()).unwrap(), big);
    let lens = pool
        .task(len_of)
        .chunksize(100)
        .map(vec![vec![1u8; 10_000]; 300])
        .unwrap();
    assert!(lens.iter().all(|l| *l == 10_000));
    // imap is lazy and ordered; imap_unordered yields everything.
    let mut it = pool.imap(square, 0..1_000u64);
    assert_eq!(it.next().unwrap().unwrap(), 0);
    assert_eq!(it.nth(9).unwrap().unwrap(), 100);
    drop(it);
    let mut u: Vec<u64> = pool
        .imap_unordered(square, 0..500u64)
        .map(Result::unwrap)
        .collect();
    u.sort_unstable();
    assert_eq!(u, expected[..500]);
    // Handles: get_timeout hands the handle back, then the result comes.
    let h = pool.submit(nap, 300);
    let h = match h.get_timeout(Duration::from_millis(10)) {
        Err(multiproc::pool::ResultTimeoutError::Timeout(h)) => h,
        other => panic!("{other:?}"),
    };
    assert!(!h.ready());
    assert_eq!(h.get().unwrap(), 300);
    // A timeout kills the item's worker, not the pool.
    let out = pool
        .task(nap)
        .timeout(Duration::from_millis(100))
        .map_results([1, 20_000]);
    assert_eq!(out[0], Ok(1));
    assert!(
        matches!(out[1], Err(TaskError::TimedOut(_))),
        "{:?}",
        out[1]
    );
    // Async handles.
    let m = pool.map_async(square, [2u64, 3]);
    assert_eq!(m.get().unwrap(), [4, 9]);
}

fn close_join_terminate(make: &dyn Fn() -> Pool) {
    let pool = make();
    let h = pool.submit(nap, 200);
    pool.close();
    assert_eq!(pool.submit(square, 1).get(), Err(TaskError::Closed));
    pool.join();
    assert_eq!(h.get().unwrap(), 200);

    let pool = make();
    let h = pool.submit(nap, 30_000);
    std::thread::sleep(Duration::from_millis(100));
    pool.terminate();
    assert_eq!(h.get(), Err(TaskError::Terminated));
}

#[test]
fn a_local_pool_passes_the_checks() {
    deadline(LIMIT, || {
        checks(&Pool::new(2).unwrap());
        close_join_terminate(&|| Pool::new(1).unwrap());
    });
}

#[test]
fn a_cluster_pool_passes_the_same_checks() {
    deadline(Duration::from_secs(120), || {
        let Some(server) = redis_server() else { return };
        let cluster = Cluster::connect(&server.url()).unwrap();
        cluster.set_min_idle(Duration::from_millis(500)).unwrap();
        let _agents: Vec<LocalAgent> = (0..2)
            .map(|_| LocalAgent::start(&cluster, 1).unwrap())
            .collect();
        checks(&cluster.pool().build().unwrap());
        close_join_terminate(&|| cluster.pool().build().unwrap());
        // Nothing is left on the server once the pools are gone but the
        // namespace's stream, config and agents.
        let mut conn = redis::Client::open(server.url())
            .unwrap()
            .get_connection()
            .unwrap();
        let mut keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut conn).unwrap();
        keys.retain(|k| !k.contains(":agent"));
        keys.sort();
        assert_eq!(
            keys,
            ["mp:{default}:config", "mp:{default}:tasks"],
            "{keys:?}"
        );
    });
}
