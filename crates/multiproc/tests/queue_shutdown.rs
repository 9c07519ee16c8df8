//! `Queue::shutdown` (Python 3.13's `Queue.shutdown`): puts fail at once,
//! gets drain what is queued and then fail, an immediate shutdown drops
//! what is queued (and counts it done for `join`), and callers blocked in
//! other processes wake to see it.

mod common;

use std::time::{Duration, Instant};

use common::{LIMIT, deadline};
use multiproc::{GetError, JoinableQueue, Process, PutFailure, Queue, StartMethod};

#[test]
fn a_shutdown_queue_refuses_puts_and_drains_then_refuses_gets() {
    deadline(LIMIT, || {
        let q = Queue::new().unwrap();
        for i in 0..3u32 {
            q.put(i).unwrap();
        }
        let other = q.clone();
        assert!(!other.is_shut_down());
        q.shutdown(false);
        assert!(other.is_shut_down());
        let refused = other.put(9).unwrap_err();
        assert!(matches!(refused.reason, PutFailure::ShutDown));
        assert_eq!(refused.into_inner(), 9);
        let timed_out = other.put_timeout(10, Duration::from_secs(1)).unwrap_err();
        assert_eq!(timed_out.into_inner(), 10);
        assert_eq!(other.try_put(11).unwrap_err().into_inner(), 11);
        assert_eq!(
            (
                other.get().unwrap(),
                other.get().unwrap(),
                other.get().unwrap()
            ),
            (0, 1, 2)
        );
        assert!(matches!(other.get(), Err(GetError::ShutDown)));
        assert!(matches!(
            other.get_timeout(Duration::from_secs(5)),
            Err(multiproc::GetTimeoutError::Failed(GetError::ShutDown))
        ));
    });
}

#[test]
fn an_immediate_shutdown_drops_what_is_queued_and_join_returns() {
    deadline(LIMIT, || {
        let q = JoinableQueue::new().unwrap();
        for i in 0..5u32 {
            q.put(i).unwrap();
        }
        q.shutdown(true);
        assert!(matches!(q.get(), Err(GetError::ShutDown)));
        assert!(q.join_timeout(Duration::from_secs(5)));
        // Out-of-line values too.
        let big = Queue::builder().ring_bytes(4096).build().unwrap();
        for _ in 0..3 {
            big.put(vec![7u8; 3000]).unwrap();
        }
        big.shutdown(true);
        assert!(matches!(big.get(), Err(GetError::ShutDown)));
    });
}

fn blocked_get(q: Queue<u32>) -> String {
    match q.get() {
        Ok(v) => format!("got {v}"),
        Err(e) => format!("{e:?}"),
    }
}

fn blocked_put(q: Queue<u32>) -> String {
    q.put(1).unwrap();
    match q.put(2) {
        Ok(()) => "put".into(),
        Err(e) => format!("{:?}", e.reason),
    }
}

#[test]
fn callers_blocked_in_other_processes_wake() {
    deadline(LIMIT, || {
        for method in StartMethod::ALL {
            let empty = Queue::<u32>::new().unwrap();
            let full = Queue::<u32>::bounded(1).unwrap();
            let getters: Vec<_> = (0..2)
                .map(|_| {
                    Process::builder()
                        .start_method(method)
                        .spawn(blocked_get, empty.clone())
                        .unwrap()
                })
                .collect();
            let putter = Process::builder()
                .start_method(method)
                .spawn(blocked_put, full.clone())
                .unwrap();
            // Let them block (in the kernel, after their spins and yields).
            std::thread::sleep(Duration::from_millis(300));
            let start = Instant::now();
            empty.shutdown(false);
            full.shutdown(false);
            for g in getters {
                assert_eq!(g.join().unwrap(), "ShutDown", "{method}");
            }
            assert_eq!(putter.join().unwrap(), "ShutDown", "{method}");
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "{method}: woke after {:?}",
                start.elapsed()
            );
            // What the putter put first is still there to take.
            assert_eq!(full.get().unwrap(), 1);
        }
    });
}
