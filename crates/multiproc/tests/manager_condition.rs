//! The manager's condition (Python: `Manager().Condition()`): wait,
//! wait_for and their timeouts, notify(n) and notify_all across child
//! processes under every start method and clients over TCP, the lock's
//! semantics, and clients killed while waiting or holding the lock.

mod common;

use std::time::{Duration, Instant};

use common::{LIMIT, assert_gone, deadline};
use multiproc::{
    ConditionProxy, JoinError, Manager, Process, ProxyError, RemoteError, Signal, StartMethod,
    ValueProxy,
};

/// Counts itself in `waiting`, waits (at most 30 s) and counts itself in
/// `woke`; whether it was notified.
fn wait_once((cond, waiting, woke): (ConditionProxy, ValueProxy<u32>, ValueProxy<u32>)) -> bool {
    let guard = cond.lock().unwrap();
    waiting.set(waiting.get().unwrap() + 1).unwrap();
    let notified = guard.wait_timeout(Duration::from_secs(30)).unwrap();
    woke.set(woke.get().unwrap() + 1).unwrap();
    notified
}

/// Holds the lock and waits, counted in `waiting`, until killed.
fn wait_forever((cond, waiting): (ConditionProxy, ValueProxy<u32>)) {
    let guard = cond.lock().unwrap();
    waiting.set(waiting.get().unwrap() + 1).unwrap();
    loop {
        guard.wait().unwrap();
    }
}

/// Holds the lock until killed.
fn hold_forever((cond, held): (ConditionProxy, ValueProxy<u32>)) {
    let _guard = cond.lock().unwrap();
    held.set(1).unwrap();
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Waits (with the lock) until `v` reaches `n`.
fn wait_value(cond: &ConditionProxy, v: &ValueProxy<u32>, n: u32) {
    let start = Instant::now();
    loop {
        {
            let _g = cond.lock().unwrap();
            if v.get().unwrap() >= n {
                return;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "never reached {n}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn wait_timeouts_notify_without_the_lock_and_reentrancy_behave_like_pythons() {
    deadline(LIMIT, || {
        let manager = Manager::start().unwrap();
        let cond = manager.condition().unwrap();
        // A wait nobody notifies returns false by its deadline, with the
        // lock held again.
        let guard = cond.lock().unwrap();
        let start = Instant::now();
        assert!(!guard.wait_timeout(Duration::from_millis(200)).unwrap());
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(200), "{waited:?}");
        assert!(waited < Duration::from_secs(10), "{waited:?}");
        std::thread::scope(|s| {
            s.spawn(|| assert!(cond.try_lock().is_err()));
        });
        // wait_for with a false predicate gives up at its deadline.
        let start = Instant::now();
        assert!(
            !guard
                .wait_for_timeout(Duration::from_millis(150), || false)
                .unwrap()
        );
        assert!(start.elapsed() >= Duration::from_millis(150));
        assert!(guard.wait_for_timeout(Duration::ZERO, || true).unwrap());
        // Notifying with nobody waiting is fine.
        guard.notify(3).unwrap();
        guard.notify_all().unwrap();
        // The default lock is reentrant, and a wait restores its depth.
        let inner = cond.lock().unwrap();
        assert!(!inner.wait_timeout(Duration::from_millis(10)).unwrap());
        inner.release().unwrap();
        std::thread::scope(|s| {
            s.spawn(|| assert!(cond.try_lock().is_err()));
        });
        // The guard acts for the thread that took the lock, from whichever
        // thread it is lent to (as a `&MutexGuard` may be), and the lock is
        // still held afterwards.
        std::thread::scope(|s| {
            s.spawn(|| {
                let theirs = &guard;
                theirs.notify(1).unwrap();
                assert!(!theirs.wait_timeout(Duration::ZERO).unwrap());
                assert!(cond.try_lock().is_err());
            });
        });
        guard.release().unwrap();
        assert!(cond.try_lock().is_ok());
        let pid = manager.server_pid().unwrap();
        manager.shutdown().unwrap();
        assert_gone(pid);
    });
}

#[test]
fn a_condition_over_an_existing_lock_shares_it() {
    deadline(LIMIT, || {
        let manager = Manager::start().unwrap();
        let lock = manager.lock().unwrap();
        let cond = manager.condition_with(&lock).unwrap();
        let held = lock.lock().unwrap();
        std::thread::scope(|s| {
            s.spawn(|| assert!(cond.try_lock().is_err()));
        });
        held.release().unwrap();
        let guard = cond.lock().unwrap();
        assert!(lock.try_lock().is_err(), "a plain lock");
        assert!(!guard.wait_timeout(Duration::from_millis(10)).unwrap());
        assert!(lock.try_lock().is_err());
        guard.release().unwrap();
        // The condition keeps the lock even when its proxies are gone.
        drop(lock);
        let g = cond.lock().unwrap();
        g.notify_all().unwrap();
        drop(g);
        let other = Manager::start().unwrap();
        let foreign = other.lock().unwrap();
        assert!(matches!(
            manager.condition_with(&foreign),
            Err(ProxyError::Remote(RemoteError::BadArgument(_)))
        ));
        for m in [manager, other] {
            let pid = m.server_pid().unwrap();
            m.shutdown().unwrap();
            assert_gone(pid);
        }
    });
}

/// A unix manager, and a TCP one whose clients all come over the address.
fn managers() -> Vec<Manager> {
    vec![
        Manager::start().unwrap(),
        Manager::builder()
            .tcp("127.0.0.1:0".parse().unwrap(), b"condition key")
            .start()
            .unwrap(),
    ]
}

#[test]
fn notify_n_wakes_n_waiters_in_children_under_every_start_method() {
    deadline(LIMIT, || {
        for manager in managers() {
            let cond = manager.condition().unwrap();
            let waiting = manager.value(0u32).unwrap();
            let woke = manager.value(0u32).unwrap();
            let children: Vec<_> = StartMethod::ALL
                .into_iter()
                .map(|m| {
                    Process::builder()
                        .start_method(m)
                        .spawn(wait_once, (cond.clone(), waiting.clone(), woke.clone()))
                        .unwrap()
                })
                .collect();
            // Each counted itself under the lock before its wait released
            // it: at 3, all three are waiting.
            wait_value(&cond, &waiting, 3);
            cond.lock().unwrap().notify(1).unwrap();
            wait_value(&cond, &woke, 1);
            std::thread::sleep(Duration::from_millis(200));
            {
                let g = cond.lock().unwrap();
                assert_eq!(woke.get().unwrap(), 1, "notify(1) woke more than one");
                g.notify(2).unwrap();
            }
            for c in children {
                assert!(c.join().unwrap(), "a waiter timed out instead");
            }
            assert_eq!(woke.get().unwrap(), 3);
            // notify_all, and wait_for in a thread of this process.
            let flag = manager.value(false).unwrap();
            let waiter = std::thread::spawn({
                let (cond, flag) = (cond.clone(), flag.clone());
                move || {
                    let g = cond.lock().unwrap();
                    g.wait_for_timeout(Duration::from_secs(20), || flag.get().unwrap())
                        .unwrap()
                }
            });
            {
                let g = cond.lock().unwrap();
                flag.set(true).unwrap();
                g.notify_all().unwrap();
            }
            assert!(waiter.join().unwrap());
            let pid = manager.server_pid().unwrap();
            manager.shutdown().unwrap();
            assert_gone(pid);
        }
    });
}

#[test]
fn clients_killed_while_waiting_or_holding_the_lock_leave_the_others_unaffected() {
    deadline(LIMIT, || {
        for m in StartMethod::ALL {
            let manager = Manager::builder().start_method(m).start().unwrap();
            let cond = manager.condition().unwrap();
            let waiting = manager.value(0u32).unwrap();
            // Killed while waiting.
            let dead = Process::builder()
                .start_method(m)
                .spawn(wait_forever, (cond.clone(), waiting.clone()))
                .unwrap();
            wait_value(&cond, &waiting, 1);
            let flag = manager.value(false).unwrap();
            let waiter = std::thread::spawn({
                let (cond, flag) = (cond.clone(), flag.clone());
                move || {
                    let g = cond.lock().unwrap();
                    g.wait_for_timeout(Duration::from_secs(20), || flag.get().unwrap())
                        .unwrap()
                }
            });
            dead.kill().unwrap();
            assert!(matches!(
                dead.join(),
                Err(JoinError::Signaled {
                    signal: Signal::KILL,
                    ..
                })
            ));
            {
                let g = cond
                    .lock_timeout(Duration::from_secs(10))
                    .expect("the lock is free");
                flag.set(true).unwrap();
                g.notify_all().unwrap();
            }
            assert!(waiter.join().unwrap(), "{m}");
            // Killed while holding the lock: the manager releases it.
            let held = manager.value(0u32).unwrap();
            let holder = Process::builder()
                .start_method(m)
                .spawn(hold_forever, (cond.clone(), held.clone()))
                .unwrap();
            let start = Instant::now();
            while held.get().unwrap() == 0 {
                assert!(start.elapsed() < Duration::from_secs(20));
                std::thread::sleep(Duration::from_millis(10));
            }
            assert!(cond.try_lock().is_err());
            holder.kill().unwrap();
            let _ = holder.join();
            let g = cond
                .lock_timeout(Duration::from_secs(10))
                .expect("the dead holder's lock was released");
            g.release().unwrap();
            let pid = manager.server_pid().unwrap();
            manager.shutdown().unwrap();
            assert_gone(pid);
        }
    });
}
