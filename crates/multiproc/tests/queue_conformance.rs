//! Queues under every start method: order, bounds, timeouts, large and
//! handle-carrying messages, disconnection, joinable queues.

mod common;

use std::time::{Duration, Instant};

use common::{LIMIT, deadline};
use multiproc::{
    Connection, GetError, GetTimeoutError, JoinError, JoinTimeoutError, JoinableQueue, Process,
    PutFailure, PutTimeoutError, Queue, Signal, SimpleQueue, StartMethod, TryGetError, TryPutError,
    pipe,
};
use serde_bytes::ByteBuf;

#[test]
fn fifo_in_one_process() {
    deadline(LIMIT, || {
        let q = Queue::<String>::new().unwrap();
        assert!(q.is_empty());
        for i in 0..1000 {
            q.put(format!("v{i}")).unwrap();
        }
        assert_eq!(q.len(), 1000);
        for i in 0..1000 {
            assert_eq!(q.get().unwrap(), format!("v{i}"));
        }
        assert!(matches!(q.try_get(), Err(TryGetError::Empty)));
        let t = Instant::now();
        assert!(matches!(
            q.get_timeout(Duration::from_millis(30)),
            Err(GetTimeoutError::Timeout)
        ));
        assert!(t.elapsed() >= Duration::from_millis(25));
    });
}

#[test]
fn the_ring_wraps_many_times() {
    deadline(LIMIT, || {
        let q = Queue::builder()
            .ring_bytes(4096)
            .build::<Vec<u8>>()
            .unwrap();
        for round in 0..2000usize {
            let v = vec![(round % 256) as u8; round % 300];
            q.put(v.clone()).unwrap();
            assert_eq!(q.get().unwrap(), v);
        }
    });
}

#[test]
fn a_bound_gives_the_value_back() {
    deadline(LIMIT, || {
        let q = Queue::bounded(2).unwrap();
        q.put(1u8).unwrap();
        q.try_put(2u8).unwrap();
        assert!(q.is_full());
        match q.try_put(3u8) {
            Err(TryPutError::Full(v)) => assert_eq!(v, 3),
            other => panic!("{other:?}"),
        }
        match q.put_timeout(4u8, Duration::from_millis(20)) {
            Err(PutTimeoutError::Timeout(v)) => assert_eq!(v, 4),
            other => panic!("{other:?}"),
        }
        assert_eq!(q.get().unwrap(), 1);
        q.try_put(5).unwrap();
        assert_eq!((q.get().unwrap(), q.get().unwrap()), (2, 5));
    });
}

fn produce((q, n): (Queue<u64>, u64)) -> u64 {
    for i in 0..n {
        q.put(i).unwrap();
    }
    n
}

fn consume((q, n): (Queue<u64>, u64)) -> u64 {
    (0..n).map(|_| q.get().unwrap()).sum()
}

#[test]
fn between_processes_under_every_start_method() {
    deadline(LIMIT, || {
        for m in StartMethod::ALL {
            let q = Queue::<u64>::new().unwrap();
            let n = 20_000;
            let p = Process::builder()
                .start_method(m)
                .spawn(produce, (q.clone(), n))
                .unwrap();
            for i in 0..n {
                assert_eq!(q.get().unwrap(), i, "{m}");
            }
            assert_eq!(p.join().unwrap(), n);
            // And the other way round, through a bounded queue.
            let q = Queue::<u64>::bounded(16).unwrap();
            let c = Process::builder()
                .start_method(m)
                .spawn(consume, (q.clone(), n))
                .unwrap();
            for i in 0..n {
                q.put(i).unwrap();
            }
            assert_eq!(c.join().unwrap(), n * (n - 1) / 2, "{m}");
        }
    });
}

fn echo_sizes((input, output): (Queue<ByteBuf>, Queue<ByteBuf>)) {
    while let Ok(v) = input.get() {
        if v.as_slice() == b"stop" {
            break;
        }
        output.put(v).unwrap();
    }
}

#[test]
fn messages_of_every_size_cross_processes() {
    deadline(LIMIT * 2, || {
        for m in StartMethod::ALL {
            let (input, output) = (Queue::new().unwrap(), Queue::new().unwrap());
            let child = Process::builder()
                .start_method(m)
                .spawn(echo_sizes, (input.clone(), output.clone()))
                .unwrap();
            let inline_max = multiproc::DEFAULT_RING_BYTES / 2 - 8;
            for len in [
                0usize,
                1,
                7,
                8,
                9,
                4096,
                65536,
                inline_max - 16,
                inline_max,
                inline_max + 100,
                8 << 20,
            ] {
                let v: Vec<u8> = (0..len).map(|i| (i % 249) as u8).collect();
                input.put(ByteBuf::from(v.clone())).unwrap();
                assert!(output.get().unwrap().into_vec() == v, "{m}: {len} bytes");
            }
            input.put(ByteBuf::from(b"stop".to_vec())).unwrap();
            child.join().unwrap();
        }
    });
}

#[test]
fn a_quarter_gigabyte_message() {
    deadline(LIMIT * 2, || {
        // ByteBuf encodes as one block (a Vec<u8> is encoded byte by byte).
        let q = Queue::<ByteBuf>::new().unwrap();
        let q2 = q.clone();
        let child = Process::builder()
            .start_method(StartMethod::ForkServer)
            .spawn(
                |q: Queue<ByteBuf>| {
                    let mut v = vec![0u8; 256 << 20];
                    v[12345] = 7;
                    q.put(ByteBuf::from(v)).unwrap();
                },
                q2,
            )
            .unwrap();
        let v = q.get().unwrap();
        assert_eq!((v.len(), v[12345]), (256 << 20, 7));
        child.join().unwrap();
    });
}

fn say_hello_through(q: Queue<Connection<String, String>>) {
    let conn = q.get().unwrap();
    conn.send(&"hello through a queued connection".to_string())
        .unwrap();
}

#[test]
fn a_connection_travels_through_a_queue() {
    deadline(LIMIT, || {
        for m in StartMethod::ALL {
            let q = Queue::new().unwrap();
            let child = Process::builder()
                .start_method(m)
                .spawn(say_hello_through, q.clone())
                .unwrap();
            let (ours, theirs) = pipe::<String, String>().unwrap();
            q.put(theirs).unwrap();
            assert_eq!(
                ours.recv().unwrap(),
                "hello through a queued connection",
                "{m}"
            );
            child.join().unwrap();
        }
    });
}

#[test]
fn get_with_nobody_left_is_disconnected() {
    deadline(LIMIT, || {
        // Alone in this process.
        let q = Queue::<u8>::new().unwrap();
        assert!(matches!(q.get(), Err(GetError::Disconnected)));
        // A full queue with nobody to drain it.
        let q = Queue::<u8>::bounded(1).unwrap();
        q.put(1).unwrap();
        match q.put(2) {
            Err(e) => assert!(matches!(e.reason, PutFailure::Disconnected) && e.value == 2),
            Ok(()) => panic!("put into a full queue nobody drains"),
        }
        // Another handle in this process keeps it connected.
        let q = Queue::<u8>::new().unwrap();
        let other = q.clone();
        assert!(matches!(
            q.get_timeout(Duration::from_millis(120)),
            Err(GetTimeoutError::Timeout)
        ));
        drop(other);
        // A child that held it and exited.
        for m in StartMethod::ALL {
            let q = Queue::<u64>::new().unwrap();
            let child = Process::builder()
                .start_method(m)
                .spawn(produce, (q.clone(), 3))
                .unwrap();
            child.join().unwrap();
            assert_eq!(
                (q.get().unwrap(), q.get().unwrap(), q.get().unwrap()),
                (0, 1, 2)
            );
            let t = Instant::now();
            assert!(matches!(q.get(), Err(GetError::Disconnected)), "{m}");
            assert!(t.elapsed() < Duration::from_secs(5), "{m}");
        }
    });
}

/// Burns its processor until killed (or for 60 s at most).
fn hog(_: ()) {
    let end = Instant::now() + Duration::from_secs(60);
    let mut x = 0u64;
    while Instant::now() < end {
        x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
    }
}

#[test]
fn on_a_busy_machine_a_get_nobody_can_answer_still_ends_within_tens_of_milliseconds() {
    deadline(LIMIT, || {
        // A CPU-bound process more than there are processors: every yield
        // of the waiting get may hand the processor away for a whole time
        // slice (500 of them used to hold off the sleep whose re-check
        // finds nobody left for seconds, past this timeout).
        let hogs: Vec<Process<()>> = (0..=std::thread::available_parallelism()
            .map_or(1, |n| n.get()))
            .map(|_| {
                common::daemon_builder(StartMethod::Fork)
                    .spawn(hog, ())
                    .unwrap()
            })
            .collect();
        std::thread::sleep(Duration::from_millis(100));
        let q = Queue::<u8>::new().unwrap();
        let mut took = Vec::new();
        for _ in 0..3 {
            let t = Instant::now();
            let got = q.get_timeout(Duration::from_secs(3));
            took.push(t.elapsed());
            assert!(
                matches!(got, Err(GetTimeoutError::Failed(GetError::Disconnected))),
                "{got:?} after {took:?}"
            );
        }
        for h in hogs {
            h.kill().unwrap();
            match h.join_timeout(Duration::from_secs(10)) {
                Err(JoinTimeoutError::Failed(JoinError::Signaled { signal, .. })) => {
                    assert_eq!(signal, Signal::KILL)
                }
                other => panic!(
                    "a hog ended otherwise: {:?}",
                    other.map_err(|e| e.to_string())
                ),
            }
        }
        // The sleep re-checks every 50 ms (about 60 ms each here; 750 ms
        // when the yields had no bound of time): allow for the load.
        assert!(
            took.iter().all(|t| *t < Duration::from_millis(400)),
            "{took:?}"
        );
    });
}

#[test]
fn an_unencodable_value_comes_back_and_the_queue_works() {
    #[derive(Debug, PartialEq, serde::Deserialize)]
    struct Refuses(u8);
    impl serde::Serialize for Refuses {
        fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            Err(serde::ser::Error::custom("no"))
        }
    }
    let q = Queue::<Refuses>::new().unwrap();
    let err = q.put(Refuses(9)).unwrap_err();
    assert_eq!(err.value, Refuses(9));
    assert!(matches!(err.reason, PutFailure::Encode(_)));
    let q2 = Queue::<u8>::new().unwrap();
    q2.put(1).unwrap();
    assert_eq!(q2.get().unwrap(), 1);
}

#[test]
fn a_panicking_serialize_leaves_the_queue_usable() {
    #[derive(Debug, PartialEq, serde::Deserialize)]
    struct Value(u8);
    impl serde::Serialize for Value {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            assert!(self.0 != 0, "refusing to encode 0");
            s.serialize_u8(self.0)
        }
    }
    deadline(LIMIT, || {
        let q = Queue::<Value>::new().unwrap();
        q.put(Value(1)).unwrap();
        let q2 = q.clone();
        let panicked = std::thread::spawn(move || q2.put(Value(0))).join();
        assert!(panicked.is_err());
        // The producer lock was released: puts from any thread go on.
        q.put(Value(2)).unwrap();
        std::thread::spawn({
            let q = q.clone();
            move || q.put(Value(3)).unwrap()
        })
        .join()
        .unwrap();
        for want in 1..=3 {
            assert_eq!(q.get().unwrap(), Value(want));
        }
        assert!(q.is_empty());
    });
}

#[test]
fn a_serialize_that_blocks_does_not_block_other_producers() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    static SERIALIZING: AtomicBool = AtomicBool::new(false);
    /// Serializes through its mutex, as serde's impl for `Mutex` does.
    #[derive(Debug)]
    struct Shared(Arc<Mutex<u32>>);
    impl serde::Serialize for Shared {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            SERIALIZING.store(true, Ordering::SeqCst);
            let v = *self.0.lock().unwrap();
            s.serialize_u32(v)
        }
    }
    impl<'de> serde::Deserialize<'de> for Shared {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            u32::deserialize(d).map(|v| Shared(Arc::new(Mutex::new(v))))
        }
    }
    deadline(LIMIT, || {
        let q = Queue::<Shared>::new().unwrap();
        let m = Arc::new(Mutex::new(7));
        let held = m.lock().unwrap();
        let blocked = std::thread::spawn({
            let (q, m) = (q.clone(), Arc::clone(&m));
            move || q.put(Shared(m)).unwrap()
        });
        while !SERIALIZING.load(Ordering::SeqCst) {
            std::thread::yield_now();
        }
        // The other thread waits for the mutex inside `put`; this one,
        // holding the mutex, still puts (the lock order cannot invert).
        q.put_timeout(Shared(Arc::new(Mutex::new(1))), Duration::from_secs(10))
            .unwrap();
        drop(held);
        blocked.join().unwrap();
        assert_eq!(*q.get().unwrap().0.lock().unwrap(), 1);
        assert_eq!(*q.get().unwrap().0.lock().unwrap(), 7);
    });
}

#[test]
fn sizes_that_grow_and_shrink_keep_their_order() {
    deadline(LIMIT, || {
        // A small ring: records meet its end, wrap, and go out of line.
        let q = Queue::builder()
            .ring_bytes(64 << 10)
            .build::<ByteBuf>()
            .unwrap();
        let sizes = [
            0usize, 1, 9, 3000, 7, 40_000, 5, 31_000, 100_000, 8, 20_000, 2,
        ];
        for round in 0..20u8 {
            for (i, &n) in sizes.iter().enumerate() {
                q.put(ByteBuf::from(vec![round ^ i as u8; n])).unwrap();
                if i % 3 == 2 {
                    // Keep the ring from filling: this thread also gets.
                    for (j, &m) in sizes[i - 2..=i].iter().enumerate() {
                        let got = q.get().unwrap();
                        assert_eq!(got.len(), m);
                        assert!(got.iter().all(|&b| b == round ^ (i - 2 + j) as u8));
                    }
                }
            }
        }
        assert!(q.is_empty());
    });
}

#[test]
fn a_closed_handle_refuses_puts() {
    let q = Queue::<u8>::new().unwrap();
    let other = q.clone();
    q.close();
    assert!(matches!(q.put(1).unwrap_err().reason, PutFailure::Closed));
    other.put(2).unwrap();
    assert_eq!(other.get().unwrap(), 2);
}

fn work_and_mark(q: JoinableQueue<u64>) {
    while let Ok(job) = q.get() {
        std::thread::sleep(Duration::from_millis(job));
        q.task_done().unwrap();
    }
}

#[test]
fn joinable_queues_wait_for_every_task() {
    deadline(LIMIT, || {
        for m in StartMethod::ALL {
            let q = JoinableQueue::<u64>::new().unwrap();
            assert!(q.join_timeout(Duration::ZERO));
            for _ in 0..5 {
                q.put(20).unwrap();
            }
            assert!(
                !q.join_timeout(Duration::from_millis(10)),
                "{m}: join returned with work pending"
            );
            let w = Process::builder()
                .start_method(m)
                .daemon(true)
                .spawn(work_and_mark, q.clone())
                .unwrap();
            let t = Instant::now();
            q.join();
            assert!(t.elapsed() >= Duration::from_millis(80), "{m}");
            assert!(q.is_empty());
            drop(w);
        }
        let q = JoinableQueue::<u8>::new().unwrap();
        q.put(1).unwrap();
        q.get().unwrap();
        q.task_done().unwrap();
        assert!(q.task_done().is_err());
    });
}

fn simple_child(q: SimpleQueue<String>) {
    q.put("from a simple queue".into()).unwrap();
}

#[test]
fn simple_queues_cross_processes() {
    deadline(LIMIT, || {
        for m in StartMethod::ALL {
            let q = SimpleQueue::new().unwrap();
            let c = Process::builder()
                .start_method(m)
                .spawn(simple_child, q.clone())
                .unwrap();
            assert_eq!(q.get().unwrap(), "from a simple queue");
            c.join().unwrap();
            assert!(q.is_empty());
        }
    });
}

#[test]
fn a_closed_handle_neither_puts_nor_gets_and_other_handles_go_on() {
    // CPython: get on a closed queue raises ValueError.
    let q = Queue::<u32>::new().unwrap();
    let other = q.clone();
    q.put(1).unwrap();
    q.close();
    assert!(matches!(q.get(), Err(multiproc::GetError::Closed)));
    assert!(matches!(
        q.try_get(),
        Err(multiproc::TryGetError::Failed(multiproc::GetError::Closed))
    ));
    assert!(q.put(2).is_err());
    assert_eq!(other.get().unwrap(), 1);
}
