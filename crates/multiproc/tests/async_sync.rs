//! Async forms of the synchronisation primitives on every executor, and
//! futures dropped at random points that leave nothing held.

mod common;
#[path = "common/executors.rs"]
mod executors;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use executors::{Rng, on_each, run_on, timeout};
use multiproc::{Barrier, BarrierError, Condition, Event, Lock, Process, RLock, Semaphore, Value};

/// Holds the lock for `ms` milliseconds, in a child process.
fn hold((lock, ms, held): (Lock, u64, Event)) {
    let _g = lock.lock().unwrap();
    held.set();
    std::thread::sleep(Duration::from_millis(ms));
}

#[test]
fn lock_async_waits_for_another_process_on_every_executor() {
    common::deadline(common::LIMIT, || {
        on_each(|_| async {
            let lock = Lock::new().unwrap();
            let held = Event::new().unwrap();
            let child = Process::spawn(hold, (lock.clone(), 150, held.clone())).unwrap();
            held.wait_async().await;
            assert!(lock.try_lock().is_err(), "the child holds it");
            {
                let _g = lock.lock_async().await.unwrap();
                // Taken only once the child released it: it has exited or
                // is about to.
                assert!(held.is_set());
            }
            child.join_async().await.unwrap();
        });
        // A guard held across an `.await` keeps the future on its thread.
        for which in 0..4 {
            executors::run_local(which, async {
                let rlock = RLock::new().unwrap();
                let outer = rlock.lock_async().await.unwrap();
                let inner = rlock.lock_async().await.unwrap();
                assert!(
                    std::thread::spawn({
                        let r = rlock.clone();
                        move || r.try_lock().is_err()
                    })
                    .join()
                    .unwrap()
                );
                drop((inner, outer));
            });
        }
    });
}

#[test]
fn a_dropped_lock_async_leaves_the_lock_free() {
    common::deadline(common::LIMIT, || {
        for which in 0..4 {
            run_on(which, async move {
                let lock = Lock::new().unwrap();
                let stop = Arc::new(AtomicBool::new(false));
                // Another thread takes and releases the lock at random.
                let (l, s) = (lock.clone(), Arc::clone(&stop));
                let holder = std::thread::spawn(move || {
                    let mut rng = Rng(5);
                    let mut rounds = 0u32;
                    while !s.load(Ordering::Relaxed) {
                        rounds += 1;
                        let g = l.lock().unwrap();
                        std::thread::sleep(Duration::from_micros(2000 + rng.below(4000)));
                        drop(g);
                        std::thread::sleep(Duration::from_micros(rng.below(300)));
                    }
                    rounds
                });
                // Once the holder runs (the machine may be busy).
                while lock.try_lock().is_ok() {
                    std::thread::sleep(Duration::from_millis(1));
                }
                let mut rng = Rng(17 + which as u64);
                let (mut got, mut dropped) = (0, 0);
                for _ in 0..150 {
                    let wait = Duration::from_micros(rng.below(1500));
                    match timeout(which, wait, lock.lock_async()).await {
                        Some(g) => {
                            got += 1;
                            drop(g.unwrap());
                        }
                        None => dropped += 1,
                    }
                    // Give the holder its turn (a lock is not fair: a
                    // locker that loops would keep it from the sleeper).
                    std::thread::sleep(Duration::from_micros(400));
                }
                stop.store(true, Ordering::Relaxed);
                let rounds = holder.join().unwrap();
                eprintln!("lock_async on {which}: got {got}, dropped {dropped}, holder {rounds}");
                assert!(dropped > 0 && got > 0, "got {got}, dropped {dropped}");
                // Nothing left held: free at once, here and in a child.
                drop(lock.try_lock().expect("the lock is free"));
                let held = Event::new().unwrap();
                let child = Process::spawn(hold, (lock.clone(), 1, held)).unwrap();
                child.join().unwrap();
            });
        }
    });
}

#[test]
fn semaphore_permits_are_neither_lost_nor_made_by_dropped_acquires() {
    common::deadline(common::LIMIT, || {
        for which in 0..4 {
            run_on(which, async move {
                let sem = Semaphore::new(0).unwrap();
                let released = 200u32;
                let s = sem.clone();
                let releaser = std::thread::spawn(move || {
                    let mut rng = Rng(23);
                    for _ in 0..released {
                        std::thread::sleep(Duration::from_micros(rng.below(1200)));
                        s.release();
                    }
                });
                let mut rng = Rng(29 + which as u64);
                let (mut acquired, mut dropped) = (0u32, 0);
                for _ in 0..150 {
                    let wait = Duration::from_micros(rng.below(1500));
                    match timeout(which, wait, sem.acquire_async()).await {
                        Some(()) => acquired += 1,
                        None => dropped += 1,
                    }
                }
                releaser.join().unwrap();
                assert!(dropped > 0 && acquired > 0, "{acquired} {dropped}");
                assert_eq!(acquired + sem.value(), released);
            });
        }
    });
}

#[test]
fn event_wait_async_on_every_executor() {
    common::deadline(common::LIMIT, || {
        on_each(|_| async {
            let ev = Event::new().unwrap();
            let e = ev.clone();
            let setter = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(80));
                e.set();
            });
            ev.wait_async().await;
            assert!(ev.is_set());
            setter.join().unwrap();
        });
    });
}

fn barrier_party(b: Barrier) -> usize {
    b.wait_timeout(Duration::from_secs(20)).unwrap()
}

#[test]
fn barrier_wait_async_meets_blocking_parties_on_every_executor() {
    common::deadline(common::LIMIT, || {
        on_each(|_| async {
            let b = Barrier::new(3).unwrap();
            let child = Process::spawn(barrier_party, b.clone()).unwrap();
            let b2 = b.clone();
            let thread = std::thread::spawn(move || barrier_party(b2));
            let mine = b.wait_async().await.unwrap();
            let mut all = vec![
                mine,
                thread.join().unwrap(),
                child.join_async().await.unwrap(),
            ];
            all.sort_unstable();
            assert_eq!(all, [0, 1, 2]);
            // Round two, with the async party last to arrive.
            let b2 = b.clone();
            let t1 = std::thread::spawn(move || barrier_party(b2));
            let b3 = b.clone();
            let t2 = std::thread::spawn(move || barrier_party(b3));
            while b.n_waiting() < 2 {
                std::thread::yield_now();
            }
            assert_eq!(b.wait_async().await.unwrap(), 2);
            t1.join().unwrap();
            t2.join().unwrap();
        });
    });
}

#[test]
fn a_dropped_barrier_wait_async_breaks_the_barrier() {
    common::deadline(common::LIMIT, || {
        run_on(0, async {
            let b = Barrier::new(2).unwrap();
            assert!(
                timeout(0, Duration::from_millis(30), b.wait_async())
                    .await
                    .is_none()
            );
            assert!(b.is_broken());
            let b2 = b.clone();
            let t = std::thread::spawn(move || b2.wait_timeout(Duration::from_secs(5)));
            assert_eq!(t.join().unwrap(), Err(BarrierError::Broken));
        });
    });
}

fn notify_after((cond, flag): (Condition, Value<u32>)) {
    std::thread::sleep(Duration::from_millis(60));
    let _g = cond.lock().unwrap();
    flag.set(1);
    cond.notify_all();
}

#[test]
fn condition_wait_async_on_every_executor() {
    common::deadline(common::LIMIT, || {
        for which in 0..4 {
            executors::run_local(which, async {
                let cond = Condition::new().unwrap();
                let flag = Value::new(0u32).unwrap();
                let child = Process::spawn(notify_after, (cond.clone(), flag.clone())).unwrap();
                {
                    let mut g = cond.lock().unwrap();
                    while flag.get() == 0 {
                        g = g.wait_async().await;
                    }
                    // The lock is held again: another thread cannot take it.
                    let taken = Arc::new(AtomicBool::new(false));
                    let (c, t) = (cond.clone(), Arc::clone(&taken));
                    let other = std::thread::spawn(move || {
                        let _g = c.lock().unwrap();
                        t.store(true, Ordering::SeqCst);
                    });
                    std::thread::sleep(Duration::from_millis(30));
                    assert!(!taken.load(Ordering::SeqCst));
                    drop(g);
                    other.join().unwrap();
                    assert!(taken.load(Ordering::SeqCst));
                }
                child.join_async().await.unwrap();
            });
        }
    });
}

#[test]
fn a_dropped_condition_wait_leaves_the_lock_free_and_the_notification_to_others() {
    common::deadline(common::LIMIT, || {
        run_on(2, async {
            let cond = Condition::new().unwrap();
            let mut rng = Rng(41);
            for _ in 0..50 {
                let g = cond.lock().unwrap();
                let wait = Duration::from_micros(rng.below(3000));
                assert!(timeout(2, wait, g.wait_async()).await.is_none());
                // Not held: another thread takes it at once.
                let c = cond.clone();
                std::thread::spawn(move || drop(c.lock().unwrap()))
                    .join()
                    .unwrap();
            }
            // A notification meant for a waiter goes to the one that stays.
            let woken = Arc::new(AtomicU32::new(0));
            let (c, w) = (cond.clone(), Arc::clone(&woken));
            let waiter = std::thread::spawn(move || {
                let g = c.lock().unwrap();
                let (_g, notified) = g.wait_timeout(Duration::from_secs(10));
                if notified {
                    w.fetch_add(1, Ordering::SeqCst);
                }
            });
            let g = cond.lock().unwrap();
            let dropped = g.wait_async();
            // Both wait (the dropped one registered when it was made).
            std::thread::sleep(Duration::from_millis(50));
            cond.notify(1);
            drop(dropped);
            waiter.join().unwrap();
            assert_eq!(woken.load(Ordering::SeqCst), 1);
        });
    });
}

fn add_many((v, n): (Value<u64>, u64)) {
    for _ in 0..n {
        *v.get_lock().unwrap() += 1;
    }
}

#[test]
fn value_and_array_get_lock_async_on_every_executor() {
    common::deadline(common::LIMIT, || {
        for which in 0..4 {
            executors::run_local(which, async {
                let v = Value::new(0u64).unwrap();
                let child = Process::spawn(add_many, (v.clone(), 2000)).unwrap();
                for _ in 0..2000 {
                    *v.get_lock_async().await.unwrap() += 1;
                }
                child.join_async().await.unwrap();
                assert_eq!(v.get(), 4000);
                let a = multiproc::Array::<u32>::new(4).unwrap();
                {
                    let mut g = a.get_lock_async().await.unwrap();
                    g.set(2, 7);
                }
                assert_eq!(a.to_vec(), [0, 0, 7, 0]);
                // Dropped while the lock is held: it takes nothing.
                let held = a.get_lock().unwrap();
                assert!(
                    timeout(which, Duration::from_millis(20), a.get_lock_async())
                        .await
                        .is_none()
                );
                drop(held);
                drop(a.get_lock_async().await.unwrap());
            });
        }
    });
}
