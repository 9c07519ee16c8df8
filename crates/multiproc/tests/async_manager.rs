//! Async forms of the manager's queue and lock proxies on every executor,
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
                    let g = l2.acquire().unwrap();
                    std::thread::sleep(Duration::from_millis(100));
                    drop(g);
                });
                std::thread::sleep(Duration::from_millis(20));
                let g = lock.acquire_async().await.unwrap();
                assert!(lock.try_acquire().unwrap().is_none());
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
                while let Some(v) = q.get_timeout(Duration::from_millis(300)).unwrap() {
                    got.push(v);
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
                        let g = l.acquire().unwrap();
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
                    match timeout(which, wait, lock.acquire_async()).await {
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
                    if let Some(g) = lock.try_acquire().unwrap() {
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
