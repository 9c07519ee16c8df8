//! Ports of CPython's `_TestQueue` and `TestSimpleQueue`
//! (`Lib/test/_test_multiprocessing.py`) to the Rust API: what Python
//! asserts, adapted to Rust types (`queue.Full` is `TryPutError::Full` or
//! `PutTimeoutError::Timeout`, `queue.Empty` is `TryGetError::Empty` or
//! `GetTimeoutError::Timeout`, `qsize`/`empty`/`full` are
//! `len`/`is_empty`/`is_full`, `ValueError` on a closed queue is
//! `Closed`, on too many `task_done` is `TaskDoneError`).

mod common;

use std::time::{Duration, Instant};

use common::{daemon_builder, each_method};
use multiproc::{
    Event, GetError, GetTimeoutError, JoinableQueue, PutFailure, PutTimeoutError, Queue,
    SimpleQueue, TaskDoneError, TryGetError, TryPutError,
};

const TIMEOUT1: Duration = Duration::from_millis(100);
const TIMEOUT3: Duration = Duration::from_millis(150);

fn take_six((queue, child_can_start, parent_can_continue): (Queue<u64>, Event, Event)) {
    child_can_start.wait();
    for _ in 0..6 {
        queue.get().unwrap();
    }
    parent_can_continue.set();
}

/// `test_put`.
#[test]
fn put_on_a_bounded_queue() {
    each_method(|m| {
        const MAXSIZE: u64 = 6;
        let queue = Queue::bounded(MAXSIZE).unwrap();
        let (child_can_start, parent_can_continue) = (Event::new().unwrap(), Event::new().unwrap());
        let proc = daemon_builder(m)
            .spawn(
                take_six,
                (
                    queue.clone(),
                    child_can_start.clone(),
                    parent_can_continue.clone(),
                ),
            )
            .unwrap();
        assert!(queue.is_empty());
        assert!(!queue.is_full());

        queue.put(1).unwrap();
        queue.put(2).unwrap();
        queue.put_timeout(3, Duration::from_secs(10)).unwrap();
        queue.try_put(4).unwrap();
        queue.try_put(5).unwrap();
        queue.try_put(6).unwrap();

        assert!(!queue.is_empty());
        assert!(queue.is_full());
        assert_eq!(queue.len(), 6);

        let t = Instant::now();
        assert!(matches!(queue.try_put(7), Err(TryPutError::Full(7))));
        assert!(t.elapsed() < Duration::from_secs(5), "it waited");

        let t = Instant::now();
        assert!(matches!(
            queue.put_timeout(7, TIMEOUT1),
            Err(PutTimeoutError::Timeout(7))
        ));
        assert!(t.elapsed() >= TIMEOUT1);

        assert!(matches!(
            queue.put_timeout(7, Duration::ZERO),
            Err(PutTimeoutError::Timeout(7))
        ));

        let t = Instant::now();
        assert!(matches!(
            queue.put_timeout(7, TIMEOUT3),
            Err(PutTimeoutError::Timeout(7))
        ));
        assert!(t.elapsed() >= TIMEOUT3);

        child_can_start.set();
        parent_can_continue.wait();

        assert!(queue.is_empty());
        assert!(!queue.is_full());
        proc.join().unwrap();
    });
}

fn put_four(
    (queue, child_can_start, parent_can_continue, child_can_end): (Queue<u64>, Event, Event, Event),
) {
    child_can_start.wait();
    for i in 2..=5 {
        queue.put(i).unwrap();
    }
    parent_can_continue.set();
    // While a child holds the queue, an empty get times out, as in
    // Python; a queue nobody else holds is `Disconnected` (see
    // `get_timeout_waits`).
    child_can_end.wait_timeout(Duration::from_secs(30));
}

/// `test_get`.
#[test]
fn get_with_and_without_blocking() {
    each_method(|m| {
        let queue = Queue::new().unwrap();
        let (child_can_start, parent_can_continue) = (Event::new().unwrap(), Event::new().unwrap());
        let child_can_end = Event::new().unwrap();
        let proc = daemon_builder(m)
            .spawn(
                put_four,
                (
                    queue.clone(),
                    child_can_start.clone(),
                    parent_can_continue.clone(),
                    child_can_end.clone(),
                ),
            )
            .unwrap();
        assert!(queue.is_empty());
        child_can_start.set();
        parent_can_continue.wait();
        assert!(!queue.is_empty());

        assert_eq!(queue.get().unwrap(), 2);
        assert_eq!(queue.get().unwrap(), 3);
        assert_eq!(queue.get_timeout(Duration::from_secs(1)).unwrap(), 4);
        assert_eq!(queue.try_get().unwrap(), 5);
        assert!(queue.is_empty());

        let t = Instant::now();
        assert!(matches!(queue.try_get(), Err(TryGetError::Empty)));
        assert!(t.elapsed() < Duration::from_secs(5), "it waited");

        let t = Instant::now();
        assert!(matches!(
            queue.get_timeout(TIMEOUT1),
            Err(GetTimeoutError::Timeout)
        ));
        assert!(t.elapsed() >= TIMEOUT1);

        assert!(matches!(
            queue.get_timeout(Duration::ZERO),
            Err(GetTimeoutError::Timeout)
        ));

        let t = Instant::now();
        assert!(matches!(
            queue.get_timeout(TIMEOUT3),
            Err(GetTimeoutError::Timeout)
        ));
        assert!(t.elapsed() >= TIMEOUT3);

        child_can_end.set();
        proc.join().unwrap();
    });
}

fn put_ten_more(queue: Queue<u64>) {
    for i in 10..20 {
        queue.put(i).unwrap();
    }
}

/// `test_fork`: a child puts after the parent did; every value comes out
/// in order, then the queue is empty.
#[test]
fn a_child_puts_after_the_parent() {
    each_method(|m| {
        let queue = Queue::new().unwrap();
        for i in 0..10 {
            queue.put(i).unwrap();
        }
        let p = daemon_builder(m)
            .spawn(put_ten_more, queue.clone())
            .unwrap();
        for i in 0..20 {
            assert_eq!(queue.get().unwrap(), i, "{m}");
        }
        assert!(matches!(queue.try_get(), Err(TryGetError::Empty)));
        p.join().unwrap();
    });
}

/// `test_qsize`.
#[test]
fn qsize() {
    let q = Queue::new().unwrap();
    assert_eq!(q.len(), 0);
    q.put(1u8).unwrap();
    assert_eq!(q.len(), 1);
    q.put(5).unwrap();
    assert_eq!(q.len(), 2);
    q.get().unwrap();
    assert_eq!(q.len(), 1);
    q.get().unwrap();
    assert_eq!(q.len(), 0);
}

fn task_done_worker(q: JoinableQueue<Option<u64>>) {
    while let Some(_obj) = q.get().unwrap() {
        std::thread::sleep(Duration::from_millis(10));
        q.task_done().unwrap();
    }
}

/// `test_task_done`.
#[test]
fn task_done_and_join() {
    each_method(|m| {
        let queue = JoinableQueue::new().unwrap();
        let workers: Vec<_> = (0..4)
            .map(|_| {
                daemon_builder(m)
                    .spawn(task_done_worker, queue.clone())
                    .unwrap()
            })
            .collect();
        for i in 0..10 {
            queue.put(Some(i)).unwrap();
        }
        assert!(queue.join_timeout(Duration::from_secs(30)), "{m}");
        for _ in &workers {
            queue.put(None).unwrap();
        }
        for p in workers {
            p.join().unwrap();
        }
    });
}

/// `task_done()` called too many times: Python's `ValueError`.
#[test]
fn task_done_called_too_often() {
    let queue = JoinableQueue::new().unwrap();
    assert_eq!(queue.task_done(), Err(TaskDoneError));
    queue.put(1u8).unwrap();
    assert!(!queue.join_timeout(Duration::from_millis(10)));
    assert_eq!(queue.get().unwrap(), 1);
    assert_eq!(queue.task_done(), Ok(()));
    assert_eq!(queue.task_done(), Err(TaskDoneError));
    assert!(queue.join_timeout(Duration::ZERO));
    // Bounded joinable queue (Python's `JoinableQueue(maxsize)`).
    let queue = JoinableQueue::with(Queue::builder().max_items(1)).unwrap();
    queue.put(1u8).unwrap();
    assert!(queue.is_full());
    assert!(matches!(queue.try_put(2), Err(TryPutError::Full(2))));
    assert_eq!(queue.get().unwrap(), 1);
    assert_eq!(queue.task_done(), Ok(()));
    assert_eq!(queue.task_done(), Err(TaskDoneError));
}

/// `test_timeout` (bpo-30317). Python's queue is held by this process
/// alone there; ours then knows nobody could put, and says so at once
/// (the README's "`get` on a queue nobody else holds"): another handle
/// stands for the producer Python's test pretends there might be.
#[test]
fn get_timeout_waits() {
    let q: Queue<u8> = Queue::new().unwrap();
    assert!(matches!(
        q.get_timeout(Duration::from_millis(200)),
        Err(GetTimeoutError::Failed(GetError::Disconnected))
    ));
    assert!(matches!(q.try_get(), Err(TryGetError::Empty)));
    let _producer = q.clone();
    let start = Instant::now();
    assert!(matches!(
        q.get_timeout(Duration::from_millis(200)),
        Err(GetTimeoutError::Timeout)
    ));
    assert!(start.elapsed() >= Duration::from_millis(100));
}

#[derive(Debug, PartialEq)]
enum Item {
    NotSerializable,
    Fine(bool),
}

impl serde::Serialize for Item {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Item::NotSerializable => Err(serde::ser::Error::custom("AttributeError")),
            Item::Fine(b) => s.serialize_bool(*b),
        }
    }
}

impl<'de> serde::Deserialize<'de> for Item {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Item::Fine(bool::deserialize(d)?))
    }
}

/// `test_queue_feeder_donot_stop_onexc` (bpo-30414, bpo-33078): a value
/// that cannot be encoded does not stop the queue, nor count in its size.
#[test]
fn an_unencodable_value_does_not_stop_the_queue() {
    let q = Queue::new().unwrap();
    let e = q.put(Item::NotSerializable).unwrap_err();
    assert!(matches!(e.reason, PutFailure::Encode(_)), "{e:?}");
    q.put(Item::Fine(true)).unwrap();
    assert_eq!(
        q.get_timeout(Duration::from_secs(10)).unwrap(),
        Item::Fine(true)
    );

    let q = Queue::bounded(1).unwrap();
    assert!(q.put(Item::NotSerializable).is_err());
    q.put(Item::Fine(true)).unwrap();
    assert_eq!(q.len(), 1);
    assert_eq!(
        q.get_timeout(Duration::from_secs(10)).unwrap(),
        Item::Fine(true)
    );
    assert!(q.is_empty());
}

/// `test_closed_queue_put_get_exceptions`.
#[test]
fn a_closed_queue_refuses_put_and_get() {
    let q: Queue<String> = Queue::new().unwrap();
    q.close();
    assert!(matches!(
        q.put("foo".into()).unwrap_err().reason,
        PutFailure::Closed
    ));
    assert!(matches!(q.get(), Err(GetError::Closed)));
    let q: JoinableQueue<String> = JoinableQueue::new().unwrap();
    q.close();
    assert!(matches!(
        q.put("foo".into()).unwrap_err().reason,
        PutFailure::Closed
    ));
    assert!(matches!(q.get(), Err(GetError::Closed)));
    // TestSimpleQueue.test_close: closing twice does not fail.
    let q: SimpleQueue<u8> = SimpleQueue::new().unwrap();
    q.close();
    q.close();
}

fn report_empty((queue, child_can_start, parent_can_continue): (SimpleQueue<bool>, Event, Event)) {
    child_can_start.wait();
    queue.put(queue.is_empty()).unwrap();
    queue.put(queue.is_empty()).unwrap();
    parent_can_continue.set();
}

/// `TestSimpleQueue.test_empty` (issue 30301).
#[test]
fn simple_queue_empty() {
    each_method(|m| {
        let queue = SimpleQueue::new().unwrap();
        let (child_can_start, parent_can_continue) = (Event::new().unwrap(), Event::new().unwrap());
        let proc = daemon_builder(m)
            .spawn(
                report_empty,
                (
                    queue.clone(),
                    child_can_start.clone(),
                    parent_can_continue.clone(),
                ),
            )
            .unwrap();
        assert!(queue.is_empty());
        child_can_start.set();
        parent_can_continue.wait();
        assert!(!queue.is_empty());
        assert!(queue.get().unwrap());
        assert!(!queue.get().unwrap());
        assert!(queue.is_empty());
        proc.join().unwrap();
    });
}
