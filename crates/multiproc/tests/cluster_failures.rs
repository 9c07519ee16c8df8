//! The cluster pool's failure semantics: agents killed, stalled or
//! poisoned, a producer that dies, a server that restarts or vanishes,
//! garbage in the stream.
#![cfg(feature = "cluster")]

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::{LIMIT, deadline};
use multiproc::cluster::{Cluster, LocalServer};
use multiproc::{Process, TaskError};

#[multiproc::task]
fn square(x: u64) -> u64 {
    x * x
}

#[multiproc::task]
fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// Appends a line to `path` each time it runs, then naps.
#[multiproc::task]
fn logged_nap((path, ms): (String, u64)) -> u64 {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap();
    let deliveries = multiproc::cluster::current_task().map_or(0, |t| t.deliveries);
    writeln!(f, "{deliveries}").unwrap();
    drop(f);
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// The pid of the agent running this task: the nearest ancestor started
/// with MULTIPROC_CLUSTER (its initial environment still shows it).
fn my_agent() -> Option<i32> {
    let mut pid = std::process::id() as i32;
    for _ in 0..8 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let ppid: i32 = stat[stat.rfind(')')? + 2..]
            .split(' ')
            .nth(1)?
            .parse()
            .ok()?;
        pid = ppid;
        let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        if env
            .split(|b| *b == 0)
            .any(|kv| kv.starts_with(b"MULTIPROC_CLUSTER="))
        {
            return Some(pid);
        }
    }
    None
}

/// Kills the agent that runs it: a poison task.
#[multiproc::task]
fn kill_my_agent(_: u64) -> u64 {
    if let Some(agent) = my_agent() {
        // SAFETY: kill(2) with a valid signal has no memory effects.
        unsafe { libc::kill(agent, libc::SIGKILL) };
    }
    std::thread::sleep(Duration::from_secs(30));
    0
}

use common::cluster_setup as setup;

fn raw(server: &LocalServer) -> redis::Connection {
    redis::Client::open(server.url())
        .unwrap()
        .get_connection()
        .unwrap()
}

#[test]
fn a_task_that_kills_every_agent_stops_at_the_delivery_cap() {
    deadline(LIMIT, || {
        let Some(s) = setup(3, 1) else { return };
        let pool = s.cluster.pool().max_deliveries(2).build().unwrap();
        let started = Instant::now();
        let e = pool.submit(kill_my_agent, 0).get().unwrap_err();
        assert!(
            matches!(e, TaskError::WorkerLost { deliveries: 2, .. }),
            "{e:?}"
        );
        // Two agents died (their records expire within a second); the
        // third answered and still serves.
        let end = Instant::now() + Duration::from_secs(5);
        while s.cluster.agents().unwrap().len() != 1 {
            assert!(Instant::now() < end, "{:?}", s.cluster.agents());
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(pool.apply(square, 4).unwrap(), 16);
        assert!(started.elapsed() < Duration::from_secs(30));
        drop(s.agents);
    });
}

#[test]
fn a_stalled_agents_late_result_is_dropped_and_each_item_has_one() {
    deadline(LIMIT, || {
        let Some(s) = setup(2, 1) else { return };
        let log = common::temp_path("cluster-stall");
        let path = log.to_str().unwrap().to_owned();
        let pool = s.cluster.pool().build().unwrap();
        let h = pool.submit(logged_nap, (path.clone(), 1500));
        // Which agent holds it: its consumer name is host:pid:random.
        let mut conn = raw(&s.server);
        let owner = loop {
            let pending: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
                .arg("mp:{default}:tasks")
                .arg("workers")
                .arg("-")
                .arg("+")
                .arg(10)
                .query(&mut conn)
                .unwrap();
            if let Some((_, owner, _, _)) = pending.first() {
                break owner.clone();
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let pid: i32 = owner.split(':').nth(1).unwrap().parse().unwrap();
        let runs = || -> Vec<String> {
            let mut r: Vec<String> = std::fs::read_to_string(&log)
                .unwrap_or_default()
                .lines()
                .map(str::to_owned)
                .collect();
            r.sort();
            r
        };
        // Stalled once its worker runs the task: an agent stopped before
        // it handed the task on (a loaded machine's CI run did that) finds
        // it lost when it wakes, and never runs it, rightly.
        assert!(
            common::eventually(Duration::from_secs(20), || runs() == ["1"]),
            "{:?}",
            runs()
        );
        assert!(common::send_signal(pid, libc::SIGSTOP));
        std::thread::sleep(Duration::from_millis(1000));
        assert!(common::send_signal(pid, libc::SIGCONT));
        assert_eq!(h.get().unwrap(), 1500);
        // It ran twice (the stalled agent's worker went on), but its late
        // result was dropped: the pool saw one, and nothing is left over.
        common::eventually(Duration::from_secs(10), || runs().len() >= 2);
        let runs = runs();
        assert_eq!(runs, ["1", "2"], "the task should have run on both agents");
        let left: u64 = redis::cmd("XLEN")
            .arg("mp:{default}:tasks")
            .query(&mut conn)
            .unwrap();
        assert_eq!(left, 0);
        let _ = std::fs::remove_file(&log);
        assert_eq!(pool.map(square, [2u64, 3]).unwrap(), [4, 9]);
    });
}

#[test]
fn garbage_in_the_stream_is_dropped_and_agents_keep_serving() {
    deadline(LIMIT, || {
        let Some(s) = setup(1, 1) else { return };
        let mut conn = raw(&s.server);
        let garbage: [&[(&str, &[u8])]; 5] = [
            &[("x", b"y")],
            &[("v", b"1"), ("pool", b"nope"), ("c", b"1")],
            &[("v", b"99")],
            &[
                ("v", b"1"),
                ("pool", b"p"),
                ("c", b"1"),
                ("f", b"cluster_failures::square"),
                ("sig", b"0"),
                ("b", b""),
                ("first", b"18446744073709551615"),
                ("ends", b"\x01\x05"),
                ("d", b"3"),
                ("p", b"\x01\x02\x03\x04\x05"),
            ],
            &[("ends", &[0xff; 64]), ("p", &[0u8; 4096])],
        ];
        for fields in garbage {
            let mut cmd = redis::cmd("XADD");
            cmd.arg("mp:{default}:tasks").arg("*");
            for (k, v) in fields {
                cmd.arg(*k).arg(*v);
            }
            let _: String = cmd.query(&mut conn).unwrap();
        }
        // Garbage in a pool's result list is dropped too.
        let pool = s.cluster.pool().build().unwrap();
        let lists: Vec<String> = redis::cmd("KEYS")
            .arg("mp:{default}:pool:*:alive")
            .query(&mut conn)
            .unwrap();
        let results = lists[0].replace(":alive", ":results");
        let _: () = redis::cmd("RPUSH")
            .arg(&results)
            .arg(&b"\xff\x00garbage"[..])
            .query(&mut conn)
            .unwrap();
        assert_eq!(pool.map(square, 0..100u64).unwrap()[99], 99 * 99);
        assert_eq!(s.cluster.agents().unwrap().len(), 1);
        // Every garbage entry was acknowledged and deleted.
        let left: u64 = redis::cmd("XLEN")
            .arg("mp:{default}:tasks")
            .query(&mut conn)
            .unwrap();
        assert_eq!(left, 0);
    });
}

#[test]
fn a_restarted_server_fails_the_lost_items_and_agents_serve_again() {
    deadline(LIMIT, || {
        let Some(mut s) = setup(1, 2) else { return };
        let pool = s.cluster.pool().build().unwrap();
        let h = pool.task(nap).chunksize(1).map_async([3_000u64, 3_000]);
        std::thread::sleep(Duration::from_millis(300));
        let restarted = Instant::now();
        s.server.restart().unwrap();
        let e = h.get().unwrap_err();
        assert!(matches!(e, TaskError::Backend(_)), "{e:?}");
        assert!(
            restarted.elapsed() < Duration::from_secs(5),
            "{:?}",
            restarted.elapsed()
        );
        // The agent comes back (it keeps its threads and reconnects).
        let end = Instant::now() + Duration::from_secs(10);
        while s.cluster.agents().map_or(true, |a| a.is_empty()) {
            assert!(Instant::now() < end, "the agent did not come back");
            std::thread::sleep(Duration::from_millis(20));
        }
        let pool = s.cluster.pool().build().unwrap();
        assert_eq!(pool.map(square, [5u64]).unwrap(), [25]);
        drop(s.agents);
    });
}

#[test]
fn a_vanished_server_is_an_error_within_the_pools_timeout() {
    deadline(LIMIT, || {
        let Some(mut s) = setup(1, 1) else { return };
        let pool = s
            .cluster
            .pool()
            .server_timeout(Duration::from_millis(500))
            .build()
            .unwrap();
        let h = pool.submit(nap, 30_000);
        std::thread::sleep(Duration::from_millis(200));
        s.server.kill().unwrap();
        let killed = Instant::now();
        let e = h.get().unwrap_err();
        assert!(matches!(e, TaskError::Backend(_)), "{e:?}");
        assert!(
            killed.elapsed() < Duration::from_secs(3),
            "{:?}",
            killed.elapsed()
        );
        // A new submission fails at once, typed.
        let e = pool.submit(square, 1).get().unwrap_err();
        assert!(matches!(e, TaskError::Backend(_)), "{e:?}");
        drop(s.agents);
    });
}

fn doomed_producer(url: String) {
    let cluster = Cluster::connect(&url).unwrap();
    let pool = cluster
        .pool()
        .producer_ttl(Duration::from_millis(600))
        .build()
        .unwrap();
    let _h = pool.submit(nap, 60_000);
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn a_dead_producers_work_stops_and_its_keys_expire() {
    deadline(LIMIT, || {
        let Some(s) = setup(1, 1) else { return };
        let producer = Process::spawn(doomed_producer, s.server.url()).unwrap();
        let mut conn = raw(&s.server);
        // Wait until the agent runs its task.
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let pending: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
                .arg("mp:{default}:tasks")
                .arg("workers")
                .arg("-")
                .arg("+")
                .arg(10)
                .query(&mut conn)
                .unwrap_or_default();
            if !pending.is_empty() {
                break;
            }
            assert!(Instant::now() < end, "the producer's task never started");
            std::thread::sleep(Duration::from_millis(10));
        }
        producer.kill().unwrap();
        let _ = producer.join();
        // The agent's only slot frees once the producer's key expires.
        let killed = Instant::now();
        let pool = s.cluster.pool().build().unwrap();
        assert_eq!(pool.apply(square, 6).unwrap(), 36);
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "{:?}",
            killed.elapsed()
        );
        drop(pool);
        // Nothing of the dead pool is left on the server.
        let keys = || -> Vec<String> {
            redis::cmd("KEYS")
                .arg("mp:{default}:pool:*")
                .query(&mut conn)
                .unwrap()
        };
        let mut keys = keys;
        assert!(
            common::eventually(Duration::from_secs(5), || keys().is_empty()),
            "{:?}",
            keys()
        );
        drop(s.agents);
    });
}

/// Naps, then says how often its chunk was handed out and when it ended.
#[multiproc::task]
fn stamped_nap(ms: u64) -> (u64, u128) {
    std::thread::sleep(Duration::from_millis(ms));
    let deliveries = multiproc::cluster::current_task().map_or(0, |t| t.deliveries);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    (deliveries, now)
}

#[test]
fn a_dead_agents_chunks_do_not_wait_behind_the_backlog() {
    deadline(LIMIT, || {
        let Some(mut s) = setup(2, 1) else { return };
        let pool = s.cluster.pool().build().unwrap();
        // 100 chunks of 80 ms: about 4 s of work per surviving agent.
        let handle = pool
            .task(stamped_nap)
            .chunksize(16)
            .map_async(vec![5u64; 1_600]);
        std::thread::sleep(Duration::from_millis(400));
        s.agents[0].kill().unwrap();
        let killed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis();
        let out = handle.get().unwrap();
        let end = out.iter().map(|(_, t)| *t).max().unwrap();
        let retaken: Vec<u128> = out
            .iter()
            .filter(|(d, _)| *d > 1)
            .map(|(_, t)| *t)
            .collect();
        assert!(!retaken.is_empty(), "the killed agent held nothing");
        let last_retaken = retaken.into_iter().max().unwrap();
        // Taken over soon after min_idle (250 ms), not at the end of the map.
        assert!(
            last_retaken - killed < 2_500,
            "the dead agent's chunks ended {} ms after the kill, the map {} ms after",
            last_retaken - killed,
            end - killed
        );
        assert!(end - last_retaken > 500, "the map ended too soon to tell");
    });
}
