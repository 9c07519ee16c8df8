//! A barrier's action and default timeout (Python's `Barrier(parties,
//! action, timeout)`), under every start method.

mod common;

use std::time::{Duration, Instant};

use common::{LIMIT, deadline};
use multiproc::{Barrier, BarrierError, Process, RawValue, StartMethod};

const ROUNDS: u32 = 20;

/// Counts trips; a second action running at the same time as this one
/// would lose an increment (checked by the total).
fn count_trip(trips: &RawValue<u32>) {
    let v = trips.get();
    std::thread::yield_now();
    trips.set(v + 1);
}

/// Waits `ROUNDS` times; after round `r` the action must have run exactly
/// `r + 1` times: once per trip, and before any party was released (the
/// next round's action cannot run before this party arrives again).
fn party((b, trips): (Barrier, RawValue<u32>)) -> Result<(), String> {
    let t = trips.clone();
    let b = b.with_action(move || count_trip(&t));
    for r in 0..ROUNDS {
        b.wait().map_err(|e| format!("round {r}: {e}"))?;
        let seen = trips.get();
        if seen != r + 1 {
            return Err(format!("after round {r} the action had run {seen} times"));
        }
    }
    Ok(())
}

#[test]
fn the_action_runs_once_per_trip_before_any_party_is_released() {
    deadline(LIMIT, || {
        for m in StartMethod::ALL {
            let trips = RawValue::new(0u32).unwrap();
            let t = trips.clone();
            let b = Barrier::builder(3)
                .action(move || count_trip(&t))
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap();
            let kids: Vec<_> = (0..2)
                .map(|_| {
                    Process::builder()
                        .start_method(m)
                        .spawn(party, (b.clone(), trips.clone()))
                        .unwrap()
                })
                .collect();
            // The parent's handle already has the action: `with_action`
            // again replaces it with the same.
            party((b.clone(), trips.clone())).unwrap();
            for k in kids {
                k.join().unwrap().unwrap_or_else(|e| panic!("{m}: {e}"));
            }
            assert_eq!(trips.get(), ROUNDS, "{m}");
            assert!(!b.is_broken(), "{m}");
        }
    });
}

fn panicking_party(b: Barrier) -> Result<usize, BarrierError> {
    common::silence_stderr();
    b.with_action(|| panic!("the action fails (on purpose)"))
        .wait()
}

fn until_waiting(b: &Barrier, n: usize) {
    let end = Instant::now() + Duration::from_secs(20);
    while b.n_waiting() < n {
        assert!(Instant::now() < end, "parties never arrived");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn an_action_that_panics_breaks_the_barrier() {
    deadline(LIMIT, || {
        for m in StartMethod::ALL {
            // A child trips the barrier and its action panics: it gets
            // ActionPanicked, the party waiting in the parent Broken.
            let b = Barrier::builder(2).action(|| ()).build().unwrap();
            let waiter = {
                let b = b.clone();
                std::thread::spawn(move || b.wait())
            };
            until_waiting(&b, 1);
            let child = Process::builder()
                .start_method(m)
                .spawn(panicking_party, b.clone())
                .unwrap();
            assert_eq!(
                child.join().unwrap(),
                Err(BarrierError::ActionPanicked),
                "{m}"
            );
            assert_eq!(waiter.join().unwrap(), Err(BarrierError::Broken), "{m}");
            assert!(b.is_broken(), "{m}");

            // Reset, then the parent trips it with a panicking action: the
            // child waiting gets Broken.
            b.reset();
            let child = Process::builder()
                .start_method(m)
                .spawn(panicking_party, b.clone())
                .unwrap();
            until_waiting(&b, 1);
            let mine = b
                .clone()
                .with_action(|| panic!("the action fails (on purpose)"))
                .wait();
            assert_eq!(mine, Err(BarrierError::ActionPanicked), "{m}");
            assert_eq!(child.join().unwrap(), Err(BarrierError::Broken), "{m}");
        }
    });
}

fn plain_wait(b: Barrier) -> Result<usize, BarrierError> {
    b.wait()
}

#[test]
fn a_handle_without_the_action_that_trips_the_barrier_breaks_it() {
    deadline(LIMIT, || {
        for m in StartMethod::ALL {
            let ran = RawValue::new(0u32).unwrap();
            let r = ran.clone();
            let b = Barrier::builder(2)
                .action(move || r.set(r.get() + 1))
                .build()
                .unwrap();
            let waiter = {
                let b = b.clone();
                std::thread::spawn(move || b.wait())
            };
            until_waiting(&b, 1);
            // The child's handle came through its argument: no action.
            let child = Process::builder()
                .start_method(m)
                .spawn(plain_wait, b.clone())
                .unwrap();
            assert_eq!(child.join().unwrap(), Err(BarrierError::NoAction), "{m}");
            assert_eq!(waiter.join().unwrap(), Err(BarrierError::Broken), "{m}");
            assert_eq!(ran.get(), 0, "{m}: an action ran");
        }
    });
}

fn timeout_and_wait(b: Barrier) -> (Option<Duration>, Result<usize, BarrierError>) {
    (b.timeout(), b.wait())
}

#[test]
fn the_default_timeout_travels_with_the_barrier() {
    deadline(LIMIT, || {
        for m in StartMethod::ALL {
            let t = Duration::from_millis(50);
            let b = Barrier::builder(2).timeout(t).build().unwrap();
            assert_eq!(b.timeout(), Some(t));
            let child = Process::builder()
                .start_method(m)
                .spawn(timeout_and_wait, b.clone())
                .unwrap();
            assert_eq!(
                child.join().unwrap(),
                (Some(t), Err(BarrierError::TimedOut)),
                "{m}"
            );
            assert!(b.is_broken(), "{m}");
            // wait() in this process uses the default too.
            b.reset();
            let start = Instant::now();
            assert_eq!(b.wait(), Err(BarrierError::TimedOut), "{m}");
            assert!(start.elapsed() >= t, "{m}: timed out early");
            // A barrier without one has none.
            assert_eq!(Barrier::new(2).unwrap().timeout(), None);
        }
    });
}

#[test]
fn a_timeout_while_the_action_runs_does_not_break_the_round() {
    // As in Python, whose waiter needs the lock the action holds: every
    // party has arrived, so the round ends when the action does.
    deadline(LIMIT, || {
        let b = Barrier::builder(2)
            .action(|| std::thread::sleep(Duration::from_millis(200)))
            .build()
            .unwrap();
        let waiter = {
            let b = b.clone();
            std::thread::spawn(move || b.wait_timeout(Duration::from_millis(50)))
        };
        until_waiting(&b, 1);
        assert!(b.wait().is_ok());
        assert!(waiter.join().unwrap().is_ok());
        assert!(!b.is_broken());
    });
}

#[test]
fn an_abort_in_the_action_fails_the_round() {
    deadline(LIMIT, || {
        let b = Barrier::builder(2).action(|| ()).build().unwrap();
        // The action may use the barrier (it runs without its lock).
        let handle = b.clone();
        let b = b.with_action(move || handle.abort());
        let waiter = {
            let b = b.clone();
            std::thread::spawn(move || b.wait())
        };
        until_waiting(&b, 1);
        assert_eq!(b.wait(), Err(BarrierError::Broken));
        assert_eq!(waiter.join().unwrap(), Err(BarrierError::Broken));
    });
}

fn exit_in_the_action(b: Barrier) -> Result<usize, BarrierError> {
    b.with_action(|| std::process::exit(7)).wait()
}

#[test]
fn a_party_that_dies_in_the_action_breaks_the_barrier() {
    deadline(LIMIT, || {
        for m in StartMethod::ALL {
            let b = Barrier::builder(2).action(|| ()).build().unwrap();
            let waiter = {
                let b = b.clone();
                std::thread::spawn(move || b.wait())
            };
            until_waiting(&b, 1);
            let child = Process::builder()
                .start_method(m)
                .spawn(exit_in_the_action, b.clone())
                .unwrap();
            assert!(
                matches!(child.join(), Err(multiproc::JoinError::Exited { code: 7 })),
                "{m}"
            );
            // The waiter notices the dead party instead of hanging.
            assert_eq!(waiter.join().unwrap(), Err(BarrierError::Broken), "{m}");
            assert!(b.is_broken(), "{m}");
        }
    });
}
