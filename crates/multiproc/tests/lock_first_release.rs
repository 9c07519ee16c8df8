//! The first release of a user's lock in a process starts its registration
//! for `membarrier` (which waits for an RCU grace period in a process with
//! threads: milliseconds), and must not hold the lock meanwhile. Alone in
//! its binary: this is the first release of the process.

use std::time::{Duration, Instant};

#[test]
fn the_first_release_in_a_threaded_process_does_not_hold_the_lock_for_milliseconds() {
    let lock = multiproc::Lock::new().unwrap();
    // A second thread that lives on (the harness has one anyway).
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let t = std::thread::spawn(move || rx.recv());
    std::thread::scope(|s| {
        let guard = lock.lock().unwrap();
        // Spins on `try_lock`: it sees the word freed within microseconds
        // of the release, whatever a sleeper's wake-up would cost.
        let spinner = s.spawn(|| {
            let give_up = Instant::now() + Duration::from_secs(5);
            loop {
                if let Ok(g) = lock.try_lock() {
                    let got = Instant::now();
                    drop(g);
                    return got;
                }
                assert!(Instant::now() < give_up, "the lock was never released");
                std::hint::spin_loop();
            }
        });
        std::thread::sleep(Duration::from_millis(5));
        let released = Instant::now();
        drop(guard);
        let spent = spinner.join().unwrap().saturating_duration_since(released);
        assert!(
            spent < Duration::from_millis(5),
            "the first release kept the lock about {spent:?} longer"
        );
    });
    drop(tx);
    let _ = t.join();
}
