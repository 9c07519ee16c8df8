//! A pool served by the manager (Python: `Manager().Pool()`): the
//! `Pool` methods through a `PoolProxy` under every start method, failures
//! as the usual `TaskError`s, a proxy in a child, `close`/`join`/
//! `terminate`, cancellation, a client killed mid-task whose work must not
//! go on, and a client of another build.

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{LIMIT, assert_gone, deadline, eventually};
use multiproc::{
    Address, EventProxy, JoinError, Manager, PoolProxy, Process, ProxyError, RemoteError, Signal,
    StartMethod, TaskError,
};

#[multiproc::task]
fn square(x: u64) -> u64 {
    x * x
}

#[multiproc::task]
fn add((a, b): (u64, u64)) -> u64 {
    a + b
}

/// Fails item 3 by a panic and item 4 by the worker's death.
#[multiproc::task]
fn fragile(x: u64) -> u64 {
    match x {
        3 => panic!("three is not allowed"),
        4 => std::process::abort(),
        _ => x * 10,
    }
}

#[multiproc::task]
fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// Says it started, then sleeps `ms`.
#[multiproc::task]
fn announce_and_nap((started, ms): (EventProxy, u64)) -> u64 {
    started.set().unwrap();
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// Not registered: a manager's pool cannot run it.
fn unregistered(x: u64) -> u64 {
    x
}

/// As small as a function gets: an optimised build may give such a
/// function a copy in every codegen unit that names it, each at its own
/// address, and the pool finds a task by address.
#[multiproc::task]
fn increment(x: u64) -> u64 {
    x + 1
}

/// Other call sites of `increment`, in another module (and so, likely,
/// another codegen unit) than the test's.
mod elsewhere {
    use multiproc::PoolProxy;

    pub fn map_increment(pool: &PoolProxy) -> Vec<u64> {
        pool.map(super::increment, [1, 2]).unwrap()
    }

    pub fn map_through(pool: &PoolProxy, f: fn(u64) -> u64) -> Vec<u64> {
        pool.map(f, [1, 2]).unwrap()
    }
}

#[test]
fn a_small_task_is_found_from_every_call_site() {
    deadline(LIMIT, || {
        let manager = Manager::start().unwrap();
        let pool = manager.pool(1).unwrap();
        assert_eq!(pool.map(increment, [1, 2]).unwrap(), [2, 3]);
        assert_eq!(pool.apply(increment, 1).unwrap(), 2);
        assert_eq!(elsewhere::map_increment(&pool), [2, 3]);
        assert_eq!(elsewhere::map_through(&pool, increment), [2, 3]);
        drop(pool);
        manager.shutdown().unwrap();
    });
}

#[test]
fn every_pool_method_runs_in_the_managers_pool_under_every_start_method() {
    deadline(LIMIT, || {
        for method in StartMethod::ALL {
            let manager = Manager::builder().start_method(method).start().unwrap();
            let pool = manager
                .pool_builder()
                .workers(2)
                .start_method(method)
                .build()
                .unwrap();
            assert_eq!(pool.workers(), 2);
            assert_eq!(pool.start_method(), method);
            assert_eq!(pool.map(square, 1..=5).unwrap(), [1, 4, 9, 16, 25]);
            assert_eq!(pool.starmap(add, [(1, 2), (3, 4)]).unwrap(), [3, 7]);
            assert_eq!(pool.apply(square, 9).unwrap(), 81);
            assert_eq!(pool.submit(square, 12).get().unwrap(), 144);
            let ordered: Vec<u64> = pool.imap(square, 0..100).map(Result::unwrap).collect();
            assert_eq!(ordered, (0..100).map(|x| x * x).collect::<Vec<_>>());
            let mut unordered: Vec<u64> = pool
                .imap_unordered(square, 0..50)
                .map(Result::unwrap)
                .collect();
            unordered.sort();
            assert_eq!(unordered, (0..50).map(|x| x * x).collect::<Vec<_>>());
            assert_eq!(
                pool.task(square)
                    .chunksize(7)
                    .map(0..1000)
                    .unwrap()
                    .iter()
                    .sum::<u64>(),
                (0..1000u64).map(|x| x * x).sum::<u64>()
            );
            assert_eq!(pool.map_async(square, [2, 3]).get().unwrap(), [4, 9]);
            assert_eq!(pool.starmap_async(add, [(5, 5)]).get().unwrap(), [10]);
            let awaited =
                futures::executor::block_on(async { pool.submit(square, 5).await }).unwrap();
            assert_eq!(awaited, 25);
            // Callbacks run in this process.
            let (tx, rx) = mpsc::channel();
            let err = tx.clone();
            pool.apply_async(square, 6).with_callbacks(
                move |v: &u64| tx.send(Ok(*v)).unwrap(),
                move |e: &TaskError| err.send(Err(e.to_string())).unwrap(),
            );
            assert_eq!(rx.recv_timeout(Duration::from_secs(20)).unwrap(), Ok(36));
            let stats = pool.stats().unwrap();
            assert_eq!(stats.len(), 2);
            assert!(stats.iter().map(|s| s.tasks_done).sum::<u64>() >= 1160);
            drop(pool);
            let pid = manager.server_pid().unwrap();
            manager.shutdown().unwrap();
            assert_gone(pid);
        }
    });
}

#[test]
fn panics_deaths_and_timeouts_are_the_usual_task_errors() {
    deadline(LIMIT, || {
        let manager = Manager::start().unwrap();
        let pool = manager.pool(2).unwrap();
        let out = pool.map_results(fragile, 0..6);
        assert_eq!(out[0], Ok(0));
        assert_eq!(out[2], Ok(20));
        assert!(
            matches!(&out[3], Err(TaskError::Panicked(p)) if p.message == "three is not allowed"),
            "{:?}",
            out[3]
        );
        assert!(
            matches!(&out[4], Err(TaskError::WorkerDied { status, .. })
                if status.signal() == Some(Signal::ABRT)),
            "{:?}",
            out[4]
        );
        assert_eq!(out[5], Ok(50));
        let e = pool.map(fragile, [1, 3]).unwrap_err();
        assert!(matches!(e, TaskError::Panicked(_)), "{e:?}");
        let timed = pool
            .task(nap)
            .timeout(Duration::from_millis(300))
            .map_results([1, 60_000, 2]);
        assert_eq!(timed[0], Ok(1));
        assert_eq!(
            timed[1],
            Err(TaskError::TimedOut(Duration::from_millis(300)))
        );
        assert_eq!(timed[2], Ok(2));
        // A default timeout set when the pool was made applies to every
        // client of it.
        let strict = manager
            .pool_builder()
            .workers(1)
            .task_timeout(Duration::from_millis(300))
            .build()
            .unwrap();
        assert!(matches!(
            strict.apply(nap, 60_000),
            Err(TaskError::TimedOut(_))
        ));
        // The replaced workers still serve.
        assert_eq!(pool.map(square, [7]).unwrap(), [49]);
        assert!(
            pool.stats()
                .unwrap()
                .iter()
                .map(|s| s.restarts)
                .sum::<u64>()
                >= 2
        );
    });
}

#[test]
fn an_unregistered_function_fails_before_anything_is_sent() {
    deadline(LIMIT, || {
        let manager = Manager::start().unwrap();
        let pool = manager.pool(1).unwrap();
        let e = pool.apply(unregistered, 1).unwrap_err();
        assert!(matches!(e, TaskError::NotRegistered(_)), "{e:?}");
        assert!(e.to_string().contains("#[multiproc::task]"), "{e}");
        assert_eq!(pool.stats().unwrap()[0].tasks_done, 0);
        assert_eq!(pool.apply(square, 2).unwrap(), 4);
    });
}

fn sum_of_squares((pool, n): (PoolProxy, u64)) -> u64 {
    pool.map(square, 0..n).unwrap().iter().sum()
}

#[test]
fn a_child_uses_the_proxy_it_was_given() {
    deadline(LIMIT, || {
        let manager = Manager::start().unwrap();
        let pool = manager.pool(2).unwrap();
        for method in StartMethod::ALL {
            let child = Process::builder()
                .start_method(method)
                .spawn(sum_of_squares, (pool.clone(), 20))
                .unwrap();
            assert_eq!(
                child.join().unwrap(),
                (0..20u64).map(|x| x * x).sum::<u64>()
            );
        }
        // A second client over the manager's address makes and uses its
        // own pool, and this one is unaffected.
        let other = Manager::connect(manager.address(), manager.authkey()).unwrap();
        let theirs = other.pool(1).unwrap();
        assert_eq!(theirs.apply(square, 3).unwrap(), 9);
        assert_eq!(pool.apply(square, 4).unwrap(), 16);
    });
}

#[test]
fn a_tcp_manager_serves_its_pool_to_a_remote_client() {
    deadline(LIMIT, || {
        let manager = Manager::builder()
            .tcp("127.0.0.1:0".parse().unwrap(), b"pool key")
            .start()
            .unwrap();
        let remote = Manager::connect(manager.address(), b"pool key").unwrap();
        let pool = remote.pool(2).unwrap();
        assert_eq!(pool.map(square, 0..40).unwrap()[39], 39 * 39);
        let e = pool.map(fragile, [3]).unwrap_err();
        assert!(matches!(e, TaskError::Panicked(_)), "{e:?}");
        // No workers is a refusal from the server, not a pool.
        assert!(matches!(
            remote.pool(0),
            Err(ProxyError::Remote(RemoteError::PoolStart(_)))
        ));
    });
}

#[test]
fn close_join_and_terminate_act_on_the_pool_for_every_client() {
    deadline(LIMIT, || {
        let manager = Manager::start().unwrap();
        let pool = manager.pool(2).unwrap();
        let queued: Vec<_> = (0..4).map(|i| pool.submit(nap, 50 + i)).collect();
        pool.close().unwrap();
        // Closed: nothing new, from any proxy of it.
        assert_eq!(pool.apply(square, 2), Err(TaskError::Closed));
        assert_eq!(pool.clone().apply(square, 2), Err(TaskError::Closed));
        // What was queued still runs; join waits for it.
        pool.join().unwrap();
        for (i, h) in queued.into_iter().enumerate() {
            assert_eq!(h.get().unwrap(), 50 + i as u64);
        }

        let doomed = manager.pool(1).unwrap();
        let started = manager.event().unwrap();
        let running = doomed.submit(announce_and_nap, (started.clone(), 60_000));
        let waiting = doomed.submit(square, 3);
        assert!(started.wait_timeout(Duration::from_secs(20)).unwrap());
        doomed.terminate().unwrap();
        assert_eq!(running.get(), Err(TaskError::Terminated));
        assert_eq!(waiting.get(), Err(TaskError::Terminated));
        assert_eq!(doomed.apply(square, 2), Err(TaskError::Terminated));
    });
}

#[test]
fn a_cancelled_task_stops_in_the_managers_pool() {
    deadline(LIMIT, || {
        let manager = Manager::start().unwrap();
        let pool = manager.pool(1).unwrap();
        let started = manager.event().unwrap();
        let long = pool.submit(announce_and_nap, (started.clone(), 60_000));
        assert!(started.wait_timeout(Duration::from_secs(20)).unwrap());
        long.cancel();
        assert_eq!(long.get(), Err(TaskError::Cancelled));
        // The only worker was killed and replaced: the next task runs now,
        // not in a minute.
        assert_eq!(pool.apply(square, 5).unwrap(), 25);
        assert_eq!(pool.stats().unwrap()[0].restarts, 1);
        // Dropping the proxy drops this process's unfinished tasks.
        let started = manager.event().unwrap();
        let other = manager.pool(1).unwrap();
        let pending = other.submit(announce_and_nap, (started.clone(), 60_000));
        assert!(started.wait_timeout(Duration::from_secs(20)).unwrap());
        drop(other);
        assert_eq!(pending.get(), Err(TaskError::Terminated));
    });
}

/// A client that starts a long task, says so, and waits to be killed.
fn submit_and_hang((pool, started): (PoolProxy, EventProxy)) {
    let _handle = pool.submit(announce_and_nap, (started, 120_000));
    std::thread::sleep(Duration::from_secs(300));
}

#[test]
fn a_client_killed_mid_task_leaves_no_work_behind() {
    deadline(LIMIT, || {
        let manager = Manager::start().unwrap();
        let pool = manager.pool(1).unwrap();
        let started = manager.event().unwrap();
        let client = Process::spawn(submit_and_hang, (pool.clone(), started.clone())).unwrap();
        assert!(started.wait_timeout(Duration::from_secs(20)).unwrap());
        client.kill().unwrap();
        assert!(matches!(
            client.join(),
            Err(JoinError::Signaled { signal, .. }) if signal == Signal::KILL
        ));
        // Its task is stopped (the worker killed and replaced), so the only
        // worker runs ours now instead of in two minutes.
        assert!(
            eventually(Duration::from_secs(30), || {
                pool.stats().unwrap()[0].restarts == 1
            }),
            "the dead client's task still runs"
        );
        assert_eq!(pool.apply(square, 6).unwrap(), 36);
    });
}

/// The `manager` example binary, another build of a program that
/// registers `demo.square` with the same types as this test does.
fn example_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join("manager");
    assert!(
        path.exists(),
        "{} was not built: run `cargo test` without a --test filter",
        path.display()
    );
    path
}

#[multiproc::task(name = "demo.square")]
fn demo_square(x: u64) -> u64 {
    x * x
}

#[test]
fn a_client_of_another_build_is_refused() {
    deadline(LIMIT, || {
        let socket = common::temp_path("pool-build.sock");
        let mut server = Command::new(example_binary())
            .arg("--serve")
            .arg(&socket)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(server.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.starts_with("listening on"), "{line:?}");
        let manager = Manager::connect(&Address::Unix(socket.clone()), b"demo key").unwrap();
        let pool = manager.pool(1).unwrap();
        let e = pool.apply(demo_square, 3).unwrap_err();
        assert!(
            matches!(&e, TaskError::BuildMismatch { expected, got } if expected != got),
            "{e:?}"
        );
        // The server's own objects still serve this client.
        let d = manager.dict::<String, u64>().unwrap();
        d.insert("a".into(), 1).unwrap();
        drop((pool, d, manager));
        // Closing its stdin stops the example.
        drop(server.stdin.take());
        assert!(server.wait().unwrap().success());
        assert!(!socket.exists());
    });
}

/// Tasks registered in another crate (the library) than the one that maps
/// them (this test): an optimised build gives each crate its own copies of
/// the generic functions a pool names a task by, so the test's differ from
/// the ones the library registered.
#[cfg(feature = "bench-internals")]
#[test]
fn a_task_of_another_crate_is_found() {
    use multiproc::__bench::tasks;
    deadline(LIMIT, || {
        let manager = Manager::start().unwrap();
        let pool = manager.pool(1).unwrap();
        assert_eq!(pool.map(tasks::increment, [1, 2]).unwrap(), [2, 3]);
        assert_eq!(pool.apply(tasks::increment, 41).unwrap(), 42);
        assert_eq!(
            pool.map(tasks::shout, ["ab".to_owned(), "xyz".to_owned()])
                .unwrap(),
            ["AB!2", "XYZ!3"]
        );
    });
}
