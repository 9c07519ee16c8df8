//! A lock that one thread keeps taking is biased to it (its lock and unlock
//! then make no locked instruction; see `shm/biased.rs`), and another
//! process that wants it revokes the bias. These tests bias locks on
//! purpose (thousands of entries in a row) and check that every promise
//! holds across processes: exclusion, a holder killed inside the lock
//! (`OwnerDied`) or outside it (clean), conditions, and forked children.

mod common;

use std::time::{Duration, Instant};

use common::{LIMIT, deadline};
use multiproc::{
    Condition, Event, JoinError, Lock, OwnerDied, Process, Signal, StartMethod, Value,
};

/// Entries in a row that bias a lock (the library needs 1024).
const BIASING: u32 = 5000;

/// Takes and releases `lock` enough times to bias it to this thread, then
/// (if `inside`) takes it once more and keeps it, says so on `ready`, and
/// waits to be killed.
fn bias_then_wait((lock, ready, inside): (Lock, Event, bool)) {
    for _ in 0..BIASING {
        drop(lock.lock().unwrap());
    }
    let _held = inside.then(|| lock.lock().unwrap());
    ready.set();
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[test]
fn a_biased_holder_killed_inside_leaves_owner_died_and_one_killed_outside_leaves_it_clean() {
    deadline(LIMIT, || {
        for m in StartMethod::ALL {
            for inside in [true, false] {
                let (lock, ready) = (Lock::new().unwrap(), Event::new().unwrap());
                let holder = Process::builder()
                    .start_method(m)
                    .spawn(bias_then_wait, (lock.clone(), ready.clone(), inside))
                    .unwrap();
                assert!(ready.wait_timeout(Duration::from_secs(20)), "{m}: no start");
                assert_eq!(lock.is_locked(), inside, "{m}: inside {inside}");
                if !inside {
                    // The holder lives, and is not inside: taken at once
                    // (its bias revoked), and the holder's later entries
                    // would wait for this one.
                    let g = lock
                        .try_lock()
                        .unwrap_or_else(|e| panic!("{m}: a biased idle lock refused: {e}"));
                    assert!(lock.is_locked());
                    drop(g);
                }
                holder.kill().unwrap();
                match holder.join() {
                    Err(JoinError::Signaled { signal, .. }) => {
                        assert_eq!(signal, Signal::KILL, "{m}");
                    }
                    other => panic!("{m}: the holder was not killed: {other:?}"),
                }
                let t = Instant::now();
                match lock.lock() {
                    Err(OwnerDied) if inside => {}
                    Ok(_) if !inside => {}
                    Err(OwnerDied) => panic!("{m}: a holder killed outside the lock left it dirty"),
                    Ok(_) => panic!("{m}: a holder killed inside the lock left it clean"),
                }
                assert!(
                    t.elapsed() < Duration::from_secs(5),
                    "{m}: taking it took {:?}",
                    t.elapsed()
                );
            }
        }
    });
}

/// Adds 1 to `v` under its lock in `runs` runs of `per_run`, with a pause
/// between runs so that the other process gets the lock (and revokes the
/// bias this one has built).
fn add_in_runs((v, runs, per_run): (Value<u64>, u32, u32)) {
    for _ in 0..runs {
        for _ in 0..per_run {
            *v.get_lock().unwrap() += 1;
        }
        std::thread::sleep(Duration::from_micros(300));
    }
}

#[test]
fn processes_taking_the_lock_in_long_runs_never_lose_an_increment() {
    deadline(LIMIT, || {
        let v = Value::new(0u64).unwrap();
        let (runs, per_run) = (30, 3 * BIASING);
        let workers: Vec<_> = (0..2)
            .map(|_| {
                Process::builder()
                    .start_method(StartMethod::ForkServer)
                    .spawn(add_in_runs, (v.clone(), runs, per_run))
                    .unwrap()
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        assert_eq!(v.get(), 2 * u64::from(runs) * u64::from(per_run));
    });
}

/// Biases `cond`'s lock to this thread, then waits on the condition until
/// `flag` is set, and sets it back to 2.
fn wait_for_flag((cond, flag, ready): (Condition, Value<u32>, Event)) {
    for _ in 0..BIASING {
        drop(cond.lock().unwrap());
    }
    let g = cond.lock().unwrap();
    ready.set();
    let g = g.wait_for(|| flag.get() == 1);
    flag.set(2);
    drop(g);
}

#[test]
fn a_condition_whose_lock_was_biased_to_a_waiter_is_notified_across_processes() {
    deadline(LIMIT, || {
        let (cond, flag, ready) = (
            Condition::new().unwrap(),
            Value::new(0u32).unwrap(),
            Event::new().unwrap(),
        );
        let waiter = Process::builder()
            .start_method(StartMethod::ForkServer)
            .spawn(wait_for_flag, (cond.clone(), flag.clone(), ready.clone()))
            .unwrap();
        assert!(ready.wait_timeout(Duration::from_secs(20)));
        {
            let _g = cond.lock().unwrap();
            flag.set(1);
            cond.notify_all();
        }
        waiter.join().unwrap();
        assert_eq!(flag.get(), 2);
    });
}

/// Takes `lock` once and says it did (a forked child of a process whose
/// thread the lock is biased to).
fn take_once((lock, ready): (Lock, Event)) {
    drop(lock.lock().unwrap());
    ready.set();
}

#[test]
fn a_forked_child_takes_a_lock_biased_to_its_parent() {
    deadline(LIMIT, || {
        let (lock, ready) = (Lock::new().unwrap(), Event::new().unwrap());
        for _ in 0..BIASING {
            drop(lock.lock().unwrap());
        }
        let child = Process::builder()
            .start_method(StartMethod::Fork)
            .spawn(take_once, (lock.clone(), ready.clone()))
            .unwrap();
        assert!(ready.wait_timeout(Duration::from_secs(20)));
        child.join().unwrap();
        // The parent takes it again after the child revoked its bias.
        for _ in 0..BIASING {
            drop(lock.lock().unwrap());
        }
        assert!(!lock.is_locked());
    });
}
