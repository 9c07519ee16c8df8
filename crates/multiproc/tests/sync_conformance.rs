//! Synchronisation primitives between processes, under every start method.

mod common;

use std::time::{Duration, Instant};

use common::{LIMIT, deadline};
use multiproc::{
    Array, Barrier, BarrierError, BoundedSemaphore, Condition, Event, Lock, Process, RLock,
    RawArray, RawValue, Semaphore, StartMethod, TryLockError, Value,
};

fn add_under_lock((lock, counter, n): (Lock, RawValue<u64>, u64)) {
    for _ in 0..n {
        let _g = lock.lock().unwrap();
        // A read-modify-write that only the lock makes safe.
        let v = counter.get();
        std::hint::black_box(());
        counter.set(v + 1);
    }
}

#[test]
fn a_lock_excludes_other_processes() {
    deadline(LIMIT, || {
        for m in StartMethod::ALL {
            let (lock, counter) = (Lock::new().unwrap(), RawValue::new(0u64).unwrap());
            let n = 5_000;
            let kids: Vec<_> = (0..3)
                .map(|_| {
                    Process::builder()
                        .start_method(m)
                        .spawn(add_under_lock, (lock.clone(), counter.clone(), n))
                        .unwrap()
                })
                .collect();
            add_under_lock((lock.clone(), counter.clone(), n));
            for k in kids {
                k.join().unwrap();
            }
            assert_eq!(counter.get(), 4 * n, "{m}");
        }
    });
}

#[test]
fn try_and_timeout_forms() {
    deadline(LIMIT, || {
        let lock = Lock::new().unwrap();
        let g = lock.lock().unwrap();
        let other = lock.clone();
        std::thread::spawn(move || {
            assert!(matches!(other.try_lock(), Err(TryLockError::WouldBlock)));
            let t = Instant::now();
            assert!(other.lock_timeout(Duration::from_millis(30)).is_err());
            assert!(t.elapsed() >= Duration::from_millis(25));
        })
        .join()
        .unwrap();
        drop(g);
        assert!(lock.try_lock().is_ok());
    });
}

#[test]
fn an_rlock_reenters_and_excludes_others() {
    deadline(LIMIT, || {
        let lock = RLock::new().unwrap();
        let a = lock.lock().unwrap();
        let b = lock.lock().unwrap();
        let other = lock.clone();
        let t = std::thread::spawn(move || other.try_lock().is_err());
        assert!(t.join().unwrap(), "another thread took a held RLock");
        drop(b);
        let other = lock.clone();
        assert!(
            std::thread::spawn(move || other.try_lock().is_err())
                .join()
                .unwrap(),
            "released too early"
        );
        drop(a);
        let other = lock.clone();
        assert!(
            std::thread::spawn(move || other.try_lock().is_ok())
                .join()
                .unwrap()
        );
    });
}

fn hold_a_slot((sem, inside, most): (Semaphore, Value<u32>, Value<u32>)) {
    for _ in 0..50 {
        sem.acquire();
        let now = {
            let mut g = inside.get_lock().unwrap();
            *g += 1;
            *g
        };
        {
            let mut g = most.get_lock().unwrap();
            *g = (*g).max(now);
        }
        std::thread::sleep(Duration::from_micros(200));
        *inside.get_lock().unwrap() -= 1;
        sem.release();
    }
}

#[test]
fn a_semaphore_bounds_concurrency() {
    deadline(LIMIT, || {
        for m in StartMethod::ALL {
            let sem = Semaphore::new(2).unwrap();
            let (inside, most) = (Value::new(0u32).unwrap(), Value::new(0u32).unwrap());
            let kids: Vec<_> = (0..4)
                .map(|_| {
                    Process::builder()
                        .start_method(m)
                        .spawn(hold_a_slot, (sem.clone(), inside.clone(), most.clone()))
                        .unwrap()
                })
                .collect();
            for k in kids {
                k.join().unwrap();
            }
            assert!(
                most.get() <= 2 && most.get() >= 1,
                "{m}: {} inside at once",
                most.get()
            );
            assert_eq!(sem.value(), 2);
        }
        let b = BoundedSemaphore::new(1).unwrap();
        assert!(b.release().is_err());
        assert!(b.try_acquire() && !b.try_acquire());
        assert!(!b.acquire_timeout(Duration::from_millis(10)));
        b.release().unwrap();
    });
}

fn set_after((ev, ms): (Event, u64)) {
    std::thread::sleep(Duration::from_millis(ms));
    ev.set();
}

#[test]
fn events_wake_every_waiter() {
    deadline(LIMIT, || {
        for m in StartMethod::ALL {
            let ev = Event::new().unwrap();
            assert!(!ev.wait_timeout(Duration::from_millis(10)));
            let waiters: Vec<_> = (0..3)
                .map(|_| {
                    let e = ev.clone();
                    std::thread::spawn(move || e.wait_timeout(Duration::from_secs(20)))
                })
                .collect();
            let setter = Process::builder()
                .start_method(m)
                .spawn(set_after, (ev.clone(), 30))
                .unwrap();
            for w in waiters {
                assert!(w.join().unwrap(), "{m}");
            }
            setter.join().unwrap();
            assert!(ev.is_set());
            ev.clear();
            assert!(!ev.is_set());
        }
    });
}

fn notify_when_ready((cond, ready): (Condition, Value<u32>)) {
    std::thread::sleep(Duration::from_millis(20));
    let _g = cond.lock().unwrap();
    ready.set(7);
    cond.notify_all();
}

#[test]
fn a_condition_is_notified_across_processes() {
    deadline(LIMIT, || {
        for m in StartMethod::ALL {
            let (cond, ready) = (Condition::new().unwrap(), Value::new(0u32).unwrap());
            let child = Process::builder()
                .start_method(m)
                .spawn(notify_when_ready, (cond.clone(), ready.clone()))
                .unwrap();
            let g = cond.lock().unwrap();
            let g = g.wait_for(|| ready.get() != 0);
            assert_eq!(ready.get(), 7, "{m}");
            let (g, notified) = g.wait_timeout(Duration::from_millis(10));
            assert!(!notified);
            drop(g);
            child.join().unwrap();
        }
    });
}

fn meet((b, rounds): (Barrier, u32)) -> Vec<usize> {
    (0..rounds).map(|_| b.wait().unwrap()).collect()
}

#[test]
fn a_barrier_gathers_every_party_each_round() {
    deadline(LIMIT, || {
        for m in StartMethod::ALL {
            let b = Barrier::new(3).unwrap();
            let kids: Vec<_> = (0..2)
                .map(|_| {
                    Process::builder()
                        .start_method(m)
                        .spawn(meet, (b.clone(), 50))
                        .unwrap()
                })
                .collect();
            let mine = meet((b.clone(), 50));
            let theirs: Vec<Vec<usize>> = kids.into_iter().map(|k| k.join().unwrap()).collect();
            for round in 0..50 {
                let mut idx = vec![mine[round], theirs[0][round], theirs[1][round]];
                idx.sort();
                assert_eq!(idx, vec![0, 1, 2], "{m}: round {round}");
            }
        }
    });
}

#[test]
fn a_barrier_timeout_breaks_it_for_everyone() {
    deadline(LIMIT, || {
        let b = Barrier::new(3).unwrap();
        let other = b.clone();
        let t = std::thread::spawn(move || other.wait());
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(
            b.wait_timeout(Duration::from_millis(20)),
            Err(BarrierError::TimedOut)
        );
        assert_eq!(t.join().unwrap(), Err(BarrierError::Broken));
        assert!(b.is_broken());
        assert_eq!(b.wait(), Err(BarrierError::Broken));
        b.reset();
        assert!(!b.is_broken());
        let other = b.clone();
        let t = std::thread::spawn(move || other.wait());
        std::thread::sleep(Duration::from_millis(20));
        b.abort();
        assert_eq!(t.join().unwrap(), Err(BarrierError::Broken));
    });
}

fn fill((a, raw, v): (Array<u32>, RawArray<u64>, RawValue<f64>)) {
    for (i, x) in a.get_lock().unwrap().iter_mut().enumerate() {
        *x = i as u32 * 10;
    }
    for i in 0..raw.len() {
        raw.set(i, i as u64 + 100);
    }
    v.set(2.5);
}

#[test]
fn values_and_arrays_are_shared() {
    deadline(LIMIT, || {
        for m in StartMethod::ALL {
            let (a, raw, v) = (
                Array::<u32>::new(5).unwrap(),
                RawArray::<u64>::new(3).unwrap(),
                RawValue::new(0.0).unwrap(),
            );
            Process::builder()
                .start_method(m)
                .spawn(fill, (a.clone(), raw.clone(), v.clone()))
                .unwrap()
                .join()
                .unwrap();
            assert_eq!(a.to_vec(), vec![0, 10, 20, 30, 40], "{m}");
            assert_eq!(
                (0..3).map(|i| raw.get(i).unwrap()).collect::<Vec<_>>(),
                vec![100, 101, 102]
            );
            assert_eq!(raw.get(3), None);
            assert!(!raw.set(3, 1));
            assert_eq!(v.get(), 2.5);
        }
        let a = Array::from_slice(&[1u8, 2, 3]).unwrap();
        assert_eq!((a.len(), a.to_vec()), (3, vec![1, 2, 3]));
    });
}

/// Waits on `cond` until notified, counting itself in `ready` (under the
/// condition's lock, so that the parent knows every waiter is inside
/// `wait` once it holds the lock) and in `woken` afterwards.
fn wait_to_be_notified((cond, ready, woken): (Condition, Value<u32>, Value<u32>)) {
    let guard = cond.lock().unwrap();
    ready.set(ready.get() + 1);
    let guard = guard.wait();
    let mut w = woken.get_lock().unwrap();
    *w += 1;
    drop(w);
    drop(guard);
}

/// Waits until `v` reads `n`, or fails the test after 20 s.
fn until_value(v: &Value<u32>, n: u32) {
    let end = Instant::now() + Duration::from_secs(20);
    while v.get() != n {
        assert!(Instant::now() < end, "stuck at {} of {n}", v.get());
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn notify_one_and_notify_n_wake_exactly_that_many() {
    // CPython's test_notify and test_notify_n.
    deadline(LIMIT, || {
        let cond = Condition::new().unwrap();
        let (ready, woken) = (Value::new(0u32).unwrap(), Value::new(0u32).unwrap());
        let kids: Vec<_> = (0..5)
            .map(|_| {
                Process::spawn(
                    wait_to_be_notified,
                    (cond.clone(), ready.clone(), woken.clone()),
                )
                .unwrap()
            })
            .collect();
        until_value(&ready, 5);
        // Holding the lock: every waiter has released it inside `wait`.
        drop(cond.lock().unwrap());
        let settle = || std::thread::sleep(Duration::from_millis(300));
        settle();
        assert_eq!(woken.get(), 0, "woken without a notification");
        cond.notify_one();
        until_value(&woken, 1);
        settle();
        assert_eq!(woken.get(), 1, "notify_one woke more than one");
        cond.notify(2);
        until_value(&woken, 3);
        settle();
        assert_eq!(woken.get(), 3, "notify(2) woke more than two");
        cond.notify_all();
        until_value(&woken, 5);
        for k in kids {
            k.join().unwrap();
        }
        // Nobody waits: a notification now is not kept for a later waiter.
        cond.notify_all();
        let guard = cond.lock().unwrap();
        let (_guard, notified) = guard.wait_timeout(Duration::from_millis(50));
        assert!(!notified);
    });
}

fn wait_at_barrier(b: Barrier) -> Result<usize, BarrierError> {
    b.wait()
}

#[test]
fn a_reset_fails_the_parties_waiting_at_it() {
    // CPython's test_reset: parties waiting at a reset get Broken; the
    // barrier is usable again afterwards.
    deadline(LIMIT, || {
        for m in StartMethod::ALL {
            let b = Barrier::new(3).unwrap();
            let kids: Vec<_> = (0..2)
                .map(|_| {
                    Process::builder()
                        .start_method(m)
                        .spawn(wait_at_barrier, b.clone())
                        .unwrap()
                })
                .collect();
            let end = Instant::now() + Duration::from_secs(20);
            while b.n_waiting() < 2 {
                assert!(Instant::now() < end, "{m}: parties never arrived");
                std::thread::sleep(Duration::from_millis(2));
            }
            b.reset();
            for k in kids {
                assert!(
                    matches!(k.join().unwrap(), Err(BarrierError::Broken)),
                    "{m}: a party waiting at a reset passed"
                );
            }
            assert!(!b.is_broken());
            let kids: Vec<_> = (0..2)
                .map(|_| {
                    Process::builder()
                        .start_method(m)
                        .spawn(wait_at_barrier, b.clone())
                        .unwrap()
                })
                .collect();
            assert!(b.wait_timeout(Duration::from_secs(20)).is_ok());
            for k in kids {
                assert!(k.join().unwrap().is_ok(), "{m}: the round after the reset");
            }
        }
    });
}

/// Once the parent waits (it set `ready` under the lock before waiting),
/// notifies it and then waits itself: whether that wait was notified.
fn notify_then_wait((cond, ready): (Condition, Value<u32>)) -> bool {
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let guard = cond.lock().unwrap();
        if ready.get() == 1 {
            cond.notify_one();
            let (_guard, notified) = guard.wait_timeout(Duration::from_millis(200));
            return notified;
        }
        drop(guard);
        assert!(Instant::now() < end, "the parent never waited");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn a_notifier_that_waits_at_once_does_not_take_its_own_notification() {
    // CPython's test_waitfor does this: the notification is the parent's,
    // which was waiting when it was issued.
    deadline(LIMIT, || {
        for m in StartMethod::ALL {
            let cond = Condition::new().unwrap();
            let ready = Value::new(0u32).unwrap();
            let child = Process::builder()
                .start_method(m)
                .spawn(notify_then_wait, (cond.clone(), ready.clone()))
                .unwrap();
            let guard = cond.lock().unwrap();
            ready.set(1);
            let (guard, notified) = guard.wait_timeout(Duration::from_secs(10));
            drop(guard);
            assert!(notified, "{m}: the waiter's notification was taken");
            assert!(
                !child.join().unwrap(),
                "{m}: the notifier was woken by its own notification"
            );
        }
    });
}
