//! The named cluster queue: FIFO across processes, timeouts, bounded
//! blocking and wake-ups, joins, a server that dies, restarts or stalls
//! under a blocked call, and garbage in its keys.
#![cfg(feature = "cluster")]

mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::{LIMIT, deadline, redis_server, send_signal};
use multiproc::Process;
use multiproc::cluster::{
    Cluster, ClusterError, GetTimeoutError, PutTimeoutError, TryGetError, TryPutError,
};

/// The grace a blocked call may take past its deadline when the server
/// stalls, with room for a loaded machine.
const STALL_SLACK: Duration = Duration::from_secs(4);

fn raw(url: &str) -> redis::Connection {
    redis::Client::open(url)
        .unwrap()
        .get_connection_with_timeout(Duration::from_secs(5))
        .unwrap()
}

/// Child: attaches to queue `name` and puts `0..n` in order.
fn produce((url, name, n): (String, String, u64)) -> u64 {
    let cluster = Cluster::connect(&url).unwrap();
    let q = cluster.queue::<u64>(&name).build().unwrap();
    for i in 0..n {
        q.put(i).unwrap();
    }
    n
}

/// Child: attaches to queue `name` and takes `n` values.
fn consume((url, name, n): (String, String, u64)) -> Vec<u64> {
    let cluster = Cluster::connect(&url).unwrap();
    let q = cluster.queue::<u64>(&name).build().unwrap();
    (0..n)
        .map(|_| q.get_timeout(Duration::from_secs(20)).unwrap())
        .collect()
}

#[test]
fn values_keep_their_order_across_processes() {
    deadline(LIMIT, || {
        let Some(server) = redis_server() else { return };
        let cluster = Cluster::connect(&server.url()).unwrap();
        let q = cluster.queue::<u64>("fifo").build().unwrap();
        let producer = Process::spawn(produce, (server.url(), "fifo".to_string(), 300)).unwrap();
        let got: Vec<u64> = (0..300)
            .map(|_| q.get_timeout(Duration::from_secs(20)).unwrap())
            .collect();
        assert_eq!(got, (0..300).collect::<Vec<_>>());
        assert_eq!(producer.join().unwrap(), 300);
        // The other way: this process puts, a child takes.
        for i in 0..50 {
            q.put(i).unwrap();
        }
        let consumer = Process::spawn(consume, (server.url(), "fifo".to_string(), 50)).unwrap();
        assert_eq!(consumer.join().unwrap(), (0..50).collect::<Vec<_>>());
        assert!(q.is_empty().unwrap());
        // Another namespace holds another queue of the same name.
        let other = cluster.namespace("other").unwrap();
        let q2 = other.queue::<u64>("fifo").build().unwrap();
        q.put(1).unwrap();
        assert!(matches!(q2.try_get(), Err(TryGetError::Empty)));
        assert_eq!(q.len().unwrap(), 1);
        q.delete().unwrap();
        assert_eq!(q.len().unwrap(), 0);
    });
}

#[test]
fn timeouts_and_full_queues_give_values_back() {
    deadline(LIMIT, || {
        let Some(server) = redis_server() else { return };
        let cluster = Cluster::connect(&server.url()).unwrap();
        let q = cluster.queue::<String>("small").bounded(2).build().unwrap();
        assert_eq!(q.max_items(), 2);
        let start = Instant::now();
        assert!(matches!(
            q.get_timeout(Duration::from_millis(200)),
            Err(GetTimeoutError::Timeout)
        ));
        assert!(start.elapsed() >= Duration::from_millis(200));
        assert!(matches!(q.try_get(), Err(TryGetError::Empty)));
        q.put("a".into()).unwrap();
        q.try_put("b".into()).unwrap();
        assert!(q.is_full().unwrap());
        match q.try_put("c".into()) {
            Err(TryPutError::Full(v)) => assert_eq!(v, "c"),
            other => panic!("{other:?}"),
        }
        let start = Instant::now();
        match q.put_timeout("d".into(), Duration::from_millis(200)) {
            Err(e @ PutTimeoutError::Timeout(_)) => assert_eq!(e.into_inner(), "d"),
            other => panic!("{other:?}"),
        }
        assert!(start.elapsed() >= Duration::from_millis(200));
        // Another handle follows the recorded bound; another bound is refused.
        let same = cluster.queue::<String>("small").build().unwrap();
        assert_eq!(same.max_items(), 2);
        assert!(matches!(
            cluster.queue::<String>("small").bounded(3).build(),
            Err(ClusterError::Mismatch(_))
        ));
        assert!(matches!(
            cluster.queue::<String>("bad name").build(),
            Err(ClusterError::InvalidName { .. })
        ));
        assert_eq!(same.try_get().unwrap(), "a");
        assert_eq!(q.get().unwrap(), "b");
    });
}

#[test]
fn a_blocked_put_is_woken_by_a_get_in_another_process() {
    deadline(LIMIT, || {
        let Some(server) = redis_server() else { return };
        let cluster = Cluster::connect(&server.url()).unwrap();
        let q = cluster.queue::<u64>("tight").bounded(1).build().unwrap();
        q.put(100).unwrap();
        // The child takes 3 values, one at a time, while this process puts
        // them into a queue with room for one.
        let consumer = Process::spawn(consume, (server.url(), "tight".to_string(), 3)).unwrap();
        for i in 101..103 {
            q.put_timeout(i, Duration::from_secs(20)).unwrap();
        }
        assert_eq!(consumer.join().unwrap(), [100, 101, 102]);
        assert!(q.is_empty().unwrap());
        // Several blocked producers in threads all get through.
        q.put(0).unwrap();
        let producers: Vec<_> = (1..4)
            .map(|i| {
                let q = q.clone();
                thread::spawn(move || q.put_timeout(i, Duration::from_secs(20)).is_ok())
            })
            .collect();
        let mut got: Vec<u64> = (0..4)
            .map(|_| q.get_timeout(Duration::from_secs(20)).unwrap())
            .collect();
        for p in producers {
            assert!(p.join().unwrap());
        }
        got.sort();
        assert_eq!(got, [0, 1, 2, 3]);
    });
}

/// Child: takes values from a joinable queue and marks each done, until
/// it sees `u64::MAX`.
fn work((url, name): (String, String)) -> u64 {
    let cluster = Cluster::connect(&url).unwrap();
    let q = cluster.queue::<u64>(&name).build_joinable().unwrap();
    let mut n = 0;
    loop {
        let v = q.get_timeout(Duration::from_secs(20)).unwrap();
        thread::sleep(Duration::from_millis(2));
        q.task_done().unwrap();
        if v == u64::MAX {
            return n;
        }
        n += 1;
    }
}

#[test]
fn join_waits_for_every_value_to_be_done() {
    deadline(LIMIT, || {
        let Some(server) = redis_server() else { return };
        let cluster = Cluster::connect(&server.url()).unwrap();
        let q = cluster.queue::<u64>("jobs").build_joinable().unwrap();
        assert!(q.join_timeout(Duration::from_millis(10)).unwrap());
        for i in 0..20 {
            q.put(i).unwrap();
        }
        assert_eq!(q.unfinished().unwrap(), 20);
        assert!(!q.join_timeout(Duration::from_millis(50)).unwrap());
        let worker = Process::spawn(work, (server.url(), "jobs".to_string())).unwrap();
        q.put(u64::MAX).unwrap();
        // A second joiner in a thread is woken too.
        let q2 = q.clone();
        let other = thread::spawn(move || q2.join_timeout(Duration::from_secs(20)).unwrap());
        q.join().unwrap();
        assert!(other.join().unwrap());
        assert_eq!(q.unfinished().unwrap(), 0);
        assert_eq!(worker.join().unwrap(), 20);
        assert!(matches!(q.task_done(), Err(ClusterError::OverReleased(_))));
    });
}

#[test]
fn a_server_killed_or_restarted_under_blocked_calls_is_an_error() {
    deadline(LIMIT, || {
        let Some(mut server) = redis_server() else {
            return;
        };
        let cluster = Cluster::connect(&server.url()).unwrap();
        let q = cluster.queue::<u64>("q").build().unwrap();
        let full = cluster.queue::<u64>("full").bounded(1).build().unwrap();
        full.put(1).unwrap();
        let (q1, full1) = (q.clone(), full.clone());
        let getter = thread::spawn(move || q1.get());
        let timed = {
            let q = q.clone();
            thread::spawn(move || q.get_timeout(Duration::from_secs(30)))
        };
        let putter = thread::spawn(move || full1.put(2));
        thread::sleep(Duration::from_millis(300));
        let start = Instant::now();
        server.kill().unwrap();
        assert!(matches!(
            getter.join().unwrap(),
            Err(ClusterError::Connection(_))
        ));
        assert!(matches!(
            timed.join().unwrap(),
            Err(GetTimeoutError::Failed(ClusterError::Connection(_)))
        ));
        let e = putter.join().unwrap().unwrap_err();
        assert!(matches!(e.reason, ClusterError::Connection(_)), "{e:?}");
        assert_eq!(e.value, 2);
        assert!(start.elapsed() < Duration::from_secs(10));
        // Calls while it is down fail at once, with the value back.
        assert!(matches!(q.len(), Err(ClusterError::Connection(_))));
        assert_eq!(q.put(7).unwrap_err().into_inner(), 7);
        // A restarted server (without persistence) is empty but serves.
        server.restart().unwrap();
        let getter = {
            let q = q.clone();
            thread::spawn(move || q.get_timeout(Duration::from_secs(30)))
        };
        thread::sleep(Duration::from_millis(300));
        server.restart().unwrap();
        assert!(matches!(
            getter.join().unwrap(),
            Err(GetTimeoutError::Failed(ClusterError::Connection(_)))
        ));
        assert_eq!(full.len().unwrap(), 0);
        q.put(3).unwrap();
        assert_eq!(q.get().unwrap(), 3);
    });
}

#[test]
fn a_stalled_server_is_a_timeout_within_the_deadline() {
    deadline(LIMIT, || {
        let Some(server) = redis_server() else { return };
        let cluster = Cluster::connect(&server.url()).unwrap();
        let q = cluster.queue::<u64>("q").build().unwrap();
        q.put(1).unwrap();
        assert_eq!(q.get().unwrap(), 1);
        let pid = server.pid().unwrap() as i32;
        assert!(send_signal(pid, libc::SIGSTOP));
        let timed = {
            let q = q.clone();
            thread::spawn(move || {
                let start = Instant::now();
                (q.get_timeout(Duration::from_millis(300)), start.elapsed())
            })
        };
        let unbounded = {
            let q = q.clone();
            thread::spawn(move || {
                let start = Instant::now();
                (q.get(), start.elapsed())
            })
        };
        let (r, took) = timed.join().unwrap();
        let (r2, took2) = unbounded.join().unwrap();
        assert!(send_signal(pid, libc::SIGCONT));
        assert!(
            matches!(r, Err(GetTimeoutError::Failed(ClusterError::Timeout(_)))),
            "{r:?}"
        );
        assert!(took < Duration::from_millis(300) + STALL_SLACK, "{took:?}");
        assert!(matches!(r2, Err(ClusterError::Timeout(_))), "{r2:?}");
        assert!(took2 < Duration::from_secs(4) + STALL_SLACK, "{took2:?}");
        // The server answers again once it runs.
        q.put(2).unwrap();
        assert_eq!(q.get().unwrap(), 2);
    });
}

#[test]
fn garbage_and_wrong_types_are_typed_errors() {
    deadline(LIMIT, || {
        let Some(server) = redis_server() else { return };
        let cluster = Cluster::connect(&server.url()).unwrap();
        let mut r = raw(&server.url());
        let q = cluster.queue::<(u64, String)>("g").build().unwrap();
        // Bytes another program pushed: a decode error, and the queue goes on.
        redis::cmd("RPUSH")
            .arg("mp:{default}:queue:g")
            .arg(&b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"[..])
            .arg(&b""[..])
            .query::<()>(&mut r)
            .unwrap();
        q.put((1, "ok".into())).unwrap();
        assert!(matches!(q.get(), Err(ClusterError::Decode(_))));
        assert!(matches!(
            q.try_get(),
            Err(TryGetError::Failed(ClusterError::Decode(_)))
        ));
        assert_eq!(q.get().unwrap(), (1, "ok".to_string()));
        // A key of another type under the queue's name.
        redis::cmd("SET")
            .arg("mp:{default}:queue:w")
            .arg("text")
            .query::<()>(&mut r)
            .unwrap();
        let w = cluster.queue::<u64>("w").build().unwrap();
        assert!(matches!(
            w.put(1).unwrap_err().reason,
            ClusterError::Corrupted(_)
        ));
        assert!(matches!(w.get(), Err(ClusterError::Corrupted(_))));
        assert!(matches!(w.len(), Err(ClusterError::Corrupted(_))));
        // A counter or bound that is not a number.
        redis::cmd("HSET")
            .arg("mp:{default}:queue.meta:m")
            .arg("unfinished")
            .arg("many")
            .arg("max")
            .arg("-3")
            .query::<()>(&mut r)
            .unwrap();
        assert!(matches!(
            cluster.queue::<u64>("m").build(),
            Err(ClusterError::Corrupted(_))
        ));
        assert!(matches!(
            cluster.queue::<u64>("m").bounded(4).build(),
            Err(ClusterError::Corrupted(_))
        ));
        redis::cmd("HDEL")
            .arg("mp:{default}:queue.meta:m")
            .arg("max")
            .query::<()>(&mut r)
            .unwrap();
        let m = cluster.queue::<u64>("m").build_joinable().unwrap();
        assert!(matches!(
            m.put(1).unwrap_err().reason,
            ClusterError::Corrupted(_)
        ));
        assert!(matches!(m.task_done(), Err(ClusterError::Corrupted(_))));
        assert!(matches!(m.join(), Err(ClusterError::Corrupted(_))));
        assert_eq!(m.len().unwrap(), 0, "a refused put left a value");
    });
}
