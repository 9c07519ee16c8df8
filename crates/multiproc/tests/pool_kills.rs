//! The pool under kills from outside, at random instants and while
//! workers start: a killed worker fails at most the item it was running,
//! the pool always gets its full set of workers back, and only a worker
//! place that keeps failing to start (a restart storm) or an initializer
//! that fails by itself breaks it. Every test has a deadline and checks
//! that no worker is left behind.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{LIMIT, assert_gone, deadline};
use multiproc::{Event, ExitStatus, Pool, PoolError, Signal, StartMethod, TaskError};

/// How long workers are killed at random in each test.
const KILLING: Duration = Duration::from_secs(2);

/// How long the initializer takes in the random-kill tests: as one that
/// loads something would, so that some kills land while a worker starts.
const START_MS: u64 = 10;

/// Items per map, as in the report.
const ITEMS: u64 = 10_000;

/// A small item that takes a little time, so kills land mid-map.
fn tick(x: u64) -> u64 {
    std::thread::sleep(Duration::from_micros(50));
    x * 3
}

fn square(x: u64) -> u64 {
    x * x
}

fn pids(pool: &Pool) -> Vec<i32> {
    pool.stats().iter().map(|s| s.pid).collect()
}

/// Drops `pool` and checks its workers are gone.
fn finish(pool: Pool) {
    let pids = pids(&pool);
    drop(pool);
    for pid in pids.into_iter().filter(|p| *p != 0) {
        assert_gone(pid);
    }
}

/// A small xorshift generator: the kill instants and victims.
struct Rng(u64);

impl Rng {
    fn seeded() -> Rng {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        Rng(t | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Sets the flag when dropped, so the killer stops even when an assertion
/// of the test fails.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Runs `round` again and again for [`KILLING`] while another thread
/// SIGKILLs a random worker of `pool` (whatever it is doing: running a
/// task, idle, or starting) every 5 to 50 ms. Returns how many it killed.
fn under_random_kills(pool: &Pool, mut round: impl FnMut()) -> u32 {
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let killer = s.spawn(|| {
            let mut rng = Rng::seeded();
            let mut kills = 0;
            while !stop.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(5 + rng.below(46)));
                let live: Vec<i32> = pids(pool).into_iter().filter(|p| *p != 0).collect();
                if live.is_empty() {
                    continue;
                }
                let victim = live[rng.below(live.len() as u64) as usize];
                if common::send_signal(victim, libc::SIGKILL) {
                    kills += 1;
                }
            }
            kills
        });
        let guard = StopOnDrop(&stop);
        let end = Instant::now() + KILLING;
        while Instant::now() < end {
            round();
        }
        drop(guard);
        killer.join().unwrap()
    })
}

fn is_sigkill_death(e: &TaskError) -> bool {
    matches!(
        e,
        TaskError::WorkerDied {
            status: ExitStatus::Signaled {
                signal: Signal::KILL,
                ..
            },
            ..
        }
    )
}

/// Waits until every worker place holds a live process that is ready (the
/// last kill may still be on its way to the scheduler), then checks that
/// a fresh map runs every item.
fn assert_whole_again(pool: &Pool) {
    let alive = |pid: i32| matches!(common::state(pid), Some(c) if c != 'Z' && c != 'X');
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let stats = pool.stats();
        if stats.iter().all(|s| s.pid != 0 && s.ready && alive(s.pid)) {
            break;
        }
        assert!(
            Instant::now() < end,
            "the pool did not get its workers back: {stats:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let want: Vec<u64> = (0..ITEMS).map(|x| x * 3).collect();
    assert_eq!(pool.map(tick, 0..ITEMS).unwrap(), want);
}

#[test]
fn random_kills_during_maps_never_break_the_pool() {
    deadline(LIMIT, || {
        let pool = Pool::builder()
            .workers(2)
            .start_method(StartMethod::Fork)
            .initializer(slow_start, START_MS)
            .build()
            .unwrap();
        let want: Vec<u64> = (0..ITEMS).map(|x| x * 3).collect();
        let (mut whole, mut died) = (0, 0);
        let kills = under_random_kills(&pool, || match pool.map(tick, 0..ITEMS) {
            Ok(v) => {
                assert_eq!(v, want);
                whole += 1;
            }
            // `map` stops at the first failure: a killed worker's item.
            Err(e) => {
                assert!(is_sigkill_death(&e), "{e}");
                died += 1;
            }
        });
        assert!(kills >= 10, "only {kills} kills");
        assert!(died > 0, "{kills} kills failed no map ({whole} whole)");
        assert_whole_again(&pool);
        finish(pool);
    });
}

#[test]
fn random_kills_during_map_results_fail_only_the_running_items() {
    deadline(LIMIT, || {
        let pool = Pool::builder()
            .workers(2)
            .start_method(StartMethod::Spawn)
            .initializer(slow_start, START_MS)
            .build()
            .unwrap();
        let mut died = 0;
        let kills = under_random_kills(&pool, || {
            let out = pool.map_results(tick, 0..ITEMS);
            assert_eq!(out.len(), ITEMS as usize);
            for (i, r) in out.iter().enumerate() {
                match r {
                    Ok(v) => assert_eq!(*v, i as u64 * 3),
                    Err(e) => {
                        assert!(is_sigkill_death(e), "item {i}: {e}");
                        died += 1;
                    }
                }
            }
        });
        assert!(kills >= 10, "only {kills} kills");
        // Each kill fails at most the one item its worker was running.
        assert!(
            died > 0 && died <= kills,
            "{died} items failed in {kills} kills"
        );
        assert_whole_again(&pool);
        finish(pool);
    });
}

#[test]
fn random_kills_during_submits_fail_only_the_running_tasks() {
    deadline(LIMIT, || {
        let pool = Pool::builder()
            .workers(2)
            .start_method(StartMethod::ForkServer)
            .initializer(slow_start, START_MS)
            .build()
            .unwrap();
        let mut died = 0;
        let kills = under_random_kills(&pool, || {
            let handles: Vec<_> = (0..ITEMS).map(|x| pool.submit(tick, x)).collect();
            for (i, h) in handles.into_iter().enumerate() {
                match h.get() {
                    Ok(v) => assert_eq!(v, i as u64 * 3),
                    Err(e) => {
                        assert!(is_sigkill_death(&e), "task {i}: {e}");
                        died += 1;
                    }
                }
            }
        });
        assert!(kills >= 10, "only {kills} kills");
        assert!(
            died > 0 && died <= kills,
            "{died} tasks failed in {kills} kills"
        );
        assert_whole_again(&pool);
        finish(pool);
    });
}

fn slow_start(ms: u64) -> Result<(), String> {
    std::thread::sleep(Duration::from_millis(ms));
    Ok(())
}

/// Waits for a process in worker place `index` that is not one of `seen`.
fn next_process(pool: &Pool, index: usize, seen: &[i32]) -> (i32, bool) {
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let s = &pool.stats()[index];
        if s.pid != 0 && !seen.contains(&s.pid) {
            return (s.pid, s.ready);
        }
        assert!(Instant::now() < end, "no new process in place {index}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn a_worker_killed_while_starting_is_started_again() {
    deadline(LIMIT, || {
        for m in StartMethod::ALL {
            // The initializer takes 300 ms: a replacement is killed well
            // before it is ready.
            let pool = Pool::builder()
                .workers(2)
                .start_method(m)
                .initializer(slow_start, 300)
                .build()
                .unwrap();
            let first = pids(&pool);
            let mut victims = vec![first[0]];
            assert!(common::send_signal(first[0], libc::SIGKILL));
            // Five replacements in a row, each killed as soon as it appears.
            for _ in 0..5 {
                let (pid, ready) = next_process(&pool, 0, &victims);
                assert!(!ready, "{m}: the replacement is still starting");
                assert!(common::send_signal(pid, libc::SIGKILL));
                victims.push(pid);
            }
            // The sixth is left alone: it becomes ready and works.
            let (last, _) = next_process(&pool, 0, &victims);
            assert_whole_again(&pool);
            let stats = pool.stats();
            assert_eq!(stats[0].pid, last, "{m}");
            assert_eq!(stats[0].restarts, 6, "{m}: {stats:?}");
            assert_eq!(
                stats[1].pid, first[1],
                "{m}: the other worker was untouched"
            );
            for pid in victims {
                assert_gone(pid);
            }
            finish(pool);
        }
    });
}

/// Aborts (SIGABRT, a crash of the initializer itself, not a returned
/// error) without leaving a core file.
fn abort_without_core() -> ! {
    let none = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: setrlimit reads the struct we pass, which lives on our stack.
    unsafe { libc::setrlimit(libc::RLIMIT_CORE, &none) };
    std::process::abort()
}

fn abort_in_init(_: ()) -> Result<(), String> {
    abort_without_core()
}

fn abort_once_flagged(flag: Event) -> Result<Event, String> {
    if flag.is_set() {
        abort_without_core();
    }
    Ok(flag)
}

fn fail_once_flagged(flag: Event) -> Result<Event, String> {
    if flag.is_set() {
        return Err("the flag is up".into());
    }
    Ok(flag)
}

/// Runs tasks until the pool says it is broken; returns why.
fn until_broken(pool: &Pool) -> String {
    loop {
        match pool.apply(square, 3) {
            Ok(9) => std::thread::sleep(Duration::from_millis(5)),
            Err(TaskError::Broken(why)) => return why,
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn a_restart_storm_is_a_clear_error_not_a_loop() {
    deadline(LIMIT, || {
        // An initializer that always crashes: every start fails, the pool
        // tries each place 1 + 10 times (the default), then gives up.
        for m in StartMethod::ALL {
            match Pool::builder()
                .workers(2)
                .start_method(m)
                .initializer(abort_in_init, ())
                .build()
            {
                Err(PoolError::WorkerLost {
                    attempts,
                    status:
                        ExitStatus::Signaled {
                            signal: Signal::ABRT,
                            ..
                        },
                    ..
                }) => assert_eq!(attempts, 11, "{m}"),
                other => panic!("{m}: {other:?}"),
            }
        }
        match Pool::builder()
            .workers(1)
            .max_failed_starts(0)
            .initializer(abort_in_init, ())
            .build()
        {
            Err(e @ PoolError::WorkerLost { attempts: 1, .. }) => {
                assert!(e.to_string().contains("SIGABRT"), "{e}")
            }
            other => panic!("{other:?}"),
        }

        // The same storm in a running pool: replacements of worker 0 crash
        // once the flag is up. The pool is broken, says why, and the other
        // worker is left alone until the pool is dropped.
        let flag = Event::new().unwrap();
        let pool = Pool::builder()
            .workers(2)
            .max_failed_starts(3)
            .initializer(abort_once_flagged, flag.clone())
            .build()
            .unwrap();
        let first = pids(&pool);
        flag.set();
        assert!(common::send_signal(first[0], libc::SIGKILL));
        let why = until_broken(&pool);
        assert!(
            why.contains("worker 0 died 4 times in a row before it was ready")
                && why.contains("SIGABRT"),
            "{why}"
        );
        let stats = pool.stats();
        assert_eq!((stats[0].pid, stats[0].restarts), (0, 4), "{stats:?}");
        assert_eq!(stats[1].pid, first[1]);
        assert_gone(first[0]);
        finish(pool);

        // An initializer that returns an error in a replacement breaks the
        // pool at once: it is not retried.
        let flag = Event::new().unwrap();
        let pool = Pool::builder()
            .workers(2)
            .initializer(fail_once_flagged, flag.clone())
            .build()
            .unwrap();
        let first = pids(&pool);
        flag.set();
        assert!(common::send_signal(first[0], libc::SIGKILL));
        let why = until_broken(&pool);
        assert!(
            why.contains("the initializer failed in worker 0: the flag is up"),
            "{why}"
        );
        assert_eq!(pool.stats()[0].restarts, 1);
        finish(pool);
    });
}
