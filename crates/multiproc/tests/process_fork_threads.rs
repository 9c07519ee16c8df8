//! A child started with fork from a parent whose other threads use
//! multiproc at the same time must never hang on a process-wide registry
//! that one of those threads held at the moment of the fork (a `static`
//! mutex stays locked in the child forever: its holder does not exist
//! there). Each child here uses the registry a parent thread keeps busy,
//! and must finish by a deadline.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use common::{LIMIT, assert_gone, deadline};
use multiproc::{JoinTimeoutError, Process, Queue, StartMethod};

/// Children started while the other thread churns.
const CHILDREN: usize = 40;

/// How long a child may take; a hung one is killed and fails the test.
const CHILD_LIMIT: Duration = Duration::from_secs(10);

/// Makes and drops handles of the queue it was given, then puts one value:
/// each handle made or dropped counts itself in the process's registry of
/// queue handles.
fn use_queue(q: Queue<u64>) -> u64 {
    for _ in 0..10 {
        drop(q.clone());
    }
    q.put(1).expect("put");
    7
}

/// Starts `CHILDREN` fork children that run `body` on a clone of `q`
/// while `churn` keeps running on another thread of this process.
fn race(q: &Queue<u64>, churn: impl Fn() + Send + 'static, body: fn(Queue<u64>) -> u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = stop.clone();
    let churner = thread::spawn(move || {
        while !stopping.load(Ordering::Relaxed) {
            churn();
        }
    });
    let mut hung = 0;
    for i in 0..CHILDREN {
        let p = Process::builder()
            .start_method(StartMethod::Fork)
            .spawn(body, q.clone())
            .expect("spawn");
        let pid = p.pid();
        match p.join_timeout(CHILD_LIMIT) {
            Ok(v) => assert_eq!(v, 7, "child {i}"),
            Err(JoinTimeoutError::Timeout(p)) => {
                hung += 1;
                p.kill().expect("kill");
                let _ = p.join();
            }
            Err(e) => panic!("child {i}: {e}"),
        }
        assert_gone(pid);
    }
    stop.store(true, Ordering::Relaxed);
    churner.join().expect("churner");
    assert_eq!(hung, 0, "{hung} of {CHILDREN} children hung");
    for _ in 0..CHILDREN {
        assert_eq!(q.get_timeout(Duration::from_secs(10)).expect("value"), 1);
    }
}

#[test]
fn fork_children_never_hang_on_the_queue_registry_another_thread_held() {
    deadline(LIMIT, || {
        let q = Queue::<u64>::new().expect("queue");
        let theirs = q.clone();
        race(
            &q,
            move || {
                for _ in 0..100 {
                    drop(theirs.clone());
                }
            },
            use_queue,
        );
    });
}
