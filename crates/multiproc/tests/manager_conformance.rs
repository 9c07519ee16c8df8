//! The manager's objects behave the same under every start method of the
//! server, over the local (shared-memory) path and over TCP, from the
//! parent and from child processes that receive proxies as arguments.

mod common;

use std::time::{Duration, Instant};

use common::{LIMIT, assert_gone, deadline};
use multiproc::{
    Address, BarrierProxy, DictProxy, EventProxy, GetTimeoutError, ListProxy, LockProxy, Manager,
    NamespaceProxy, Process, ProxyError, QueueProxy, RemoteError, SharedObject, StartMethod,
};
use serde::{Deserialize, Serialize};

/// Every way to run a manager: each start method on a Unix socket, and TCP.
fn managers() -> Vec<(String, Manager)> {
    let mut out = Vec::new();
    for m in StartMethod::ALL {
        let manager = Manager::builder().start_method(m).start().unwrap();
        out.push((format!("{m}/unix"), manager));
    }
    let tcp = Manager::builder()
        .tcp("127.0.0.1:0".parse().unwrap(), b"conformance key")
        .start()
        .unwrap();
    out.push(("forkserver/tcp".to_string(), tcp));
    let name = common::temp_path("abstract-manager");
    let abs = Manager::builder()
        .start_method(StartMethod::Spawn)
        .unix_abstract(name.file_name().unwrap().as_encoded_bytes())
        .start()
        .unwrap();
    out.push(("spawn/abstract".to_string(), abs));
    out
}

fn check_dict(d: &DictProxy<String, i64>) {
    assert!(d.is_empty().unwrap());
    assert_eq!(d.insert("a".into(), 1).unwrap(), None);
    assert_eq!(d.insert("b".into(), 2).unwrap(), None);
    assert_eq!(d.insert("a".into(), 10).unwrap(), Some(1));
    assert_eq!(d.get("a").unwrap(), Some(10));
    assert_eq!(d.get("zz").unwrap(), None);
    assert!(d.contains("b").unwrap());
    assert!(!d.contains("c").unwrap());
    d.update([("c".to_string(), 3), ("d".to_string(), 4)])
        .unwrap();
    assert_eq!(d.len().unwrap(), 4);
    assert_eq!(d.keys().unwrap(), ["a", "b", "c", "d"]);
    assert_eq!(d.values().unwrap(), [10, 2, 3, 4]);
    assert_eq!(
        d.get_many(["a", "x", "d"]).unwrap(),
        [Some(10), None, Some(4)]
    );
    assert_eq!(d.remove("b").unwrap(), Some(2));
    assert_eq!(d.remove("b").unwrap(), None);
    assert_eq!(d.pop("c", -1).unwrap(), 3);
    assert_eq!(d.pop("c", -1).unwrap(), -1);
    assert!(d.discard("d").unwrap());
    assert!(!d.discard("d").unwrap());
    assert_eq!(d.setdefault("e".into(), 5).unwrap(), 5);
    assert_eq!(d.setdefault("e".into(), 6).unwrap(), 5);
    assert_eq!(
        d.items().unwrap(),
        [("a".to_string(), 10), ("e".to_string(), 5)]
    );
    // Insertion order survives many removals (the slots are compacted).
    for i in 0..100 {
        d.insert(format!("k{i}"), i).unwrap();
    }
    for i in 0..90 {
        d.remove(&format!("k{i}")).unwrap();
    }
    let keys = d.keys().unwrap();
    assert_eq!(keys[..2], ["a", "e"]);
    assert_eq!(keys[2], "k90");
    assert_eq!(keys.len(), 12);
    // `popitem`: the entry inserted last, then the one before it (the
    // slots of removed entries are skipped).
    assert_eq!(d.pop_item().unwrap(), Some(("k99".to_string(), 99)));
    d.remove("k98").unwrap();
    assert_eq!(d.pop_item().unwrap(), Some(("k97".to_string(), 97)));
    assert_eq!(d.len().unwrap(), 9);
    d.clear().unwrap();
    assert_eq!(d.len().unwrap(), 0);
    assert_eq!(d.pop_item().unwrap(), None);
}

fn check_list(l: &ListProxy<u32>) {
    assert!(l.is_empty().unwrap());
    l.push(1).unwrap();
    l.extend([2, 3, 4]).unwrap();
    assert_eq!(l.len().unwrap(), 4);
    assert_eq!(l.get(0).unwrap(), Some(1));
    assert_eq!(l.get(9).unwrap(), None);
    assert_eq!(l.set(1, 20).unwrap(), 2);
    l.insert(0, 0).unwrap();
    assert_eq!(l.snapshot().unwrap(), [0, 1, 20, 3, 4]);
    assert_eq!(l.slice(1..3).unwrap(), [1, 20]);
    assert_eq!(l.slice(3..).unwrap(), [3, 4]);
    assert_eq!(l.slice(..=0).unwrap(), [0]);
    assert_eq!(l.slice(4..100).unwrap(), [4]);
    assert_eq!(l.pop().unwrap(), Some(4));
    assert_eq!(l.remove(0).unwrap(), 0);
    assert!(matches!(
        l.set(10, 1),
        Err(ProxyError::Remote(RemoteError::IndexOutOfRange {
            index: 10,
            len: 3
        }))
    ));
    assert!(matches!(
        l.remove(3),
        Err(ProxyError::Remote(RemoteError::IndexOutOfRange { .. }))
    ));
    assert!(matches!(
        l.insert(4, 1),
        Err(ProxyError::Remote(RemoteError::IndexOutOfRange { .. }))
    ));
    // Python's count, index, reverse and sort.
    l.clear().unwrap();
    l.extend([3, 1, 3, 2]).unwrap();
    assert_eq!(l.count(&3).unwrap(), 2);
    assert_eq!(l.count(&7).unwrap(), 0);
    assert_eq!(l.index(&3).unwrap(), Some(0));
    assert_eq!(l.index(&2).unwrap(), Some(3));
    assert_eq!(l.index(&7).unwrap(), None);
    l.reverse().unwrap();
    assert_eq!(l.snapshot().unwrap(), [2, 3, 1, 3]);
    l.sort().unwrap();
    assert_eq!(l.snapshot().unwrap(), [1, 2, 3, 3]);
    l.clear().unwrap();
    l.sort().unwrap();
    assert_eq!(l.pop().unwrap(), None);
}

fn check_namespace(ns: &NamespaceProxy) {
    ns.set("x", &1u8).unwrap();
    ns.set("label", "hello").unwrap();
    assert_eq!(ns.get::<u8>("x").unwrap(), Some(1));
    assert_eq!(ns.get::<String>("label").unwrap().as_deref(), Some("hello"));
    assert_eq!(ns.get::<u8>("nope").unwrap(), None);
    assert_eq!(ns.names().unwrap(), ["label", "x"]);
    assert!(ns.remove("x").unwrap());
    assert!(!ns.remove("x").unwrap());
}

/// A child's part: it adds to every object it was given.
fn child_work(
    (d, l, ns, q, id): (
        DictProxy<String, i64>,
        ListProxy<u32>,
        NamespaceProxy,
        QueueProxy<String>,
        u32,
    ),
) -> usize {
    d.insert(format!("child{id}"), i64::from(id)).unwrap();
    l.push(id).unwrap();
    ns.set(&format!("child{id}"), &id).unwrap();
    q.put(format!("hello from {id}")).unwrap();
    l.len().unwrap()
}

#[test]
fn dict_list_and_namespace_behave_like_pythons() {
    deadline(LIMIT, || {
        for (name, manager) in managers() {
            eprintln!("{name}");
            check_dict(&manager.dict().unwrap());
            check_list(&manager.list().unwrap());
            check_namespace(&manager.namespace().unwrap());
            let pid = manager.server_pid().unwrap();
            manager.shutdown().unwrap();
            assert_gone(pid);
        }
    });
}

/// Pushes 0..400, one at a time.
fn push_many(l: ListProxy<u32>) {
    for i in 0..400 {
        l.push(i).unwrap();
    }
}

#[test]
fn a_sort_while_another_process_pushes_loses_nothing() {
    deadline(LIMIT, || {
        let manager = Manager::start().unwrap();
        let l = manager.list::<u32>().unwrap();
        let child = Process::spawn(push_many, l.clone()).unwrap();
        // Sorts a copy and writes it back only if nothing changed since:
        // a push in between makes it sort again, never drop the push.
        while l.len().unwrap() < 400 {
            l.sort().unwrap();
        }
        child.join().unwrap();
        l.sort().unwrap();
        assert_eq!(l.snapshot().unwrap(), (0..400).collect::<Vec<_>>());
    });
}

#[test]
fn proxies_passed_to_children_share_the_objects() {
    deadline(LIMIT, || {
        for (name, manager) in managers() {
            let d = manager.dict::<String, i64>().unwrap();
            let l = manager.list::<u32>().unwrap();
            let ns = manager.namespace().unwrap();
            let q = manager.queue::<String>().unwrap();
            let children: Vec<_> = StartMethod::ALL
                .into_iter()
                .enumerate()
                .map(|(i, m)| {
                    let arg = (d.clone(), l.clone(), ns.clone(), q.clone(), i as u32);
                    Process::builder()
                        .start_method(m)
                        .spawn(child_work, arg)
                        .unwrap()
                })
                .collect();
            for c in children {
                assert!(c.join().unwrap() >= 1, "{name}");
            }
            assert_eq!(d.len().unwrap(), 3, "{name}");
            let mut items = l.snapshot().unwrap();
            items.sort();
            assert_eq!(items, [0, 1, 2], "{name}");
            assert_eq!(ns.names().unwrap().len(), 3, "{name}");
            let mut got: Vec<String> = (0..3).map(|_| q.get().unwrap()).collect();
            got.sort();
            assert_eq!(got[0], "hello from 0", "{name}");
            assert!(
                matches!(q.try_get(), Err(multiproc::TryGetError::Empty)),
                "{name}"
            );
        }
    });
}

#[test]
fn large_values_travel_on_every_transport() {
    deadline(LIMIT, || {
        for (name, manager) in managers() {
            let l = manager.list::<Vec<u8>>().unwrap();
            for len in [0, 100, 200 << 10, 5 << 20] {
                l.push(vec![7u8; len]).unwrap();
            }
            let lens: Vec<usize> = l.snapshot().unwrap().iter().map(Vec::len).collect();
            assert_eq!(lens, [0, 100, 200 << 10, 5 << 20], "{name}");
        }
    });
}

#[test]
fn queues_block_time_out_and_give_values_back() {
    deadline(LIMIT, || {
        for (name, manager) in managers() {
            let q = manager.bounded_queue::<u64>(2).unwrap();
            q.put(1).unwrap();
            assert!(!q.is_full().unwrap(), "{name}");
            q.put(2).unwrap();
            assert_eq!(q.len().unwrap(), 2);
            assert!(q.is_full().unwrap(), "{name}");
            // An unbounded queue is never full.
            assert!(!manager.queue::<u64>().unwrap().is_full().unwrap());
            match q.try_put(3) {
                Err(multiproc::TryPutError::Full(v)) => assert_eq!(v, 3, "{name}"),
                other => panic!("{name}: a full queue said {other:?}"),
            }
            let t = Instant::now();
            assert!(matches!(
                q.put_timeout(3, Duration::from_millis(50)),
                Err(multiproc::PutTimeoutError::Timeout(3))
            ));
            assert!(t.elapsed() >= Duration::from_millis(45), "{name}");
            assert_eq!(q.get().unwrap(), 1);
            assert_eq!(q.get_timeout(Duration::from_millis(10)).unwrap(), 2);
            let t = Instant::now();
            assert!(matches!(
                q.get_timeout(Duration::from_millis(50)),
                Err(GetTimeoutError::Timeout)
            ));
            assert!(t.elapsed() >= Duration::from_millis(45), "{name}");
            // A getter blocked on the server does not block other clients.
            let q2 = q.clone();
            let getter = std::thread::spawn(move || q2.get().unwrap());
            std::thread::sleep(Duration::from_millis(50));
            assert_eq!(q.len().unwrap(), 0);
            q.put(42).unwrap();
            assert_eq!(getter.join().unwrap(), 42);
        }
    });
}

fn hold_lock_then_signal((lock, held, release): (LockProxy, EventProxy, EventProxy)) {
    let guard = lock.lock().unwrap();
    held.set().unwrap();
    release.wait().unwrap();
    guard.release().unwrap();
}

#[test]
fn locks_exclude_other_processes_and_rlocks_reenter() {
    deadline(LIMIT, || {
        for (name, manager) in managers() {
            let lock = manager.lock().unwrap();
            let (held, release) = (manager.event().unwrap(), manager.event().unwrap());
            let child = Process::spawn(
                hold_lock_then_signal,
                (lock.clone(), held.clone(), release.clone()),
            )
            .unwrap();
            held.wait().unwrap();
            assert!(lock.try_lock().is_err(), "{name}");
            assert!(lock.lock_timeout(Duration::from_millis(30)).is_err());
            release.set().unwrap();
            let g = lock
                .lock_timeout(Duration::from_secs(10))
                .expect("released by the child");
            child.join().unwrap();
            drop(g);

            let rlock = manager.rlock().unwrap();
            let outer = rlock.lock().unwrap();
            let inner = rlock.try_lock().expect("reentrant");
            inner.release().unwrap();
            outer.release().unwrap();
            // Releasing an RLock one does not hold is an error.
            let stray = rlock.lock().unwrap();
            stray.release().unwrap();
            let plain = manager.lock().unwrap();
            let g = plain.lock().unwrap();
            assert!(plain.try_lock().is_err(), "not reentrant");
            g.release().unwrap();
        }
    });
}

fn take_and_give_back(s: multiproc::SemaphoreProxy) -> bool {
    let got = s.acquire_timeout(Duration::from_secs(10)).unwrap();
    s.release().unwrap();
    got
}

#[test]
fn semaphores_count_units_across_processes() {
    deadline(LIMIT, || {
        for (name, manager) in managers() {
            let s = manager.semaphore(2).unwrap();
            assert_eq!(s.value().unwrap(), 2);
            s.acquire().unwrap();
            assert!(s.try_acquire().unwrap());
            assert!(!s.try_acquire().unwrap(), "{name}");
            assert!(!s.acquire_timeout(Duration::from_millis(20)).unwrap());
            // A child waits for a unit until we give one back.
            let child = Process::spawn(take_and_give_back, s.clone()).unwrap();
            std::thread::sleep(Duration::from_millis(50));
            s.release().unwrap();
            assert!(child.join().unwrap(), "{name}");
            s.release().unwrap();
            assert_eq!(s.value().unwrap(), 2);
            // A plain semaphore may go past its start; a bounded one not.
            s.release().unwrap();
            assert_eq!(s.value().unwrap(), 3);
            let b = manager.bounded_semaphore(1).unwrap();
            assert!(matches!(
                b.release(),
                Err(ProxyError::Remote(RemoteError::OverReleased))
            ));
        }
    });
}

fn wait_at_barrier(b: BarrierProxy) -> usize {
    b.wait().unwrap()
}

#[test]
fn events_values_and_barriers() {
    deadline(LIMIT, || {
        for (name, manager) in managers() {
            let e = manager.event().unwrap();
            assert!(!e.is_set().unwrap());
            assert!(!e.wait_timeout(Duration::from_millis(20)).unwrap());
            e.set().unwrap();
            assert!(e.is_set().unwrap());
            assert!(e.wait_timeout(Duration::from_millis(20)).unwrap());
            e.clear().unwrap();
            assert!(!e.is_set().unwrap());

            let v = manager.value((1u8, "one".to_string())).unwrap();
            assert_eq!(v.get().unwrap(), (1, "one".to_string()));
            assert_eq!(v.set((2, "two".into())).unwrap().0, 1);
            assert_eq!(v.get().unwrap().1, "two");

            let b = manager.barrier(3).unwrap();
            assert_eq!(b.parties().unwrap(), 3);
            let children: Vec<_> = (0..2)
                .map(|_| Process::spawn(wait_at_barrier, b.clone()).unwrap())
                .collect();
            let mine = b.wait().unwrap();
            let mut indices: Vec<usize> = children.into_iter().map(|c| c.join().unwrap()).collect();
            indices.push(mine);
            indices.sort();
            assert_eq!(indices, [0, 1, 2], "{name}");
            // A wait that times out breaks the barrier until reset.
            assert!(matches!(
                b.wait_timeout(Duration::from_millis(30)),
                Err(ProxyError::Remote(RemoteError::BrokenBarrier))
            ));
            assert!(b.is_broken().unwrap());
            assert!(matches!(
                b.wait(),
                Err(ProxyError::Remote(RemoteError::BrokenBarrier))
            ));
            b.reset().unwrap();
            assert!(!b.is_broken().unwrap());
            assert_eq!(b.n_waiting().unwrap(), 0);
            assert!(matches!(
                manager.barrier(0),
                Err(ProxyError::Remote(RemoteError::NoParties))
            ));
        }
    });
}

#[derive(Debug)]
struct Account {
    balance: i64,
    history: Vec<i64>,
}

#[derive(Debug, Serialize, Deserialize)]
enum AccountCall {
    Deposit(i64),
    Withdraw(i64),
    Balance,
    History,
    Explode,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum AccountReply {
    Balance(i64),
    Refused { balance: i64 },
    History(Vec<i64>),
}

impl SharedObject for Account {
    type Init = i64;
    type Call = AccountCall;
    type Reply = AccountReply;

    fn create(opening: i64) -> Self {
        Account {
            balance: opening,
            history: vec![opening],
        }
    }

    fn call(&mut self, call: AccountCall) -> AccountReply {
        match call {
            AccountCall::Deposit(n) => {
                self.balance += n;
                self.history.push(n);
                AccountReply::Balance(self.balance)
            }
            AccountCall::Withdraw(n) if n > self.balance => AccountReply::Refused {
                balance: self.balance,
            },
            AccountCall::Withdraw(n) => {
                self.balance -= n;
                self.history.push(-n);
                AccountReply::Balance(self.balance)
            }
            AccountCall::Balance => AccountReply::Balance(self.balance),
            AccountCall::History => AccountReply::History(self.history.clone()),
            // An unwinding panic that skips the panic hook, so that the
            // server prints nothing on purpose; caught as any panic is.
            AccountCall::Explode => panic!("boom"),
        }
    }
}

/// Another type, to check that names are matched with their types.
struct Tally(u64);

impl SharedObject for Tally {
    type Init = ();
    type Call = ();
    type Reply = u64;
    fn create((): ()) -> Self {
        Tally(0)
    }
    fn call(&mut self, (): ()) -> u64 {
        self.0 += 1;
        self.0
    }
}

/// Set for the copy of this binary that
/// [`a_server_does_not_print_the_panics_it_reports`] runs.
const QUIET_ENV: &str = "MULTIPROC_TEST_QUIET_MANAGER";

/// Run by [`a_server_does_not_print_the_panics_it_reports`] in a copy of
/// this binary whose stderr it reads; passes at once otherwise.
#[test]
fn panicking_methods() {
    if std::env::var_os(QUIET_ENV).is_none() {
        return;
    }
    for m in StartMethod::ALL {
        let manager = Manager::builder()
            .start_method(m)
            .register::<Account>("account")
            .start()
            .unwrap();
        let account = manager.create::<Account>("account", 100).unwrap();
        assert!(matches!(
            account.call(AccountCall::Explode),
            Err(ProxyError::Remote(RemoteError::Panicked(m))) if m == "boom"
        ));
        manager.shutdown().unwrap();
    }
    println!("the panicking methods ran");
}

#[test]
fn a_server_does_not_print_the_panics_it_reports() {
    deadline(LIMIT, || {
        let (stdout, stderr) = common::run_this_test_alone("panicking_methods", QUIET_ENV);
        assert!(stdout.contains("the panicking methods ran"), "{stdout}");
        // The client got the panic; the server printed nothing of it.
        assert!(!stderr.contains("boom"), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    });
}

fn deposit_from_child(account: multiproc::ObjectProxy<Account>) -> i64 {
    match account.call(AccountCall::Deposit(5)).unwrap() {
        AccountReply::Balance(b) => b,
        other => panic!("{other:?}"),
    }
}

#[test]
fn registered_user_types_are_served_under_every_start_method() {
    deadline(LIMIT, || {
        for m in StartMethod::ALL {
            let manager = Manager::builder()
                .start_method(m)
                .register::<Account>("account")
                .register::<Tally>("tally")
                .start()
                .unwrap();
            let account = manager.create::<Account>("account", 100).unwrap();
            assert_eq!(
                account.call(AccountCall::Deposit(10)).unwrap(),
                AccountReply::Balance(110)
            );
            assert_eq!(
                account.call(AccountCall::Withdraw(500)).unwrap(),
                AccountReply::Refused { balance: 110 }
            );
            let child = Process::builder()
                .start_method(m)
                .spawn(deposit_from_child, account.clone())
                .unwrap();
            assert_eq!(child.join().unwrap(), 115);
            let replies = account
                .call_many([AccountCall::Withdraw(15), AccountCall::History])
                .unwrap();
            assert_eq!(replies[0].as_ref().unwrap(), &AccountReply::Balance(100));
            assert_eq!(
                replies[1].as_ref().unwrap(),
                &AccountReply::History(vec![100, 10, 5, -15])
            );
            // A panicking method is an error; the object and server live on.
            assert!(matches!(
                account.call(AccountCall::Explode),
                Err(ProxyError::Remote(RemoteError::Panicked(m))) if m == "boom"
            ));
            assert_eq!(
                account.call(AccountCall::Balance).unwrap(),
                AccountReply::Balance(100)
            );
            let tally = manager.create::<Tally>("tally", ()).unwrap();
            assert_eq!(tally.call(()).unwrap(), 1);
            // Unknown names, and names of another type, are refused.
            assert!(matches!(
                manager.create::<Tally>("nope", ()),
                Err(ProxyError::Remote(RemoteError::UnknownType(n))) if n == "nope"
            ));
            assert!(matches!(
                manager.create::<Tally>("account", ()),
                Err(ProxyError::Remote(RemoteError::TypeMismatch { .. }))
            ));
        }
    });
}

#[test]
fn managers_and_proxies_can_be_shared_between_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Manager>();
    send_sync::<DictProxy<String, Vec<u8>>>();
    send_sync::<ListProxy<String>>();
    send_sync::<NamespaceProxy>();
    send_sync::<QueueProxy<String>>();
    send_sync::<LockProxy>();
    send_sync::<EventProxy>();
    send_sync::<BarrierProxy>();
    send_sync::<multiproc::SemaphoreProxy>();
    send_sync::<multiproc::ValueProxy<u8>>();
    send_sync::<multiproc::ObjectProxy<Account>>();
}

#[test]
fn an_address_that_cannot_be_bound_is_a_start_error() {
    deadline(LIMIT, || {
        let missing_dir = common::temp_path("no-such-dir").join("manager.sock");
        match Manager::builder().unix(&missing_dir).start() {
            Err(multiproc::StartManagerError::Bind(_)) => {}
            other => panic!("{other:?}"),
        }
        // A path already taken by a running manager.
        let first = Manager::start().unwrap();
        let Address::Unix(taken) = first.address().clone() else {
            panic!("not unix");
        };
        match Manager::builder().unix(&taken).start() {
            Err(multiproc::StartManagerError::Bind(_)) => {}
            other => panic!("{other:?}"),
        }
        // The failed attempt did not remove the running manager's socket.
        assert!(first.dict::<u8, u8>().is_ok());
    });
}

#[test]
fn duplicate_names_and_empty_keys_are_refused_at_start() {
    let dup = Manager::builder()
        .register::<Tally>("x")
        .register::<Account>("x")
        .start();
    assert!(matches!(
        dup,
        Err(multiproc::StartManagerError::DuplicateName(n)) if n == "x"
    ));
    let empty = Manager::builder()
        .tcp("127.0.0.1:0".parse().unwrap(), b"")
        .start();
    assert!(matches!(
        empty,
        Err(multiproc::StartManagerError::EmptyAuthKey)
    ));
}

fn push_one(l: ListProxy<u32>) -> usize {
    l.push(1).unwrap();
    l.len().unwrap()
}

#[test]
fn a_proxy_sent_to_a_child_and_dropped_at_once_still_reaches_it() {
    deadline(LIMIT, || {
        for m in StartMethod::ALL {
            let manager = Manager::start().unwrap();
            // The only proxy is the argument, dropped by `spawn` right after
            // encoding it: the lease keeps the list until the child attaches.
            let child = Process::builder()
                .start_method(m)
                .spawn(push_one, manager.list().unwrap())
                .unwrap();
            assert_eq!(child.join().unwrap(), 1, "{m}");
        }
    });
}

#[test]
fn a_forked_child_with_a_copy_of_a_proxy_does_not_drop_the_parents_reference() {
    deadline(LIMIT, || {
        let manager = Manager::start().unwrap();
        let d = manager.dict::<u8, u8>().unwrap();
        let copy = d.clone();
        // The closure owns `copy`, a byte copy in the child: the child uses
        // it on its own connection and drops it without a `DecRef`.
        let child = Process::fork(move || {
            copy.insert(1, 2).unwrap();
            drop(copy);
            7
        })
        .unwrap();
        assert_eq!(child.join().unwrap(), 7);
        // The parent's `copy` was moved into the closure and dropped here
        // with it: one reference left, `d`'s.
        assert_eq!(d.get(&1).unwrap(), Some(2));
    });
}

#[test]
fn threads_of_one_process_each_get_their_own_session() {
    deadline(LIMIT, || {
        let manager = Manager::start().unwrap();
        let lock = manager.lock().unwrap();
        let d = manager.dict::<u32, u32>().unwrap();
        let guard = lock.lock().unwrap();
        // A thread blocked on the lock on the server holds up no other.
        let blocked = std::thread::spawn({
            let lock = lock.clone();
            move || lock.lock().map(|g| g.release())
        });
        let writers: Vec<_> = (0..4)
            .map(|t| {
                let d = d.clone();
                std::thread::spawn(move || {
                    for i in 0..500 {
                        d.insert(t * 1000 + i, i).unwrap();
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        assert_eq!(d.len().unwrap(), 2000);
        guard.release().unwrap();
        blocked.join().unwrap().unwrap().unwrap();
    });
}

#[test]
fn connect_attaches_to_a_running_manager_by_address() {
    deadline(LIMIT, || {
        let manager = Manager::builder()
            .unix(common::temp_path("manager.sock"))
            .authkey(b"k")
            .start()
            .unwrap();
        let Address::Unix(path) = manager.address().clone() else {
            panic!("not a unix address");
        };
        assert!(path.exists());
        let other = Manager::connect(manager.address(), b"k").unwrap();
        let d = other.dict::<u8, u8>().unwrap();
        d.insert(1, 2).unwrap();
        drop(other);
        // The connecting manager's drop did not stop the server.
        assert_eq!(d.get(&1).unwrap(), Some(2));
        manager.shutdown().unwrap();
        assert!(!path.exists(), "the socket file was removed");
        assert!(matches!(
            d.get(&1),
            Err(ProxyError::Disconnected | ProxyError::Connect(_))
        ));
    });
}
