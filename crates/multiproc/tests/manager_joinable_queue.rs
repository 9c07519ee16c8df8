//! The manager's joinable queue (Python: `Manager().JoinableQueue()`):
//! `task_done` and `join` across processes that hold the proxy, a second
//! client over the manager's address, timeouts, and a client killed while
//! it waits in `join`.

mod common;

use std::time::{Duration, Instant};

use common::{LIMIT, assert_gone, deadline};
use multiproc::{
    EventProxy, JoinError, JoinableQueueProxy, Manager, Process, ProxyError, RemoteError, Signal,
    StartMethod,
};

/// Takes items until none comes for a while, marking each one done.
fn consume(q: JoinableQueueProxy<u32>) -> u32 {
    let mut sum = 0;
    loop {
        match q.get_timeout(Duration::from_millis(500)) {
            Ok(x) => sum += x,
            Err(multiproc::GetTimeoutError::Timeout) => break,
            Err(e) => panic!("{e}"),
        }
        q.task_done().unwrap();
    }
    sum
}

fn join_forever((q, joining): (JoinableQueueProxy<u32>, EventProxy)) {
    joining.set().unwrap();
    q.join().unwrap();
}

#[test]
fn task_done_and_join_count_items_as_pythons_do() {
    deadline(LIMIT, || {
        let manager = Manager::start().unwrap();
        let q = manager.joinable_queue::<u32>().unwrap();
        // Nothing put: join returns at once.
        q.join().unwrap();
        assert!(q.join_timeout(Duration::ZERO).unwrap());
        q.put(1).unwrap();
        q.put(2).unwrap();
        assert_eq!(q.len().unwrap(), 2);
        // Taken is not done.
        assert_eq!(q.get().unwrap(), 1);
        assert_eq!(q.get().unwrap(), 2);
        let start = Instant::now();
        assert!(!q.join_timeout(Duration::from_millis(200)).unwrap());
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(200), "{waited:?}");
        assert!(waited < Duration::from_secs(10), "{waited:?}");
        q.task_done().unwrap();
        assert!(!q.join_timeout(Duration::ZERO).unwrap());
        q.task_done().unwrap();
        assert!(q.join_timeout(Duration::ZERO).unwrap());
        assert!(matches!(
            q.task_done(),
            Err(ProxyError::Remote(RemoteError::TaskDoneTooOften))
        ));
        // A bounded one refuses a put past its bound, and counts none.
        let b = manager.bounded_joinable_queue::<u8>(1).unwrap();
        b.put(1).unwrap();
        assert!(b.try_put(2).is_err());
        assert_eq!(b.get().unwrap(), 1);
        b.task_done().unwrap();
        b.join().unwrap();
        let pid = manager.server_pid().unwrap();
        manager.shutdown().unwrap();
        assert_gone(pid);
    });
}

/// A unix manager, and a TCP one whose clients all come over the address.
fn managers() -> Vec<Manager> {
    vec![
        Manager::start().unwrap(),
        Manager::builder()
            .tcp("127.0.0.1:0".parse().unwrap(), b"joinable key")
            .start()
            .unwrap(),
    ]
}

#[test]
fn children_under_every_start_method_finish_the_items_and_join_waits_for_them() {
    deadline(LIMIT, || {
        for manager in managers() {
            let q = manager.joinable_queue::<u32>().unwrap();
            for x in 1..=30 {
                q.put(x).unwrap();
            }
            let children: Vec<_> = StartMethod::ALL
                .into_iter()
                .map(|m| {
                    Process::builder()
                        .start_method(m)
                        .spawn(consume, q.clone())
                        .unwrap()
                })
                .collect();
            // Another thread joins too, on its own session.
            let joiner = std::thread::spawn({
                let q = q.clone();
                move || q.join()
            });
            q.join().unwrap();
            joiner.join().unwrap().unwrap();
            // Every item was marked done: so every item was taken.
            assert!(q.is_empty().unwrap());
            let total: u32 = children.into_iter().map(|c| c.join().unwrap()).sum();
            assert_eq!(total, (1..=30).sum::<u32>());
            assert!(matches!(
                q.task_done(),
                Err(ProxyError::Remote(RemoteError::TaskDoneTooOften))
            ));
            let pid = manager.server_pid().unwrap();
            manager.shutdown().unwrap();
            assert_gone(pid);
        }
    });
}

#[test]
fn a_client_killed_in_join_leaves_the_queue_to_the_others() {
    deadline(LIMIT, || {
        for m in StartMethod::ALL {
            let manager = Manager::builder().start_method(m).start().unwrap();
            let q = manager.joinable_queue::<u32>().unwrap();
            q.put(7).unwrap();
            let joining = manager.event().unwrap();
            let joiner = Process::builder()
                .start_method(m)
                .spawn(join_forever, (q.clone(), joining.clone()))
                .unwrap();
            joining.wait().unwrap();
            // Another joiner in this process waits alongside it.
            let other = std::thread::spawn({
                let q = q.clone();
                move || q.join_timeout(Duration::from_secs(20))
            });
            // Long enough for the child's join to reach the server.
            std::thread::sleep(Duration::from_millis(200));
            assert!(!q.join_timeout(Duration::ZERO).unwrap());
            joiner.kill().unwrap();
            assert!(matches!(
                joiner.join(),
                Err(JoinError::Signaled {
                    signal: Signal::KILL,
                    ..
                })
            ));
            assert_eq!(q.get().unwrap(), 7);
            q.task_done().unwrap();
            assert!(other.join().unwrap().unwrap(), "{m}");
            q.put(8).unwrap();
            assert_eq!(q.get().unwrap(), 8);
            q.task_done().unwrap();
            q.join().unwrap();
            let pid = manager.server_pid().unwrap();
            manager.shutdown().unwrap();
            assert_gone(pid);
        }
    });
}
