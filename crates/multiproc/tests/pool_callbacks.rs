//! Callbacks on async pool calls (Python's `callback` and `error_callback`)
//! and `starmap_async`, under every start method: they run in the parent on
//! the pool's callback thread, once per call, before `get` returns; a
//! panicking callback does not break the pool.

mod common;

use std::sync::mpsc;
use std::time::Duration;

use common::{LIMIT, assert_gone, deadline};
use multiproc::{Pool, StartMethod, TaskError};

const THREAD: &str = "multiproc-pool-callbacks";

fn double_below_10(x: u64) -> u64 {
    assert!(x < 10, "too big");
    x * 2
}

fn add((a, b): (u64, u64)) -> u64 {
    a + b
}

fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// Where a callback ran and what it saw.
#[derive(Debug, PartialEq)]
struct Seen {
    pid: u32,
    thread: Option<String>,
    what: Result<Vec<u64>, String>,
}

fn seen(what: Result<Vec<u64>, String>) -> Seen {
    Seen {
        pid: std::process::id(),
        thread: std::thread::current().name().map(str::to_owned),
        what,
    }
}

fn here(what: Result<Vec<u64>, String>) -> Seen {
    Seen {
        pid: std::process::id(),
        thread: Some(THREAD.to_owned()),
        what,
    }
}

fn finish(pool: Pool) {
    let pids: Vec<i32> = pool.stats().iter().map(|s| s.pid).collect();
    drop(pool);
    for pid in pids {
        assert_gone(pid);
    }
}

#[test]
fn callbacks_run_once_in_the_parent_on_the_callback_thread() {
    deadline(LIMIT, || {
        for m in StartMethod::ALL {
            let pool = Pool::builder().workers(2).start_method(m).build().unwrap();
            let (tx, rx) = mpsc::channel::<Seen>();
            let cbs = |tx: &mpsc::Sender<Seen>| {
                let (ok, err) = (tx.clone(), tx.clone());
                (
                    move |v: &u64| ok.send(seen(Ok(vec![*v]))).unwrap(),
                    move |e: &TaskError| err.send(seen(Err(e.to_string()))).unwrap(),
                )
            };
            // apply_async: a value, then a panic.
            let (ok, err) = cbs(&tx);
            let h = pool.apply_async(double_below_10, 4).with_callbacks(ok, err);
            assert_eq!(h.get(), Ok(8), "{m}");
            // `get` returned after the callback ran: its report is here.
            assert_eq!(rx.try_recv().unwrap(), here(Ok(vec![8])), "{m}");
            let (ok, err) = cbs(&tx);
            let h = pool
                .apply_async(double_below_10, 40)
                .with_callbacks(ok, err);
            assert!(matches!(h.get(), Err(TaskError::Panicked(_))), "{m}");
            let s = rx.try_recv().unwrap();
            assert!(
                matches!(&s.what, Err(e) if e.contains("too big")),
                "{m}: {s:?}"
            );
            assert_eq!(
                (s.pid, s.thread.as_deref()),
                (std::process::id(), Some(THREAD))
            );

            // map_async and starmap_async: the whole list, or the failure.
            let (ok, err) = (tx.clone(), tx.clone());
            let h = pool.map_async(double_below_10, 0..5).with_callbacks(
                move |v: &[u64]| ok.send(seen(Ok(v.to_vec()))).unwrap(),
                move |e| err.send(seen(Err(e.to_string()))).unwrap(),
            );
            assert_eq!(h.get(), Ok(vec![0, 2, 4, 6, 8]), "{m}");
            assert_eq!(rx.try_recv().unwrap(), here(Ok(vec![0, 2, 4, 6, 8])));
            let (ok, err) = (tx.clone(), tx.clone());
            let h = pool.map_async(double_below_10, 5..15).with_callbacks(
                move |v: &[u64]| ok.send(seen(Ok(v.to_vec()))).unwrap(),
                move |e| err.send(seen(Err(e.to_string()))).unwrap(),
            );
            assert!(h.get().is_err(), "{m}");
            assert!(matches!(rx.try_recv().unwrap().what, Err(e) if e.contains("too big")));
            let (ok, err) = (tx.clone(), tx.clone());
            // Dropped at once: the callbacks still run.
            drop(pool.starmap_async(add, [(1, 2), (3, 4)]).with_callbacks(
                move |v: &[u64]| ok.send(seen(Ok(v.to_vec()))).unwrap(),
                move |e| err.send(seen(Err(e.to_string()))).unwrap(),
            ));
            let s = rx.recv_timeout(Duration::from_secs(20)).unwrap();
            assert_eq!(s, here(Ok(vec![3, 7])), "{m}");

            // Callbacks given after the task finished, and given twice.
            let h = pool.apply_async(double_below_10, 1);
            h.wait();
            let (ok, err) = cbs(&tx);
            let h = h.with_callbacks(ok, err);
            let (ok, err) = cbs(&tx);
            let h = h.with_callbacks(ok, err);
            assert_eq!(h.get(), Ok(2));
            assert_eq!(rx.try_recv().unwrap(), here(Ok(vec![2])));
            assert_eq!(rx.try_recv().unwrap(), here(Ok(vec![2])));
            // Each callback ran once.
            assert!(rx.try_recv().is_err(), "{m}");
            finish(pool);
        }
    });
}

#[test]
fn a_panicking_callback_does_not_break_the_pool() {
    deadline(LIMIT, || {
        let pool = Pool::new(2).unwrap();
        let h = pool
            .apply_async(double_below_10, 3)
            .with_callbacks(|_| panic!("callback fails (on purpose)"), |_| ());
        // The handle still gets its result; the thread still serves.
        assert_eq!(h.get(), Ok(6));
        let (tx, rx) = mpsc::channel();
        let h = pool
            .map_async(double_below_10, 0..3)
            .with_callbacks(|_| panic!("callback fails (on purpose)"), |_| ())
            .with_callbacks(move |v: &[u64]| tx.send(v.to_vec()).unwrap(), |_| ());
        assert_eq!(h.get(), Ok(vec![0, 2, 4]));
        assert_eq!(rx.try_recv(), Ok(vec![0, 2, 4]));
        let (tx, rx) = mpsc::channel();
        pool.apply_async(double_below_10, 2)
            .with_callbacks(move |v: &u64| tx.send(*v).unwrap(), |_| ());
        assert_eq!(rx.recv_timeout(Duration::from_secs(20)), Ok(4));
        assert_eq!(pool.map(double_below_10, 0..4), Ok(vec![0, 2, 4, 6]));
        finish(pool);
    });
}

#[test]
fn a_pool_that_ends_first_runs_the_error_callbacks() {
    deadline(LIMIT, || {
        let pool = Pool::new(1).unwrap();
        let (tx, rx) = mpsc::channel();
        let running = pool.apply_async(nap, 30_000);
        let e1 = tx.clone();
        let h = running.with_callbacks(|_| (), move |e| e1.send(e.clone()).unwrap());
        let queued = pool.apply_async(nap, 30_000);
        let e2 = tx.clone();
        drop(queued.with_callbacks(|_| (), move |e| e2.send(e.clone()).unwrap()));
        // Dropping the pool terminates it: both fail, both error callbacks
        // run before the drop returns.
        finish(pool);
        assert_eq!(rx.try_recv(), Ok(TaskError::Terminated));
        assert_eq!(rx.try_recv(), Ok(TaskError::Terminated));
        assert_eq!(h.get(), Err(TaskError::Terminated));
    });
}
