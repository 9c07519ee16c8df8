//! Ports of CPython's `TestSyncManagerTypes`
//! (`Lib/test/_test_multiprocessing.py`) to the Rust API: each manager
//! type is made in the parent, used from a child (under every start
//! method, each with a fresh manager as Python's `setUp` makes), and the
//! parent checks what the child left. The child's `assert`s are Rust
//! `assert!`s: a failed one panics the child, and `join` then fails, as
//! Python's `exitcode == 0` check does.
//!
//! Adapted to typed proxies: Python's `q.full()` is `is_full()` (and a
//! `try_put` is refused with `Full`), a list's
//! iteration works on `snapshot()`, `l.pop(0)` is `remove(0)`, and a
//! dict's `popitem()` is `pop_item()`. A manager lock is released by the guard of its holder, and
//! by the manager when its holder's process is gone (see the README);
//! Python's parent releases the lock its child left held.

mod common;

use std::time::Duration;

use common::{LIMIT, deadline, eventually};
use multiproc::{
    ArrayProxy, BarrierProxy, ConditionProxy, DictProxy, EventProxy, JoinableQueueProxy, ListProxy,
    LockProxy, Manager, NamespaceProxy, PoolProxy, Process, ProxyError, QueueProxy, RemoteError,
    SemaphoreProxy, StartMethod, TaskError, TryLockError, TryPutError, ValueProxy,
};
use serde::{Serialize, de::DeserializeOwned};

/// `run_worker`: runs `worker(obj)` in a daemon child under `method` and
/// requires it to succeed (Python: `exitcode == 0`).
fn run_worker<T: Serialize + DeserializeOwned + Send + 'static>(
    method: StartMethod,
    worker: fn(T),
    obj: T,
) {
    let p = Process::builder()
        .start_method(method)
        .daemon(true)
        .spawn(worker, obj)
        .unwrap();
    if let Err(e) = p.join() {
        panic!("{method}: the child failed: {e:?}");
    }
}

/// Runs `test` once per start method, each with a manager of its own.
fn each_method(test: fn(StartMethod, &Manager)) {
    deadline(LIMIT, move || {
        for method in StartMethod::ALL {
            let manager = Manager::start().unwrap();
            test(method, &manager);
            manager.shutdown().unwrap();
        }
    });
}

fn child_event(obj: EventProxy) {
    assert!(obj.is_set().unwrap());
    obj.wait().unwrap();
    obj.clear().unwrap();
    assert!(!obj.wait_timeout(Duration::from_millis(1)).unwrap());
}

/// `test_event`.
#[test]
fn event() {
    each_method(|method, m| {
        let o = m.event().unwrap();
        o.set().unwrap();
        run_worker(method, child_event, o.clone());
        assert!(!o.is_set().unwrap());
        assert!(!o.wait_timeout(Duration::from_millis(1)).unwrap());
    });
}

/// `_test_lock`: takes the lock and ends holding it.
fn child_lock(obj: LockProxy) {
    std::mem::forget(obj.lock().unwrap());
}

/// `test_lock`, for a lock and a reentrant lock: the lock the child ended
/// holding is free again (here the manager releases it when the child's
/// process is gone; Python's parent releases it), and a lock taken and
/// released once is free.
#[test]
fn lock() {
    each_method(|method, m| {
        for o in [m.lock().unwrap(), m.rlock().unwrap()] {
            run_worker(method, child_lock, o.clone());
            let g = o.lock_timeout(Duration::from_secs(20)).unwrap();
            g.release().unwrap();
            o.try_lock().unwrap().release().unwrap();
        }
    });
}

/// `_test_rlock`.
fn child_rlock(obj: LockProxy) {
    obj.lock().unwrap().release().unwrap();
}

/// `test_rlock` (Python's test makes a plain `Lock`; here both kinds).
#[test]
fn rlock() {
    each_method(|method, m| {
        for o in [m.lock().unwrap(), m.rlock().unwrap()] {
            run_worker(method, child_rlock, o.clone());
            assert!(!matches!(o.try_lock(), Err(TryLockError::WouldBlock)));
        }
    });
}

/// `_test_semaphore`.
fn child_semaphore(obj: SemaphoreProxy) {
    obj.acquire().unwrap();
}

/// `test_semaphore` and `test_bounded_semaphore`: the unit the child took
/// stays taken after it is gone, until the parent releases it.
#[test]
fn semaphore() {
    each_method(|method, m| {
        for (o, bounded) in [
            (m.semaphore(1).unwrap(), false),
            (m.bounded_semaphore(1).unwrap(), true),
        ] {
            run_worker(method, child_semaphore, o.clone());
            assert_eq!(o.value().unwrap(), 0, "{method}");
            o.release().unwrap();
            assert_eq!(o.value().unwrap(), 1, "{method}");
            // One more: Python's `BoundedSemaphore` raises `ValueError`
            // ("Semaphore released too many times"), a plain one counts on.
            match o.release() {
                Ok(()) if !bounded => assert_eq!(o.value().unwrap(), 2),
                Err(ProxyError::Remote(RemoteError::OverReleased)) if bounded => {
                    assert_eq!(o.value().unwrap(), 1)
                }
                other => panic!("{method}, bounded {bounded}: {other:?}"),
            }
        }
    });
}

/// `_test_condition`.
fn child_condition(obj: ConditionProxy) {
    obj.lock().unwrap().release().unwrap();
}

/// `test_condition`.
#[test]
fn condition() {
    each_method(|method, m| {
        let o = m.condition().unwrap();
        run_worker(method, child_condition, o.clone());
        o.try_lock().unwrap().release().unwrap();
    });
}

/// `_test_barrier`.
fn child_barrier(obj: BarrierProxy) {
    assert_eq!(obj.parties().unwrap(), 5);
    obj.reset().unwrap();
}

/// `test_barrier`.
#[test]
fn barrier() {
    each_method(|method, m| {
        let o = m.barrier(5).unwrap();
        run_worker(method, child_barrier, o.clone());
        assert!(!o.is_broken().unwrap());
        assert_eq!(o.n_waiting().unwrap(), 0);
    });
}

#[multiproc::task]
fn double(x: u32) -> u32 {
    2 * x
}

/// `_test_pool`: Python's `with obj: pass`, whose exit terminates the pool
/// (here after one call, to show the child can use it).
fn child_pool(obj: PoolProxy) {
    assert_eq!(obj.apply(double, 21).unwrap(), 42);
    obj.terminate().unwrap();
}

/// `test_pool`: the pool the child terminated is terminated for the
/// parent too (Python's proxy acts on the shared pool).
#[test]
fn pool() {
    each_method(|method, m| {
        let o = m.pool(4).unwrap();
        run_worker(method, child_pool, o.clone());
        assert!(matches!(
            o.apply(double, 1),
            Err(TaskError::Closed | TaskError::Terminated)
        ));
    });
}

/// `_test_queue`.
fn child_queue(obj: QueueProxy<i32>) {
    assert_eq!(obj.len().unwrap(), 2);
    assert!(obj.is_full().unwrap());
    assert!(matches!(obj.try_put(7), Err(TryPutError::Full(7))));
    assert!(!obj.is_empty().unwrap());
    assert_eq!(obj.get().unwrap(), 5);
    assert!(!obj.is_full().unwrap());
    assert!(!obj.is_empty().unwrap());
    assert_eq!(obj.get().unwrap(), 6);
    assert!(obj.is_empty().unwrap());
}

/// `test_queue`.
#[test]
fn queue() {
    each_method(|method, m| {
        let o = m.bounded_queue::<i32>(2).unwrap();
        o.put(5).unwrap();
        o.put(6).unwrap();
        run_worker(method, child_queue, o.clone());
        assert!(o.is_empty().unwrap());
        assert!(o.len().unwrap() < 2);
    });
}

/// `_test_queue`, on a joinable queue.
fn child_joinable_queue(obj: JoinableQueueProxy<i32>) {
    assert_eq!(obj.len().unwrap(), 2);
    assert!(obj.is_full().unwrap());
    assert!(matches!(obj.try_put(7), Err(TryPutError::Full(7))));
    assert!(!obj.is_empty().unwrap());
    assert_eq!(obj.get().unwrap(), 5);
    assert!(!obj.is_full().unwrap());
    assert!(!obj.is_empty().unwrap());
    assert_eq!(obj.get().unwrap(), 6);
    assert!(obj.is_empty().unwrap());
}

/// `test_joinable_queue`.
#[test]
fn joinable_queue() {
    each_method(|method, m| {
        let o = m.bounded_joinable_queue::<i32>(2).unwrap();
        o.put(5).unwrap();
        o.put(6).unwrap();
        run_worker(method, child_joinable_queue, o.clone());
        assert!(o.is_empty().unwrap());
        assert!(o.len().unwrap() < 2);
        // Two items were got and none was marked done.
        assert!(!o.join_timeout(Duration::from_millis(10)).unwrap());
    });
}

/// `_test_list`.
fn child_list(obj: ListProxy<i32>) {
    assert_eq!(obj.get(0).unwrap(), Some(5));
    assert_eq!(obj.count(&5).unwrap(), 1);
    assert_eq!(obj.index(&5).unwrap(), Some(0));
    obj.sort().unwrap();
    obj.reverse().unwrap();
    assert_eq!(obj.snapshot().unwrap(), [5]);
    assert_eq!(obj.len().unwrap(), 1);
    assert_eq!(obj.remove(0).unwrap(), 5);
}

/// `test_list`.
#[test]
fn list() {
    each_method(|method, m| {
        let o = m.list::<i32>().unwrap();
        o.push(5).unwrap();
        run_worker(method, child_list, o.clone());
        assert!(o.is_empty().unwrap());
        assert_eq!(o.len().unwrap(), 0);
    });
}

/// `_test_dict`.
fn child_dict(obj: DictProxy<String, i32>) {
    assert_eq!(obj.len().unwrap(), 1);
    assert_eq!(obj.get("foo").unwrap(), Some(5));
    assert_eq!(obj.items().unwrap(), [("foo".to_string(), 5)]);
    assert_eq!(obj.keys().unwrap(), ["foo"]);
    assert_eq!(obj.values().unwrap(), [5]);
    assert_eq!(obj.pop_item().unwrap(), Some(("foo".to_string(), 5)));
    assert_eq!(obj.pop_item().unwrap(), None);
}

/// `test_dict`.
#[test]
fn dict() {
    each_method(|method, m| {
        let o = m.dict::<String, i32>().unwrap();
        o.insert("foo".into(), 5).unwrap();
        run_worker(method, child_dict, o.clone());
        assert!(o.is_empty().unwrap());
        assert_eq!(o.len().unwrap(), 0);
    });
}

/// `_test_value`.
fn child_value(obj: ValueProxy<i32>) {
    assert_eq!(obj.get().unwrap(), 1);
    assert_eq!(obj.set(2).unwrap(), 1);
}

/// `test_value`.
#[test]
fn value() {
    each_method(|method, m| {
        let o = m.value(1i32).unwrap();
        run_worker(method, child_value, o.clone());
        assert_eq!(o.get().unwrap(), 2);
    });
}

/// `_test_array`.
fn child_array(obj: ArrayProxy<i32>) {
    assert_eq!(obj.get(0).unwrap(), 0);
    assert_eq!(obj.get(1).unwrap(), 1);
    assert_eq!(obj.len().unwrap(), 2);
    assert_eq!(obj.snapshot().unwrap(), [0, 1]);
}

/// `test_array`.
#[test]
fn array() {
    each_method(|method, m| {
        let o = m.array([0i32, 1]).unwrap();
        run_worker(method, child_array, o.clone());
    });
}

/// `_test_namespace`.
fn child_namespace(obj: NamespaceProxy) {
    assert_eq!(obj.get::<i32>("x").unwrap(), Some(0));
    assert_eq!(obj.get::<i32>("y").unwrap(), Some(1));
}

/// `test_namespace`.
#[test]
fn namespace() {
    each_method(|method, m| {
        let o = m.namespace().unwrap();
        o.set("x", &0i32).unwrap();
        o.set("y", &1i32).unwrap();
        run_worker(method, child_namespace, o.clone());
    });
}

/// `_TestPoolWorkerLifetime.test_pool_worker_lifetime`, through a
/// manager's pool (`cpython_port_pool.rs` ports it for a local `Pool`):
/// workers are replaced after ten tasks, and every result is right.
#[test]
fn manager_pool_max_tasks_per_child() {
    deadline(LIMIT, || {
        let m = Manager::start().unwrap();
        let pool = m
            .pool_builder()
            .workers(3)
            .max_tasks_per_child(10)
            .build()
            .unwrap();
        let pids = |p: &PoolProxy| -> Vec<i32> {
            let mut v: Vec<i32> = p.stats().unwrap().iter().map(|s| s.pid).collect();
            v.sort();
            v
        };
        let orig = pids(&pool);
        assert_eq!(orig.len(), 3);
        let results: Vec<_> = (0..100).map(|i| pool.submit(double, i)).collect();
        for (j, res) in results.into_iter().enumerate() {
            assert_eq!(res.get(), Ok(2 * j as u32));
        }
        assert!(!orig.contains(&0), "{orig:?}");
        // The last workers retired may still be being replaced (pid 0).
        assert!(eventually(Duration::from_secs(20), || !pids(&pool).contains(&0)));
        let fin = pids(&pool);
        assert_ne!(orig, fin);
        // At least ten processes ran 100 tasks, ten at most each: seven or
        // more replaced one of the first three.
        let restarts: u64 = pool.stats().unwrap().iter().map(|s| s.restarts).sum();
        assert!(restarts >= 7, "{restarts}");
        pool.close().unwrap();
        pool.join().unwrap();
        m.shutdown().unwrap();
    });
}
