//! A release wakes one sleeping locker; these tests make that locker leave
//! without the lock (a deadline that passed while it could not run, an
//! async locker's future dropped after its wake-up), and check that the
//! wake-up is passed on: the next locker must not sleep on while the lock
//! is free (until its 50 ms re-check, as it did before). The two tests take
//! turns (a real-time hog in one would delay the other).

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Wake, Waker};
use std::time::{Duration, Instant};

/// One test at a time.
static TURN: Mutex<()> = Mutex::new(());

struct Flag(AtomicBool);
impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::SeqCst);
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Pins the calling thread to processor `cpu`; false if it may not run
/// there.
fn pin_to(cpu: usize) -> bool {
    // SAFETY: a zeroed cpu_set_t is valid; affinity of the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

/// Makes the calling thread real-time (`SCHED_FIFO`, priority 1); false if
/// refused (it needs root or `CAP_SYS_NICE`).
fn real_time() -> bool {
    // SAFETY: sets the calling thread's policy; plain C struct.
    unsafe {
        let p = libc::sched_param { sched_priority: 1 };
        libc::sched_setscheduler(0, libc::SCHED_FIFO, &p) == 0
    }
}

/// An async locker's readiness wait takes the release's single wake-up,
/// finds its future still wanted (so it does not pass it on), wakes the
/// task; the task is dropped before its next poll (a `select!` or a
/// timeout that fired meanwhile). The dropped future passes the wake-up
/// on: the blocking locker behind it gets the lock at once.
#[test]
fn an_async_locker_dropped_after_its_wake_up_passes_it_on() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let lock = multiproc::Lock::new().unwrap();
    let guard = lock.lock().unwrap();
    let flag = Arc::new(Flag(AtomicBool::new(false)));
    let waker = Waker::from(Arc::clone(&flag));
    let mut cx = Context::from_waker(&waker);
    let mut fut = Box::pin(lock.lock_async());
    // 64 eager polls, then the readiness wait goes to a waiter thread.
    for _ in 0..65 {
        assert!(fut.as_mut().poll(&mut cx).is_pending());
    }
    // The readiness wait lasts a slice (50 ms) at most: the release comes
    // well within it.
    std::thread::sleep(Duration::from_millis(3));
    std::thread::scope(|s| {
        let blocked = s.spawn(|| {
            let g = lock.lock_timeout(Duration::from_secs(5)).unwrap();
            let at = Instant::now();
            drop(g);
            at
        });
        // The blocking locker spins, yields and sleeps behind the waiter
        // thread in the futex's queue.
        std::thread::sleep(Duration::from_millis(3));
        flag.0.store(false, Ordering::SeqCst);
        drop(guard);
        let give_up = Instant::now() + Duration::from_secs(5);
        while !flag.0.load(Ordering::SeqCst) {
            assert!(Instant::now() < give_up, "the task was never woken");
            std::thread::sleep(Duration::from_micros(50));
        }
        let dropped = Instant::now();
        drop(fut);
        let taken = blocked.join().unwrap();
        let late = taken.saturating_duration_since(dropped);
        assert!(
            late < Duration::from_millis(20),
            "the lock was free for {late:?} while a locker slept"
        );
    });
}

/// A blocking locker with a deadline is woken by a release just before its
/// deadline, but runs only after it (preempted: here a real-time hog on its
/// processor), finds the lock taken again by a barging holder and returns
/// `Timeout`. It passes the wake-up it took on: otherwise the flag would
/// stay cleared, the holder's next release would wake nobody, and the
/// second locker would sleep to its re-check with the lock free.
#[test]
fn a_woken_locker_that_times_out_passes_its_wake_up_on() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let lock = multiproc::Lock::new().unwrap();
    // A real-time thread on processor 0 keeps the first locker from
    // running: where that is not allowed (no root, one processor), the
    // scene cannot be set.
    let allowed = std::thread::spawn(|| pin_to(0) && real_time());
    if !allowed.join().unwrap_or(false) || !pin_to(1) {
        eprintln!("skipped: needs processors 0 and 1 and SCHED_FIFO (root or CAP_SYS_NICE)");
        return;
    }
    let guard = lock.lock().unwrap();
    let start = Instant::now();
    let at = |ms: u64| start + Duration::from_millis(ms);
    let until = |t: Instant| {
        while Instant::now() < t {
            std::thread::sleep(Duration::from_micros(200));
        }
    };
    let hogging = AtomicBool::new(false);
    std::thread::scope(|s| {
        // L1: deadline at 40 ms, asleep from about 1 ms, first in the queue.
        let first = s.spawn(|| {
            assert!(pin_to(0));
            lock.lock_timeout(Duration::from_millis(40)).is_ok()
        });
        until(at(24));
        // L2: asleep from about 25 ms (its re-check at about 75 ms).
        let second = s.spawn(|| {
            assert!(pin_to(1));
            let g = lock.lock_timeout(Duration::from_secs(5)).unwrap();
            let t = Instant::now();
            drop(g);
            t
        });
        until(at(33));
        // A real-time hog on L1's processor from 33 to 45 ms.
        let hog = s.spawn(|| {
            let fifo = pin_to(0) && real_time();
            hogging.store(true, Ordering::SeqCst);
            while Instant::now() < at(45) {
                std::hint::spin_loop();
            }
            fifo
        });
        while !hogging.load(Ordering::SeqCst) {
            std::hint::spin_loop();
        }
        until(at(35));
        // The release wakes L1 (which cannot run); the holder barges.
        drop(guard);
        let guard = lock.lock().unwrap();
        assert!(hog.join().unwrap(), "SCHED_FIFO refused: no preemption");
        assert!(!first.join().unwrap(), "L1 was expected to time out");
        until(at(50));
        let released = Instant::now();
        drop(guard);
        let taken = second.join().unwrap();
        let late = taken.duration_since(released);
        assert!(
            late < Duration::from_millis(10),
            "the lock was free for {late:?} while a locker slept"
        );
    });
}
