//! Ports of CPython's `_TestContainers`, `_TestRemoteManager` and
//! `_TestManagerRestart` (`Lib/test/_test_multiprocessing.py`) to the Rust
//! API: what Python asserts, adapted to typed proxies (`l[:]` is
//! `snapshot()`, `l[a:b]` is `slice(a..b)`, `d.copy()` is `items()`,
//! `Namespace` attributes are `get`/`set`/`remove`). A list or dict holding
//! proxies is a `ListProxy<ListProxy<T>>` or `DictProxy<K, DictProxy<..>>`:
//! one item type per container, so the parts of the tests that mix types
//! in one list (`a.append('hello')` on a list of ints, `[[88, 99], l]`, a
//! list that holds itself) are adapted or left out. Iterator proxies
//! (`test_list_iter`, `test_dict_iter`) have no equivalent: `snapshot`,
//! `keys` and `items` copy. `_TestMyManager` is ported by
//! `manager_conformance.rs` (`registered_user_types_are_served_under_every_start_method`):
//! a user type's methods are its `Call` enum, so there is nothing like
//! `exposed` to check.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{LIMIT, deadline};
use multiproc::{DictProxy, ListProxy, Manager, ProxyError, QueueProxy, StartMethod};

fn each_manager(test: fn(&str, &Manager)) {
    deadline(LIMIT, move || {
        for m in StartMethod::ALL {
            let manager = Manager::builder().start_method(m).start().unwrap();
            test(&format!("{m}"), &manager);
            manager.shutdown().unwrap();
        }
        let tcp = Manager::builder()
            .tcp("127.0.0.1:0".parse().unwrap(), b"port key")
            .start()
            .unwrap();
        test("tcp", &tcp);
        tcp.shutdown().unwrap();
    });
}

fn list_of(m: &Manager, items: impl IntoIterator<Item = i64>) -> ListProxy<i64> {
    let l = m.list().unwrap();
    l.extend(items).unwrap();
    l
}

/// `test_list`.
#[test]
fn list() {
    each_manager(|t, m| {
        let a = list_of(m, 0..10);
        assert_eq!(a.snapshot().unwrap(), (0..10).collect::<Vec<_>>(), "{t}");

        let b = m.list::<i64>().unwrap();
        assert_eq!(b.snapshot().unwrap(), []);

        b.extend(0..5).unwrap();
        assert_eq!(b.snapshot().unwrap(), [0, 1, 2, 3, 4]);
        assert_eq!(b.get(2).unwrap(), Some(2));
        // A slice past the end is clamped, as in Python.
        assert_eq!(b.slice(2..10).unwrap(), [2, 3, 4], "{t}");

        // `b *= 2`
        b.extend(b.snapshot().unwrap()).unwrap();
        assert_eq!(b.snapshot().unwrap(), [0, 1, 2, 3, 4, 0, 1, 2, 3, 4]);
        // `b + [5, 6]`: a new list; `b` is unchanged.
        let mut sum = b.snapshot().unwrap();
        sum.extend([5, 6]);
        assert_eq!(sum, [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5, 6]);
        assert_eq!(b.len().unwrap(), 10);

        assert_eq!(a.snapshot().unwrap(), (0..10).collect::<Vec<_>>());

        let e = m.list::<ListProxy<i64>>().unwrap();
        e.extend([a.clone(), b.clone()]).unwrap();
        let inner: Vec<Vec<i64>> = e
            .snapshot()
            .unwrap()
            .iter()
            .map(|l| l.snapshot().unwrap())
            .collect();
        assert_eq!(
            inner,
            [
                vec![0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
                vec![0, 1, 2, 3, 4, 0, 1, 2, 3, 4]
            ],
            "{t}"
        );

        let f = m.list::<ListProxy<i64>>().unwrap();
        f.push(a.clone()).unwrap();
        // Python appends 'hello'; this list holds integers.
        a.push(10).unwrap();
        assert_eq!(
            f.get(0).unwrap().unwrap().snapshot().unwrap(),
            [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
            "{t}"
        );
    });
}

/// `test_list_proxy_in_list` (without its list that holds itself: no
/// Rust type is a list of itself).
#[test]
fn list_proxy_in_list() {
    each_manager(|t, m| {
        let a = m.list::<ListProxy<i64>>().unwrap();
        a.extend((0..3).map(|_| list_of(m, 0..3))).unwrap();
        let inner = |i: usize| a.get(i).unwrap().unwrap();
        for i in 0..3 {
            assert_eq!(inner(i).snapshot().unwrap(), [0, 1, 2], "{t}");
        }

        // `a[0][-1] = 55`
        inner(0).set(2, 55).unwrap();
        assert_eq!(inner(0).snapshot().unwrap(), [0, 1, 55], "{t}");
        for i in 1..3 {
            assert_eq!(inner(i).snapshot().unwrap(), [0, 1, 2], "{t}");
        }

        assert_eq!(inner(1).pop().unwrap(), Some(2));
        assert_eq!(inner(1).len().unwrap(), 2);
        for i in [0, 2] {
            assert_eq!(inner(i).len().unwrap(), 3, "{t}");
        }
    });
}

/// `test_dict`.
#[test]
fn dict() {
    each_manager(|t, m| {
        let d = m.dict::<i64, char>().unwrap();
        let indices: Vec<i64> = (65..70).collect();
        for &i in &indices {
            d.insert(i, char::from(i as u8)).unwrap();
        }
        let copy: HashMap<i64, char> = d.items().unwrap().into_iter().collect();
        let expected: HashMap<i64, char> =
            indices.iter().map(|&i| (i, char::from(i as u8))).collect();
        assert_eq!(copy, expected, "{t}");
        let mut keys = d.keys().unwrap();
        keys.sort();
        assert_eq!(keys, indices);
        let mut values = d.values().unwrap();
        values.sort();
        assert_eq!(values, ['A', 'B', 'C', 'D', 'E']);
        let mut items = d.items().unwrap();
        items.sort();
        assert_eq!(
            items,
            expected
                .into_iter()
                .collect::<std::collections::BTreeMap<_, _>>()
                .into_iter()
                .collect::<Vec<_>>()
        );
    });
}

/// `test_dict_iter`, without the iterator: keys come in insertion order,
/// as a Python dict's do (also when that order is not sorted).
#[test]
fn dict_keys_in_insertion_order() {
    each_manager(|t, m| {
        let d = m.dict::<i64, char>().unwrap();
        let indices: Vec<i64> = (65..70).collect();
        for &i in &indices {
            d.insert(i, char::from(i as u8)).unwrap();
        }
        assert_eq!(d.keys().unwrap(), indices, "{t}");
        let d = m.dict::<i64, ()>().unwrap();
        for i in [3, 1, 2, 9, 0] {
            d.insert(i, ()).unwrap();
        }
        d.remove(&1).unwrap();
        d.insert(1, ()).unwrap();
        assert_eq!(d.keys().unwrap(), [3, 2, 9, 0, 1], "{t}");
        d.clear().unwrap();
        assert!(d.keys().unwrap().is_empty());
    });
}

type Pets = DictProxy<String, i64>;

fn dict_of(m: &Manager, items: &[(&str, i64)]) -> Pets {
    let d = m.dict().unwrap();
    d.update(items.iter().map(|&(k, v)| (k.to_string(), v)))
        .unwrap();
    d
}

/// `test_dict_proxy_nested` (without `outer = [[88, 99], l]`, which mixes
/// types in one list).
#[test]
fn dict_proxy_nested() {
    each_manager(|t, m| {
        let pets = dict_of(m, &[("ferrets", 2), ("hamsters", 4)]);
        let supplies = dict_of(m, &[("water", 10), ("feed", 3)]);
        let d = m.dict::<String, Pets>().unwrap();
        d.insert("pets".into(), pets.clone()).unwrap();
        d.insert("supplies".into(), supplies.clone()).unwrap();
        let at = |k: &str| d.get(k).unwrap().unwrap();

        assert_eq!(supplies.get("water").unwrap(), Some(10), "{t}");
        assert_eq!(at("supplies").get("water").unwrap(), Some(10), "{t}");

        at("supplies").insert("blankets".into(), 5).unwrap();
        assert_eq!(supplies.get("blankets").unwrap(), Some(5), "{t}");
        assert_eq!(at("supplies").get("blankets").unwrap(), Some(5));

        at("supplies").insert("water".into(), 7).unwrap();
        assert_eq!(supplies.get("water").unwrap(), Some(7), "{t}");
        assert_eq!(at("supplies").get("water").unwrap(), Some(7));

        drop(pets);
        drop(supplies);
        assert_eq!(at("pets").get("ferrets").unwrap(), Some(2), "{t}");
        at("supplies").insert("blankets".into(), 11).unwrap();
        assert_eq!(at("supplies").get("blankets").unwrap(), Some(11), "{t}");

        let pets = at("pets");
        let supplies = at("supplies");
        supplies.insert("water".into(), 7).unwrap();
        assert_eq!(supplies.get("water").unwrap(), Some(7));
        assert_eq!(at("supplies").get("water").unwrap(), Some(7));

        d.clear().unwrap();
        assert_eq!(d.len().unwrap(), 0);
        assert_eq!(supplies.get("water").unwrap(), Some(7), "{t}");
        assert_eq!(pets.get("hamsters").unwrap(), Some(4), "{t}");

        let l = m.list::<Pets>().unwrap();
        l.extend([pets.clone(), supplies.clone()]).unwrap();
        l.get(0)
            .unwrap()
            .unwrap()
            .insert("marmots".into(), 1)
            .unwrap();
        assert_eq!(pets.get("marmots").unwrap(), Some(1), "{t}");
        assert_eq!(l.get(0).unwrap().unwrap().get("marmots").unwrap(), Some(1));

        drop(pets);
        drop(supplies);
        assert_eq!(
            l.get(0).unwrap().unwrap().get("marmots").unwrap(),
            Some(1),
            "{t}"
        );
        assert_eq!(
            l.get(1).unwrap().unwrap().get("feed").unwrap(),
            Some(3),
            "{t}"
        );
    });
}

/// `test_nested_queue`.
#[test]
fn nested_queue() {
    each_manager(|t, m| {
        let a = m.list::<QueueProxy<i64>>().unwrap();
        a.push(m.queue().unwrap()).unwrap();
        a.get(0).unwrap().unwrap().put(123).unwrap();
        assert_eq!(a.get(0).unwrap().unwrap().get().unwrap(), 123, "{t}");
        let b = m.dict::<i64, QueueProxy<i64>>().unwrap();
        b.insert(0, m.queue().unwrap()).unwrap();
        b.get(&0).unwrap().unwrap().put(456).unwrap();
        assert_eq!(b.get(&0).unwrap().unwrap().get().unwrap(), 456, "{t}");
    });
}

/// `test_namespace`. Python keeps a name that starts with `_` on the local
/// proxy, not in the manager; here every name is the manager's (see the
/// README).
#[test]
fn namespace() {
    each_manager(|t, m| {
        let n = m.namespace().unwrap();
        n.set("name", "Bob").unwrap();
        n.set("job", "Builder").unwrap();
        n.set("_hidden", "hidden").unwrap();
        let mut names = n.names().unwrap();
        names.sort();
        assert_eq!(names, ["_hidden", "job", "name"], "{t}");
        assert!(n.remove("_hidden").unwrap());
        assert_eq!(
            (
                n.get::<String>("name").unwrap(),
                n.get::<String>("job").unwrap()
            ),
            (Some("Bob".into()), Some("Builder".into())),
            "{t}"
        );
        assert!(n.remove("job").unwrap());
        assert_eq!(n.names().unwrap(), ["name"], "{t}");
        assert_eq!(n.get::<String>("name").unwrap(), Some("Bob".into()));
        assert_eq!(n.get::<String>("job").unwrap(), None);
        assert!(!n.remove("job").unwrap());
    });
}

/// `_TestRemoteManager.values`: a `str`, `None`, `True`, a float, two
/// non-ASCII strings and non-UTF-8 bytes.
type Values = (
    String,
    Option<()>,
    bool,
    f64,
    String,
    String,
    serde_bytes::ByteBuf,
);

fn values() -> Values {
    (
        "hello world".into(),
        None,
        true,
        2.25,
        "hall\u{e5} v\u{e4}rlden".into(),
        "\u{43f}\u{440}\u{438}\u{432}\u{456}\u{442} \u{441}\u{432}\u{456}\u{442}".into(),
        serde_bytes::ByteBuf::from(b"hall\xe5 v\xe4rlden".to_vec()),
    )
}

/// Something a queue cannot carry (Python's `time.sleep`).
#[derive(Debug)]
struct Unencodable;

impl serde::Serialize for Unencodable {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("a function cannot be sent"))
    }
}

impl<'de> serde::Deserialize<'de> for Unencodable {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Err(serde::de::Error::custom("never sent"))
    }
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
enum Message {
    Values(Values),
    Function(Unencodable),
}

/// `_TestRemoteManager._putter`: a client that connects by address and
/// key alone (proving it can), then puts into the queue it was given.
fn putter((address, authkey, queue): (String, Vec<u8>, QueueProxy<Message>)) {
    let manager = Manager::connect(&address.parse().unwrap(), &authkey).unwrap();
    drop(manager.list::<u8>().unwrap());
    queue.put(Message::Values(values())).unwrap();
}

/// `test_remote`: a TCP manager with a random key, a child client.
#[test]
fn remote() {
    deadline(LIMIT, || {
        let mut authkey = [0u8; 32];
        getrandom::fill(&mut authkey).unwrap();
        let manager = Manager::builder()
            .tcp("127.0.0.1:0".parse().unwrap(), &authkey)
            .start()
            .unwrap();
        let manager2 = Manager::connect(manager.address(), &authkey).unwrap();
        let queue = manager2.queue::<Message>().unwrap();
        let p = multiproc::Process::builder()
            .daemon(true)
            .spawn(
                putter,
                (
                    manager.address().to_string(),
                    authkey.to_vec(),
                    queue.clone(),
                ),
            )
            .unwrap();
        match queue.get().unwrap() {
            Message::Values(v) => assert_eq!(v, values()),
            other => panic!("{other:?}"),
        }
        p.join().unwrap();
        let e = queue.put(Message::Function(Unencodable)).unwrap_err();
        assert!(matches!(e.reason, ProxyError::Encode(_)), "{e:?}");
        // A wrong key is refused.
        assert!(Manager::connect(manager.address(), b"wrong").is_err());
        drop(queue);
        drop(manager2);
        manager.shutdown().unwrap();
    });
}

/// `_TestManagerRestart._putter`.
fn restart_putter(queue: QueueProxy<String>) {
    queue.put("hello world".into()).unwrap();
}

/// `test_rapid_restart`: a manager started again at the address another
/// one just left.
#[test]
fn rapid_restart() {
    deadline(LIMIT, || {
        let mut authkey = [0u8; 32];
        getrandom::fill(&mut authkey).unwrap();
        let manager = Manager::builder()
            .tcp("127.0.0.1:0".parse().unwrap(), &authkey)
            .start()
            .unwrap();
        let addr = manager.address().clone();
        let multiproc::Address::Tcp(socket) = addr else {
            panic!("not TCP: {addr}");
        };
        let queue = manager.queue::<String>().unwrap();
        let p = multiproc::Process::spawn(restart_putter, queue.clone()).unwrap();
        p.join().unwrap();
        assert_eq!(queue.get().unwrap(), "hello world");
        drop(queue);
        manager.shutdown().unwrap();

        let manager = Manager::builder()
            .tcp(socket, &authkey)
            .start()
            .or_else(|e| {
                // Python retries once after a second if the old socket
                // lingers.
                eprintln!("first restart failed ({e}); retrying");
                std::thread::sleep(Duration::from_secs(1));
                Manager::builder().tcp(socket, &authkey).start()
            })
            .unwrap();
        assert_eq!(manager.address(), &addr);
        let queue = manager.queue::<String>().unwrap();
        queue.put("again".into()).unwrap();
        assert_eq!(queue.get().unwrap(), "again");
        drop(queue);
        manager.shutdown().unwrap();
    });
}
