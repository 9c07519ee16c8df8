//! Async forms of the manager's proxies on every executor,
//! and futures dropped at random points that lose no value and leave no
//! lock held.

mod common;
#[path = "common/executors.rs"]
mod executors;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use executors::{Rng, on_each, run_on, timeout};
use multiproc::Manager;

#[test]
fn queue_and_lock_proxies_on_every_executor() {
    common::deadline(common::LIMIT, || {
        let manager = Manager::start().unwrap();
        let q = manager.queue::<u64>().unwrap();
        let lock = manager.lock().unwrap();
        on_each(|_| {
            let (q, lock) = (q.clone(), lock.clone());
            async move {
                let theirs = q.clone();
                let putter = std::thread::spawn(move || {
                    for i in 0..20 {
                        std::thread::sleep(Duration::from_millis(2));
                        theirs.put(i).unwrap();
                    }
                });
                for i in 0..20 {
                    assert_eq!(q.get_async().await.unwrap(), i);
                }
                putter.join().unwrap();
                q.put_async(7).await.unwrap();
                assert_eq!(q.get().unwrap(), 7);
                let l2 = lock.clone();
                let holder = std::thread::spawn(move || {
                    let g = l2.lock().unwrap();
                    std::thread::sleep(Duration::from_millis(100));
                    drop(g);
                });
                std::thread::sleep(Duration::from_millis(20));
                let g = lock.lock_async().await.unwrap();
                assert!(lock.try_lock().is_err());
                g.release().unwrap();
                holder.join().unwrap();
            }
        });
        manager.shutdown().unwrap();
    });
}

#[test]
fn dropped_proxy_futures_lose_no_value_and_hold_no_lock() {
    common::deadline(common::LIMIT, || {
        let manager = Manager::start().unwrap();
        for which in [0, 2] {
            let q = manager.queue::<u64>().unwrap();
            let lock = manager.lock().unwrap();
            run_on(which, async move {
                let n = 150u64;
                let theirs = q.clone();
                let putter = std::thread::spawn(move || {
                    let mut rng = Rng(77);
                    for i in 0..n {
                        theirs.put(i).unwrap();
                        std::thread::sleep(Duration::from_micros(rng.below(2000)));
                    }
                });
                let mut rng = Rng(5 + which as u64);
                let (mut got, mut dropped) = (Vec::new(), 0);
                for _ in 0..120 {
                    let wait = Duration::from_micros(rng.below(3000));
                    match timeout(which, wait, q.get_async()).await {
                        Some(v) => got.push(v.unwrap()),
                        None => dropped += 1,
                    }
                }
                putter.join().unwrap();
                // A value a dropped call had taken is put back (at the end)
                // by the waiter thread: give it a moment.
                loop {
                    match q.get_timeout(Duration::from_millis(300)) {
                        Ok(v) => got.push(v),
                        Err(multiproc::GetTimeoutError::Timeout) => break,
                        Err(e) => panic!("{e}"),
                    }
                }
                assert!(dropped > 0);
                let unique: BTreeSet<u64> = got.iter().copied().collect();
                assert_eq!(got.len() as u64, n, "{dropped} dropped");
                assert_eq!(unique, (0..n).collect::<BTreeSet<_>>());

                let stop = Arc::new(AtomicBool::new(false));
                let (l, s) = (lock.clone(), Arc::clone(&stop));
                let holder = std::thread::spawn(move || {
                    let mut rng = Rng(9);
                    while !s.load(Ordering::Relaxed) {
                        let g = l.lock().unwrap();
                        std::thread::sleep(Duration::from_micros(1000 + rng.below(3000)));
                        drop(g);
                        std::thread::sleep(Duration::from_micros(500));
                    }
                });
                let (mut taken, mut dropped) = (0u64, 0u64);
                // 60 rounds at random points, then more until both
                // outcomes were seen: a call is a round trip to the
                // manager, which on a loaded machine takes longer than any
                // of the first waits (CI once took none of 60), so the
                // waits after those grow while nothing was taken (and are
                // nil while nothing was dropped).
                for round in 0u64..200 {
                    if round >= 60 && taken > 0 && dropped > 0 {
                        break;
                    }
                    let wait = match round.checked_sub(60) {
                        Some(late) if taken == 0 => {
                            Duration::from_micros((rng.below(3000) + late * 2000).min(200_000))
                        }
                        Some(_) if dropped == 0 => Duration::ZERO,
                        _ => Duration::from_micros(rng.below(3000)),
                    };
                    match timeout(which, wait, lock.lock_async()).await {
                        Some(g) => {
                            taken += 1;
                            g.unwrap().release().unwrap();
                        }
                        None => dropped += 1,
                    }
                    std::thread::sleep(Duration::from_micros(500));
                }
                stop.store(true, Ordering::Relaxed);
                holder.join().unwrap();
                assert!(dropped > 0 && taken > 0, "{taken} {dropped}");
                // A call in flight that acquired for a dropped future
                // releases again, on its waiter thread: soon free.
                let mut free = false;
                for _ in 0..100 {
                    if let Ok(g) = lock.try_lock() {
                        g.release().unwrap();
                        free = true;
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                assert!(free, "a dropped acquire_async left the lock held");
            });
        }
        manager.shutdown().unwrap();
    });
}

#[test]
fn event_semaphore_barrier_condition_and_join_proxies_on_every_executor() {
    common::deadline(common::LIMIT, || {
        let manager = Manager::start().unwrap();
        let (event, sem) = (manager.event().unwrap(), manager.semaphore(0).unwrap());
        let (barrier, cond) = (manager.barrier(2).unwrap(), manager.condition().unwrap());
        let jobs = manager.joinable_queue::<u32>().unwrap();
        on_each(|_| {
            let (event, sem, barrier) = (event.clone(), sem.clone(), barrier.clone());
            let (cond, jobs) = (cond.clone(), jobs.clone());
            async move {
                event.clear().unwrap();
                let (e2, s2, b2) = (event.clone(), sem.clone(), barrier.clone());
                let j2 = jobs.clone();
                let helper = std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(30));
                    e2.set().unwrap();
                    s2.release().unwrap();
                    let index = b2.wait().unwrap();
                    let _: u32 = j2.get().unwrap();
                    j2.task_done().unwrap();
                    index
                });
                event.wait_async().await.unwrap();
                sem.acquire_async().await.unwrap();
                assert_eq!(sem.value().unwrap(), 0);
                let mine = barrier.wait_async().await.unwrap();
                let guard = cond.lock_async().await.unwrap();
                let notifier = {
                    let c3 = cond.clone();
                    std::thread::spawn(move || {
                        std::thread::sleep(Duration::from_millis(50));
                        c3.lock().unwrap().notify_all().unwrap();
                    })
                };
                let guard = guard.wait_async().await.unwrap();
                // The lock is held again: another thread cannot take it.
                let c4 = cond.clone();
                assert!(
                    std::thread::spawn(move || c4.try_lock().is_err())
                        .join()
                        .unwrap()
                );
                guard.release().unwrap();
                notifier.join().unwrap();
                jobs.put(1).unwrap();
                jobs.join_async().await.unwrap();
                let theirs = helper.join().unwrap();
                let mut both = [mine, theirs];
                both.sort_unstable();
                assert_eq!(both, [0, 1]);
            }
        });
        manager.shutdown().unwrap();
    });
}

#[test]
fn dropped_waits_take_no_unit_keep_no_lock_and_break_the_barrier() {
    common::deadline(common::LIMIT, || {
        let manager = Manager::start().unwrap();
        for which in [0, 2, 3] {
            // A semaphore unit given while the acquire is dropped is kept.
            let sem = manager.semaphore(0).unwrap();
            let fut = sem.acquire_async();
            let none = run_on(which, timeout(which, Duration::from_millis(50), fut));
            assert!(none.is_none());
            sem.release().unwrap();
            std::thread::sleep(Duration::from_millis(300));
            assert_eq!(sem.value().unwrap(), 1, "a dropped acquire took the unit");
            // A condition wait dropped mid-flight leaves the lock released.
            let cond = manager.condition().unwrap();
            let c = cond.clone();
            run_on(which, async move {
                let guard = c.lock_async().await.unwrap();
                let waited = timeout(which, Duration::from_millis(30), guard.wait_async()).await;
                assert!(waited.is_none());
            });
            let c = cond.clone();
            assert!(
                std::thread::spawn(move || c.lock_timeout(Duration::from_secs(5)).is_ok())
                    .join()
                    .unwrap(),
                "a dropped condition wait kept the lock"
            );
            // A barrier wait dropped after it arrived breaks the barrier.
            let barrier = manager.barrier(2).unwrap();
            let b = barrier.clone();
            let none = run_on(which, async move {
                timeout(which, Duration::from_millis(50), b.wait_async()).await
            });
            assert!(none.is_none());
            assert!(common::eventually(Duration::from_secs(5), || barrier
                .is_broken()
                .unwrap()));
        }
        manager.shutdown().unwrap();
    });
}
