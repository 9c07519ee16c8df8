//! The cluster manager's named dict, list, namespace, value, semaphore,
//! event and barrier: their methods, races from several processes, and
//! garbage or wrong types in their keys.
#![cfg(feature = "cluster")]

mod common;

use std::thread;
use std::time::Duration;

use common::{LIMIT, deadline, redis_server};
use multiproc::Process;
use multiproc::cluster::{Cluster, ClusterError};

fn raw(url: &str) -> redis::Connection {
    redis::Client::open(url)
        .unwrap()
        .get_connection_with_timeout(Duration::from_secs(5))
        .unwrap()
}

fn set_raw(url: &str, cmd: &[&str]) {
    let mut c = redis::cmd(cmd[0]);
    for a in &cmd[1..] {
        c.arg(*a);
    }
    c.query::<()>(&mut raw(url)).unwrap();
}

#[test]
fn dict_methods() {
    deadline(LIMIT, || {
        let Some(server) = redis_server() else { return };
        let m = Cluster::connect(&server.url()).unwrap().manager();
        let d = m.dict::<String, Vec<u32>>("d").unwrap();
        assert!(d.is_empty().unwrap());
        assert_eq!(d.insert("a".into(), vec![1]).unwrap(), None);
        assert_eq!(d.insert("a".into(), vec![2]).unwrap(), Some(vec![1]));
        d.update([("b".to_string(), vec![]), ("c".to_string(), vec![3, 4])])
            .unwrap();
        d.update([]).unwrap();
        assert_eq!(d.len().unwrap(), 3);
        assert_eq!(d.get("c").unwrap(), Some(vec![3, 4]));
        assert_eq!(d.get("zz").unwrap(), None);
        assert_eq!(
            d.get_many(["a", "zz", "b"]).unwrap(),
            [Some(vec![2]), None, Some(vec![])]
        );
        assert_eq!(d.get_many::<str>([]).unwrap(), []);
        assert!(d.contains("b").unwrap());
        let mut keys = d.keys().unwrap();
        keys.sort();
        assert_eq!(keys, ["a", "b", "c"]);
        let mut items = d.items().unwrap();
        items.sort();
        assert_eq!(items[2], ("c".to_string(), vec![3, 4]));
        assert_eq!(d.values().unwrap().len(), 3);
        assert_eq!(d.remove("b").unwrap(), Some(vec![]));
        assert_eq!(d.remove("b").unwrap(), None);
        assert_eq!(d.pop("b", vec![9]).unwrap(), vec![9]);
        assert!(d.discard("c").unwrap());
        assert!(!d.discard("c").unwrap());
        assert_eq!(d.setdefault("s".into(), vec![5]).unwrap(), vec![5]);
        assert_eq!(d.setdefault("s".into(), vec![6]).unwrap(), vec![5]);
        // Compare-and-set on encoded bytes; None means absent.
        assert!(!d.compare_and_set("s", Some(&vec![6]), vec![7]).unwrap());
        assert!(d.compare_and_set("s", Some(&vec![5]), vec![7]).unwrap());
        assert!(!d.compare_and_set("s", None, vec![8]).unwrap());
        assert!(d.compare_and_set("new", None, vec![8]).unwrap());
        assert_eq!(
            d.update_with("s".into(), |v| {
                let mut v = v.unwrap();
                v.push(0);
                v
            })
            .unwrap(),
            vec![7, 0]
        );
        // A clone and another handle by name see the same entries.
        let same = m.dict::<String, Vec<u32>>("d").unwrap();
        assert_eq!(same.get("s").unwrap(), Some(vec![7, 0]));
        assert_eq!(d.clone().len().unwrap(), 3);
        d.clear().unwrap();
        assert!(same.is_empty().unwrap());
        // Python's popitem: some entry, until none is left.
        assert_eq!(d.pop_item().unwrap(), None);
        d.update([("x".to_string(), vec![1]), ("y".to_string(), vec![2])])
            .unwrap();
        let mut popped = vec![
            d.pop_item().unwrap().unwrap(),
            d.pop_item().unwrap().unwrap(),
        ];
        popped.sort();
        assert_eq!(
            popped,
            [("x".to_string(), vec![1]), ("y".to_string(), vec![2])]
        );
        assert_eq!(d.pop_item().unwrap(), None);
        assert!(d.is_empty().unwrap());
        assert!(matches!(
            m.dict::<u8, u8>("no spaces"),
            Err(ClusterError::InvalidName { .. })
        ));
    });
}

/// Child: adds 1 to key "n" of dict `name` `times` times with
/// `update_with` (a compare-and-set loop), and claims key "winner" with
/// one compare-and-set; whether it won.
fn race((url, name, me, times): (String, String, u32, u32)) -> bool {
    let d = Cluster::connect(&url)
        .unwrap()
        .manager()
        .dict::<String, u32>(&name)
        .unwrap();
    for _ in 0..times {
        d.update_with("n".into(), |v| v.unwrap_or(0) + 1).unwrap();
    }
    d.compare_and_set("winner", None, me).unwrap()
}

/// Child: adds to value `name` with fetch_add.
fn add((url, name, times): (String, String, u32)) {
    let v = Cluster::connect(&url)
        .unwrap()
        .manager()
        .value(&name, 0i64)
        .unwrap();
    for _ in 0..times {
        v.fetch_add(3).unwrap();
        v.fetch_sub(1).unwrap();
    }
}

#[test]
fn compare_and_set_races_between_processes_lose_nothing() {
    deadline(LIMIT, || {
        let Some(server) = redis_server() else { return };
        let m = Cluster::connect(&server.url()).unwrap().manager();
        let children: Vec<_> = (1..=4)
            .map(|me| Process::spawn(race, (server.url(), "race".to_string(), me, 40)).unwrap())
            .collect();
        let adders: Vec<_> = (0..3)
            .map(|_| Process::spawn(add, (server.url(), "total".to_string(), 30)).unwrap())
            .collect();
        let won: Vec<bool> = children.into_iter().map(|c| c.join().unwrap()).collect();
        for a in adders {
            a.join().unwrap();
        }
        let d = m.dict::<String, u32>("race").unwrap();
        assert_eq!(d.get("n").unwrap(), Some(160));
        assert_eq!(won.iter().filter(|w| **w).count(), 1, "{won:?}");
        let winner = d.get("winner").unwrap().unwrap();
        assert!(won[winner as usize - 1]);
        assert_eq!(m.value("total", 0i64).unwrap().get().unwrap(), 180);
    });
}

#[test]
fn list_methods() {
    deadline(LIMIT, || {
        let Some(server) = redis_server() else { return };
        let m = Cluster::connect(&server.url()).unwrap().manager();
        let l = m.list::<String>("l").unwrap();
        assert!(l.is_empty().unwrap());
        assert_eq!(l.pop().unwrap(), None);
        l.push("a".into()).unwrap();
        l.extend(["b", "c", "d"].map(String::from)).unwrap();
        l.extend([]).unwrap();
        assert_eq!(l.len().unwrap(), 4);
        assert_eq!(l.get(1).unwrap().as_deref(), Some("b"));
        assert_eq!(l.get(9).unwrap(), None);
        assert_eq!(l.set(1, "B".into()).unwrap(), "b");
        assert!(matches!(
            l.set(4, "x".into()),
            Err(ClusterError::IndexOutOfRange { index: 4, len: 4 })
        ));
        l.insert(0, "first".into()).unwrap();
        l.insert(2, "mid".into()).unwrap();
        l.insert(6, "last".into()).unwrap();
        assert!(matches!(
            l.insert(8, "x".into()),
            Err(ClusterError::IndexOutOfRange { index: 8, len: 7 })
        ));
        assert_eq!(
            l.snapshot().unwrap(),
            ["first", "a", "mid", "B", "c", "d", "last"]
        );
        assert_eq!(l.slice(1..3).unwrap(), ["a", "mid"]);
        assert_eq!(l.slice(5..).unwrap(), ["d", "last"]);
        assert_eq!(l.slice(..=1).unwrap(), ["first", "a"]);
        assert_eq!(l.slice(3..3).unwrap(), Vec::<String>::new());
        assert_eq!(l.slice(6..100).unwrap(), ["last"]);
        assert_eq!(l.slice(50..).unwrap(), Vec::<String>::new());
        assert_eq!(l.remove(2).unwrap(), "mid");
        assert_eq!(l.remove(0).unwrap(), "first");
        assert_eq!(l.remove(4).unwrap(), "last");
        assert!(matches!(
            l.remove(4),
            Err(ClusterError::IndexOutOfRange { index: 4, len: 4 })
        ));
        assert_eq!(l.pop().unwrap().as_deref(), Some("d"));
        assert_eq!(l.snapshot().unwrap(), ["a", "B", "c"]);
        // A long list moves through the middle in one step.
        l.extend((0..3000).map(|i| i.to_string())).unwrap();
        l.insert(1, "x".into()).unwrap();
        assert_eq!(l.len().unwrap(), 3004);
        assert_eq!(l.get(3003).unwrap().as_deref(), Some("2999"));
        assert_eq!(l.remove(1).unwrap(), "x");
        assert_eq!(l.get(3002).unwrap().as_deref(), Some("2999"));
        l.clear().unwrap();
        assert_eq!(l.len().unwrap(), 0);
        // Python's count, index, reverse and sort.
        l.extend(["b", "a", "c", "a"].map(String::from)).unwrap();
        assert_eq!(l.count(&"a".into()).unwrap(), 2);
        assert_eq!(l.count(&"zz".into()).unwrap(), 0);
        assert_eq!(l.index(&"c".into()).unwrap(), Some(2));
        assert_eq!(l.index(&"a".into()).unwrap(), Some(1));
        assert_eq!(l.index(&"zz".into()).unwrap(), None);
        l.reverse().unwrap();
        assert_eq!(l.snapshot().unwrap(), ["a", "c", "a", "b"]);
        l.sort().unwrap();
        assert_eq!(l.snapshot().unwrap(), ["a", "a", "b", "c"]);
        l.clear().unwrap();
        l.reverse().unwrap();
        l.sort().unwrap();
        assert!(l.is_empty().unwrap());
        // Long lists go through the server's scripts in chunks.
        let n = 5000u32;
        let numbers = m.list::<u32>("numbers").unwrap();
        numbers.extend((0..n).rev()).unwrap();
        numbers.sort().unwrap();
        assert_eq!(numbers.snapshot().unwrap(), (0..n).collect::<Vec<_>>());
        numbers.reverse().unwrap();
        assert_eq!(numbers.get(0).unwrap(), Some(n - 1));
        assert_eq!(numbers.index(&0).unwrap(), Some(n as usize - 1));
        numbers.clear().unwrap();
    });
}

/// A sort writes back only a list that did not change meanwhile: items
/// pushed by another client while the sorts run are all there after.
#[test]
fn sort_never_loses_a_concurrent_push() {
    deadline(LIMIT, || {
        let Some(server) = redis_server() else { return };
        let m = Cluster::connect(&server.url()).unwrap().manager();
        let l = m.list::<u32>("sorted").unwrap();
        l.extend((0..200).rev()).unwrap();
        let url = server.url();
        let pusher = thread::spawn(move || {
            let m = Cluster::connect(&url).unwrap().manager();
            let l = m.list::<u32>("sorted").unwrap();
            for i in 1000..1300 {
                l.push(i).unwrap();
            }
        });
        for _ in 0..30 {
            l.sort().unwrap();
        }
        pusher.join().unwrap();
        l.sort().unwrap();
        let want: Vec<u32> = (0..200).chain(1000..1300).collect();
        assert_eq!(l.snapshot().unwrap(), want);
    });
}

#[test]
fn namespace_and_value_methods() {
    deadline(LIMIT, || {
        let Some(server) = redis_server() else { return };
        let m = Cluster::connect(&server.url()).unwrap().manager();
        let ns = m.namespace("settings").unwrap();
        ns.set("x", &10u32).unwrap();
        ns.set("name", "job").unwrap();
        assert_eq!(ns.get::<u32>("x").unwrap(), Some(10));
        assert_eq!(ns.get::<String>("name").unwrap().as_deref(), Some("job"));
        assert_eq!(ns.get::<u32>("nope").unwrap(), None);
        assert_eq!(ns.names().unwrap(), ["name", "x"]);
        assert!(ns.remove("x").unwrap());
        assert!(!ns.remove("x").unwrap());
        // A value of any type, with compare-and-set and update.
        let v = m.value("v", vec![1u8]).unwrap();
        assert_eq!(v.get().unwrap(), [1]);
        // An existing value keeps its own, whatever initial a handle gives.
        let same = m.value("v", vec![9u8]).unwrap();
        assert_eq!(same.get().unwrap(), [1]);
        assert_eq!(v.set(vec![2]).unwrap(), [1]);
        assert!(!v.compare_and_set(&vec![1], vec![3]).unwrap());
        assert!(v.compare_and_set(&vec![2], vec![3]).unwrap());
        assert_eq!(
            v.update(|mut x| {
                x.push(4);
                x
            })
            .unwrap(),
            [3, 4]
        );
        // Floats and wrapping integers.
        let f = m.value("f", 0.5f64).unwrap();
        assert_eq!(f.fetch_add(0.25).unwrap(), 0.5);
        assert_eq!(f.get().unwrap(), 0.75);
        let b = m.value("b", 250u8).unwrap();
        assert_eq!(b.fetch_add(10).unwrap(), 250);
        assert_eq!(b.get().unwrap(), 4);
        // A deleted value reads as the handle's initial one again.
        same.delete().unwrap();
        assert_eq!(same.get().unwrap(), [9]);
        assert_eq!(v.get().unwrap(), [1]);
    });
}

/// Child: waits on event `name`, then arrives at barrier `name` of 3.
fn wait_then_meet((url, name): (String, String)) -> usize {
    let m = Cluster::connect(&url).unwrap().manager();
    assert!(
        m.event(&name)
            .unwrap()
            .wait_timeout(Duration::from_secs(20))
            .unwrap()
    );
    m.barrier(&name, 3)
        .unwrap()
        .wait_timeout(Duration::from_secs(20))
        .unwrap()
}

#[test]
fn events_and_barriers_across_processes() {
    deadline(LIMIT, || {
        let Some(server) = redis_server() else { return };
        let m = Cluster::connect(&server.url()).unwrap().manager();
        let ev = m.event("go").unwrap();
        assert!(!ev.is_set().unwrap());
        assert!(!ev.wait_timeout(Duration::from_millis(50)).unwrap());
        let children: Vec<_> = (0..2)
            .map(|_| Process::spawn(wait_then_meet, (server.url(), "go".to_string())).unwrap())
            .collect();
        let barrier = m.barrier("go", 3).unwrap();
        assert_eq!(barrier.parties(), 3);
        thread::sleep(Duration::from_millis(100));
        ev.set().unwrap();
        assert!(ev.is_set().unwrap());
        let mine = barrier.wait_timeout(Duration::from_secs(20)).unwrap();
        let mut indices: Vec<usize> = children.into_iter().map(|c| c.join().unwrap()).collect();
        indices.push(mine);
        indices.sort();
        assert_eq!(indices, [0, 1, 2]);
        ev.clear().unwrap();
        assert!(!ev.is_set().unwrap());
        // The barrier is reusable; a wait that times out breaks it.
        assert!(matches!(
            barrier.wait_timeout(Duration::from_millis(100)),
            Err(ClusterError::BrokenBarrier)
        ));
        assert!(barrier.is_broken().unwrap());
        assert!(matches!(barrier.wait(), Err(ClusterError::BrokenBarrier)));
        barrier.reset().unwrap();
        assert!(!barrier.is_broken().unwrap());
        let b2 = barrier.clone();
        let waiter = thread::spawn(move || b2.wait_timeout(Duration::from_secs(20)));
        while barrier.n_waiting().unwrap() == 0 {
            thread::sleep(Duration::from_millis(5));
        }
        barrier.abort().unwrap();
        assert!(matches!(
            waiter.join().unwrap(),
            Err(ClusterError::BrokenBarrier)
        ));
        barrier.reset().unwrap();
        assert!(matches!(m.barrier("go", 4), Err(ClusterError::Mismatch(_))));
        // A barrier lost under a waiter (deleted, or a server restart)
        // breaks it: never a false pass.
        let b3 = barrier.clone();
        let waiter = thread::spawn(move || b3.wait_timeout(Duration::from_secs(20)));
        while barrier.n_waiting().unwrap() == 0 {
            thread::sleep(Duration::from_millis(5));
        }
        barrier.delete().unwrap();
        assert!(matches!(
            waiter.join().unwrap(),
            Err(ClusterError::BrokenBarrier)
        ));
        let one = m.barrier("one", 1).unwrap();
        assert_eq!(one.wait().unwrap(), 0);
        assert!(matches!(
            m.barrier("zero", 0),
            Err(ClusterError::Mismatch(_))
        ));
    });
}

/// Child: takes a unit of semaphore `name` (of 1), holds it 200 ms.
fn hold_unit((url, name): (String, String)) -> bool {
    let s = Cluster::connect(&url)
        .unwrap()
        .manager()
        .semaphore(&name, 1)
        .unwrap();
    if !s.acquire_timeout(Duration::from_secs(20)).unwrap() {
        return false;
    }
    thread::sleep(Duration::from_millis(200));
    s.release().unwrap();
    true
}

#[test]
fn semaphores_count_units_across_processes() {
    deadline(LIMIT, || {
        let Some(server) = redis_server() else { return };
        let m = Cluster::connect(&server.url()).unwrap().manager();
        let s = m.bounded_semaphore("slots", 2).unwrap();
        assert_eq!(s.value().unwrap(), 2);
        s.acquire().unwrap();
        assert!(s.try_acquire().unwrap());
        assert!(!s.try_acquire().unwrap());
        assert!(!s.acquire_timeout(Duration::from_millis(50)).unwrap());
        s.release().unwrap();
        s.release().unwrap();
        assert!(matches!(s.release(), Err(ClusterError::OverReleased(_))));
        assert_eq!(s.value().unwrap(), 2);
        // Three processes share one unit; each gets it in turn.
        let one = m.semaphore("one", 1).unwrap();
        let children: Vec<_> = (0..3)
            .map(|_| Process::spawn(hold_unit, (server.url(), "one".to_string())).unwrap())
            .collect();
        for c in children {
            assert!(c.join().unwrap());
        }
        assert_eq!(one.value().unwrap(), 1);
        // A plain semaphore may grow past its start.
        one.release().unwrap();
        assert_eq!(one.value().unwrap(), 2);
    });
}

#[test]
fn garbage_and_wrong_types_are_typed_errors() {
    deadline(LIMIT, || {
        let Some(server) = redis_server() else { return };
        let url = server.url();
        let m = Cluster::connect(&url).unwrap().manager();
        // Undecodable bytes in a dict, a list, a namespace and a value.
        let d = m.dict::<String, u64>("d").unwrap();
        d.insert("ok".into(), 1).unwrap();
        let mut r = raw(&url);
        redis::cmd("HSET")
            .arg("mp:{default}:dict:d")
            .arg(&b"\x03bad"[..])
            .arg(&b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"[..])
            .query::<()>(&mut r)
            .unwrap();
        assert!(matches!(d.get("bad"), Err(ClusterError::Decode(_))));
        assert!(matches!(d.items(), Err(ClusterError::Decode(_))));
        assert!(matches!(d.values(), Err(ClusterError::Decode(_))));
        assert!(matches!(
            d.update_with("bad".into(), |v| v.unwrap_or(0)),
            Err(ClusterError::Decode(_))
        ));
        assert_eq!(d.get("ok").unwrap(), Some(1));
        set_raw(&url, &["RPUSH", "mp:{default}:list:l", "\u{1}"]);
        let l = m.list::<String>("l").unwrap();
        assert!(matches!(l.get(0), Err(ClusterError::Decode(_))));
        assert!(matches!(l.snapshot(), Err(ClusterError::Decode(_))));
        set_raw(&url, &["SET", "mp:{default}:value:v", ""]);
        let v = m.value("v", 5u32).unwrap();
        assert!(matches!(v.get(), Err(ClusterError::Decode(_))));
        assert!(matches!(v.fetch_add(1), Err(ClusterError::Decode(_))));
        // Keys of another type: every object says Corrupted.
        for key in [
            "dict:w",
            "list:w",
            "ns:w",
            "value:w",
            "sem:w",
            "event:w",
            "barrier:w",
        ] {
            set_raw(&url, &["RPUSH", &format!("mp:{{default}}:{key}"), "x"]);
        }
        set_raw(&url, &["SET", "mp:{default}:list:w2", "x"]);
        let corrupted = |r: Result<(), ClusterError>, what: &str| {
            assert!(
                matches!(r, Err(ClusterError::Corrupted(_))),
                "{what}: {r:?}"
            );
        };
        let d = m.dict::<u8, u8>("w").unwrap();
        corrupted(d.get(&1).map(drop), "dict get");
        corrupted(d.insert(1, 1).map(drop), "dict insert");
        corrupted(d.compare_and_set(&1, None, 1).map(drop), "dict cas");
        let l = m.list::<u8>("w2").unwrap();
        corrupted(l.push(1), "list push");
        corrupted(l.insert(0, 1), "list insert");
        corrupted(l.remove(0).map(drop), "list remove");
        let ns = m.namespace("w").unwrap();
        corrupted(ns.set("a", &1u8), "namespace set");
        let v = m.value("w", 1u8).unwrap();
        corrupted(v.get().map(drop), "value get");
        corrupted(v.set(2).map(drop), "value set");
        corrupted(v.compare_and_set(&1, 2).map(drop), "value cas");
        let s = m.semaphore("w", 1).unwrap();
        corrupted(s.try_acquire().map(drop), "semaphore acquire");
        corrupted(s.release(), "semaphore release");
        let e = m.event("w").unwrap();
        corrupted(e.is_set().map(drop), "event is_set");
        // Setting the flag replaces whatever was there.
        e.set().unwrap();
        assert!(e.is_set().unwrap());
        corrupted(m.barrier("w", 2).map(drop), "barrier attach");
        // Fields that do not hold numbers.
        set_raw(&url, &["SET", "mp:{default}:sem:n", "lots"]);
        let s = m.semaphore("n", 1).unwrap();
        corrupted(s.acquire(), "semaphore acquire");
        corrupted(s.value().map(drop), "semaphore value");
        set_raw(&url, &["HSET", "mp:{default}:barrier:n", "parties", "two"]);
        corrupted(m.barrier("n", 2).map(drop), "barrier parties");
        set_raw(&url, &["SET", "mp:{default}:event:n", "yes"]);
        corrupted(m.event("n").unwrap().wait(), "event flag");
    });
}
