//! Holders killed on purpose: a lock whose holder dies is recovered with
//! `OwnerDied`, never a deadlock; a barrier whose party dies is broken; an
//! invariant protected by a lock survives holders killed at random points
//! once the survivor repairs it.

mod common;

use std::time::{Duration, Instant};

use common::{LIMIT, deadline};
use multiproc::{Array, Barrier, BarrierError, Event, Lock, Process, StartMethod};

fn hold_forever((lock, held): (Lock, Event)) {
    let _g = lock.lock().unwrap();
    held.set();
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[test]
fn a_lock_held_by_a_killed_process_is_recovered() {
    deadline(LIMIT, || {
        for m in StartMethod::ALL {
            let (lock, held) = (Lock::new().unwrap(), Event::new().unwrap());
            let holder = Process::builder()
                .start_method(m)
                .spawn(hold_forever, (lock.clone(), held.clone()))
                .unwrap();
            assert!(held.wait_timeout(Duration::from_secs(20)));
            holder.kill().unwrap();
            let _ = holder.join();
            let t = Instant::now();
            match lock.lock() {
                Err(multiproc::OwnerDied) => {}
                Ok(_) => panic!("{m}: a dead holder's lock came back clean"),
            }
            // Told once, told again: nobody has repaired the data yet.
            assert_eq!(
                lock.try_lock().err(),
                Some(multiproc::TryLockError::Failed(multiproc::OwnerDied))
            );
            assert!(!lock.is_locked(), "{m}: OwnerDied left the lock held");
            let guard = lock.lock_recover();
            assert!(guard.owner_died());
            assert!(lock.is_locked());
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "{m}: recovery took {:?}",
                t.elapsed()
            );
            guard.make_consistent();
            assert!(!guard.owner_died());
            drop(guard);
            assert!(
                lock.lock().is_ok(),
                "{m}: still inconsistent after make_consistent"
            );
        }
    });
}

fn wait_at(b: Barrier) -> Result<usize, BarrierError> {
    b.wait()
}

#[test]
fn a_barrier_whose_waiting_party_dies_is_broken() {
    deadline(LIMIT, || {
        let b = Barrier::new(3).unwrap();
        let victim = Process::builder()
            .start_method(StartMethod::ForkServer)
            .spawn(wait_at, b.clone())
            .unwrap();
        let other = b.clone();
        let t = std::thread::spawn(move || other.wait());
        let start = Instant::now();
        while b.n_waiting() < 2 {
            assert!(start.elapsed() < Duration::from_secs(20));
            std::thread::sleep(Duration::from_millis(2));
        }
        victim.kill().unwrap();
        let _ = victim.join();
        assert_eq!(t.join().unwrap(), Err(BarrierError::Broken));
        assert!(b.is_broken());
    });
}

/// Keeps `[a, b]` equal: increments `a`, works a little, then `b`, all
/// under the lock; repairs the pair when it inherits it from a dead holder.
fn keep_equal((pair, rounds): (Array<u64>, u64)) -> u64 {
    let mut repairs = 0;
    for _ in 0..rounds {
        let mut g = match pair.get_lock() {
            Ok(g) => g,
            Err(multiproc::OwnerDied) => {
                repairs += 1;
                pair.get_lock_recover()
            }
        };
        if g[0] != g[1] {
            let a = g[0];
            g[1] = a;
        }
        g.make_consistent();
        g[0] += 1;
        std::hint::black_box(&mut g[..]);
        g[1] += 1;
    }
    repairs
}

#[test]
fn an_invariant_survives_holders_killed_at_random_points() {
    deadline(LIMIT * 2, || {
        let mut seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1;
        let mut next = move |below: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % below
        };
        for round in 0..5 {
            let pair = Array::<u64>::new(2).unwrap();
            let workers: Vec<_> = (0..3)
                .map(|_| {
                    Process::builder()
                        .start_method(StartMethod::ForkServer)
                        .spawn(keep_equal, (pair.clone(), 200_000))
                        .unwrap()
                })
                .collect();
            std::thread::sleep(Duration::from_millis(5 + next(40)));
            let victim = next(3) as usize;
            workers[victim].kill().unwrap();
            for (i, w) in workers.into_iter().enumerate() {
                let r = w.join();
                if i != victim {
                    r.unwrap();
                }
            }
            // Survivors finished, repairing whatever the victim left.
            let g = pair.get_lock_recover();
            assert_eq!(g[0], g[1], "round {round}: the invariant is broken");
        }
    });
}
