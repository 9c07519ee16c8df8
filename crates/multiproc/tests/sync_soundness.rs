//! Lock ownership as an attacker would probe it from safe code: a guard
//! that outlives the thread that took it, a guard leaked for good, a guard
//! a forked child inherits, another thread of the holding process. The
//! lock belongs to the process: none of these may hand out a second guard
//! while the first can still be used, and none may release the holder's
//! lock from elsewhere.

mod common;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{LIMIT, deadline};
use multiproc::{Lock, LockTimeoutError, Process, RLock, TryLockError, Value};

#[test]
fn a_guard_leaked_by_a_thread_that_ended_keeps_the_lock_held() {
    deadline(LIMIT, || {
        let lock = Lock::new().unwrap();
        std::thread::scope(|s| {
            s.spawn(|| std::mem::forget(lock.lock().unwrap()));
        });
        // The thread that took the lock is gone; this process is not, and
        // the leaked guard could still be in use.
        assert!(matches!(lock.try_lock(), Err(TryLockError::WouldBlock)));
        let t = Instant::now();
        assert!(matches!(
            lock.lock_timeout(Duration::from_millis(200)),
            Err(LockTimeoutError::Timeout)
        ));
        let waited = t.elapsed();
        assert!(waited >= Duration::from_millis(200), "{waited:?}");
        assert!(waited < Duration::from_secs(5), "{waited:?}");
    });
}

/// In a child of its own (the blocked locker is ended with it): a
/// `Value` guard leaked in a thread that ended, then a second `get_lock`.
/// Returns whether the second guard was handed out.
fn second_value_guard(_: ()) -> bool {
    let value: &'static Value<u64> = Box::leak(Box::new(Value::new(1).unwrap()));
    std::thread::spawn(move || {
        let guard = Box::leak(Box::new(value.get_lock().unwrap()));
        **guard = 2;
    })
    .join()
    .unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let g = value.get_lock();
        let _ = tx.send(g.is_ok());
        std::mem::forget(g);
    });
    rx.recv_timeout(Duration::from_millis(400)).is_ok()
}

#[test]
fn a_value_guard_leaked_by_a_thread_that_ended_is_never_handed_out_again() {
    deadline(LIMIT, || {
        let child = Process::spawn(second_value_guard, ()).unwrap();
        assert!(
            !child.join().unwrap(),
            "a second guard to the same Value was handed out"
        );
    });
}

#[test]
fn a_child_forked_while_the_parent_holds_a_lock_cannot_take_it() {
    deadline(LIMIT, || {
        let lock: &'static Lock = Box::leak(Box::new(Lock::new().unwrap()));
        let guard = lock.lock().unwrap();
        // A guard cannot be captured (it is not `Send`: see the
        // `compile_fail` example on `LockGuard`); the child still has a copy
        // of the parent's memory, where the lock word names the parent.
        let child = Process::fork(move || {
            let t = Instant::now();
            let timed_out = matches!(
                lock.lock_timeout(Duration::from_millis(100)),
                Err(LockTimeoutError::Timeout)
            );
            (timed_out, t.elapsed() < Duration::from_secs(5))
        })
        .unwrap();
        assert_eq!(child.join().unwrap(), (true, true));
        drop(guard);
        assert!(lock.try_lock().is_ok());
    });
}

#[test]
fn an_rlock_is_reentered_by_its_own_thread_only() {
    deadline(LIMIT, || {
        let rlock = RLock::new().unwrap();
        let outer = rlock.lock().unwrap();
        let inner = rlock.lock().unwrap();
        std::thread::scope(|s| {
            s.spawn(|| {
                assert!(matches!(rlock.try_lock(), Err(TryLockError::WouldBlock)));
            });
        });
        drop(inner);
        drop(outer);
        std::thread::scope(|s| {
            s.spawn(|| assert!(rlock.try_lock().is_ok()));
        });
    });
}

/// Holds the lock, then exits without releasing it.
fn hold_and_exit(lock: Lock) {
    std::mem::forget(lock.lock().unwrap());
}

#[test]
fn a_lock_left_by_an_exited_process_is_recovered_by_a_deadline_shorter_than_the_recheck() {
    deadline(LIMIT, || {
        let lock = Lock::new().unwrap();
        Process::spawn(hold_and_exit, lock.clone())
            .unwrap()
            .join()
            .unwrap();
        // The holder is gone: even a 1 ms wait recovers its lock.
        match lock.lock_timeout(Duration::from_millis(1)) {
            Err(LockTimeoutError::Failed(multiproc::OwnerDied)) => {
                lock.lock_recover().make_consistent()
            }
            other => panic!("expected OwnerDied, got {other:?}"),
        }
        assert!(lock.try_lock().is_ok());
    });
}

#[test]
fn a_timeout_too_long_for_the_clock_means_no_deadline_not_a_panic() {
    deadline(LIMIT, || {
        let lock = Lock::new().unwrap();
        assert!(lock.lock_timeout(Duration::MAX).is_ok());
        let ev = multiproc::Event::new().unwrap();
        ev.set();
        assert!(ev.wait_timeout(Duration::MAX));
        let q = multiproc::Queue::<u8>::new().unwrap();
        q.put(1).unwrap();
        assert_eq!(q.get_timeout(Duration::MAX).unwrap(), 1);
        q.put(2).unwrap();
        assert_eq!(*q.get_delivery_timeout(Duration::MAX).unwrap(), 2);
    });
}
