//! Group `pool`: `multiproc::Pool` against Python's `multiprocessing.Pool`
//! (and, for a CPU-bound job, against rayon's threads). Every pool has
//! [`cpu_count`] workers; the map and CPU benches use a warm pool started
//! with forkserver (Python's too).
//!
//! * `map_trivial_1m/default` (s): `pool.map(incr, 0..1_000_000)` with the
//!   default chunking, `incr` being `x + 1` on `u64` (Python:
//!   `pool.map(incr, range(1_000_000))`). Seconds per map.
//! * `map_trivial_1m/pod` (s): the same map with `pool.map_pod(incr,
//!   &items)` over a `Vec<u64>` of `0..1_000_000` built beforehand: the
//!   arguments and results go as bytes, a chunk at a time, no serde.
//!   Measured interleaved with `default` (one serde map, one `map_pod`,
//!   one rayon map per round, [`Plan::map_reps`] rounds after a warm-up
//!   of each), so both rows and the reference see the same moments. The
//!   rayon reference (`par_iter().map(incr).collect()` over the same
//!   `Vec` on a rayon pool of as many threads) is reported on both rows:
//!   the same samples. Python has no plain-data map: its `pod` row is
//!   unavailable; compare with its `default` row.
//! * `map_trivial_1m/chunksize1` (s): the same with chunk size 1, so one
//!   task per item: the per-task overhead. Neither side maps 1M items here
//!   (Python would take some 40 s): both map the same
//!   [`Plan::c1_items`] items (multiproc once mapped ten times as many as
//!   Python, a bias), and each sample is **the measured time per item x 1,000,000**, i.e. the
//!   time 1M items would take at that rate.
//! * `cpu_bound_speedup/all_cores` (x): counting the primes below a bound
//!   by trial division ([`count_primes`]), split into [`CPU_ITEMS`] items
//!   of equal cost (item `k` takes the odd numbers `2j + 1` with
//!   `j % CPU_ITEMS == k`). Each repetition times the job serially in this
//!   process, then on the multiproc pool (default chunking), then on a
//!   rayon pool of as many threads (`par_iter` over the same items, the
//!   same function), then on a `procspawn` pool of as many processes (one
//!   job per item); a sample is the serial time over the parallel time. Python runs the
//!   same algorithm (with a lower bound: it is far slower per number),
//!   serially with `map` and in parallel with `Pool.map`.
//! * `pool_startup/<method>` (ms): from calling `build()` until it
//!   returns, which it does once every worker has run its initializer
//!   (here the default one, which does nothing); the pool is then dropped,
//!   untimed. Python: from calling `Pool(n, initializer=ready,
//!   initargs=(q,))` until `n` tokens, one put by each worker's
//!   initializer, were taken from the `SimpleQueue` `q` (Python's `Pool()`
//!   itself returns before its workers run); the pool is then terminated
//!   and joined, untimed. One warm-up pool first (which also starts the
//!   forkserver).
//!
//! Multiproc is measured first, then `python/pool_bench.py` with the same
//! repetition counts.

use std::time::{Duration, Instant};

use multiproc::{Pool, StartMethod, cpu_count};
use rayon::prelude::*;

use super::Options;
use crate::report::{self, Impl, Measurement, Row};

/// The group's name on the command line and in the output.
pub const NAME: &str = "pool";

/// How the pools of the map and CPU benches start (Python's too).
const METHOD: StartMethod = StartMethod::ForkServer;

/// Start methods of `pool_startup`, in the order they are reported.
const METHODS: [StartMethod; 3] = [
    StartMethod::Fork,
    StartMethod::ForkServer,
    StartMethod::Spawn,
];

/// Items of `map_trivial_1m/default`, on both sides.
const MAP_ITEMS: u64 = 1_000_000;

/// Samples of one measurement, or why there are none.
type Samples = Result<Vec<f64>, String>;

/// Items of the CPU-bound job, on every side.
const CPU_ITEMS: u64 = 256;

/// Repetition counts and sizes of one run.
#[derive(Debug, Clone, Copy)]
struct Plan {
    /// Timed maps of `map_trivial_1m/default`, per side (multiproc's,
    /// its `pod` maps and rayon's, interleaved).
    map_reps: usize,
    /// Items of the chunk-size-1 map, on both sides (Python takes about
    /// 40 us per item, so 1M would take it about 40 s).
    c1_items: u64,
    /// Timed chunk-size-1 maps per side.
    c1_reps: usize,
    /// Bound of the prime count of multiproc's and rayon's CPU job.
    cpu_n: u64,
    /// Bound of the prime count of Python's CPU job.
    cpu_n_python: u64,
    /// Repetitions (speed-up samples) of the CPU job.
    cpu_reps: usize,
    /// `pool_startup` repetitions for every multiproc method and for
    /// Python's fork and forkserver.
    startup_reps: usize,
    /// `pool_startup` repetitions for Python's spawn (about 250 ms each).
    startup_reps_python_spawn: usize,
    /// How long the Python script may run.
    python_timeout: Duration,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                map_reps: 9,
                c1_items: 5_000,
                c1_reps: 3,
                cpu_n: 4_000_000,
                cpu_n_python: 300_000,
                cpu_reps: 3,
                startup_reps: 7,
                startup_reps_python_spawn: 5,
                python_timeout: Duration::from_secs(180),
            }
        } else {
            Plan {
                map_reps: 15,
                c1_items: 20_000,
                c1_reps: 7,
                cpu_n: 10_000_000,
                cpu_n_python: 600_000,
                cpu_reps: 7,
                startup_reps: 20,
                startup_reps_python_spawn: 10,
                python_timeout: Duration::from_secs(600),
            }
        }
    }

    /// The options that give `python/pool_bench.py` the same plan.
    fn python_args(&self, workers: usize) -> Vec<String> {
        [
            ("--workers", workers.to_string()),
            ("--start-method", METHOD.as_str().to_string()),
            ("--items", MAP_ITEMS.to_string()),
            ("--map-reps", self.map_reps.to_string()),
            ("--c1-items", self.c1_items.to_string()),
            ("--c1-reps", self.c1_reps.to_string()),
            ("--cpu-n", self.cpu_n_python.to_string()),
            ("--cpu-items", CPU_ITEMS.to_string()),
            ("--cpu-reps", self.cpu_reps.to_string()),
            ("--startup-reps", self.startup_reps.to_string()),
            (
                "--startup-reps-spawn",
                self.startup_reps_python_spawn.to_string(),
            ),
        ]
        .into_iter()
        .flat_map(|(k, v)| [k.to_string(), v])
        .collect()
    }
}

/// The trivial function of `map_trivial_1m`.
fn incr(x: u64) -> u64 {
    x + 1
}

/// Item `k` of `stride` items of the prime count below `n`: the odd
/// numbers `p = 2j + 1 < n` with `j % stride == k`, tested by trial
/// division by 3 and the odd numbers up to `sqrt(p)`, plus the prime 2 in
/// item 0. Every item gets the same share of odd numbers of every size
/// and residue (its step, `2 * stride`, is coprime to 3), so the items
/// cost the same, within a few percent (as `count_primes` in
/// `python/pool_bench.py`). Striding over all numbers instead, as this
/// job once did, left the even items nearly free.
fn count_primes((k, stride, n): (u64, u64, u64)) -> u64 {
    let mut count = u64::from(k == 0 && n > 2);
    let mut p = 2 * k + 1;
    while p < n {
        if is_prime(p) {
            count += 1;
        }
        p += 2 * stride;
    }
    count
}

/// Whether `p` is prime, by trial division.
fn is_prime(p: u64) -> bool {
    if p < 2 {
        return false;
    }
    if p.is_multiple_of(2) {
        return p == 2;
    }
    let mut d = 3;
    while d * d <= p {
        if p.is_multiple_of(d) {
            return false;
        }
        d += 2;
    }
    true
}

/// Runs the group: multiproc (and rayon), then Python.
pub fn run(opts: &Options) -> Vec<Row> {
    let plan = Plan::new(opts.quick);
    let workers = cpu_count();
    let mut multiproc = Vec::new();
    let mut rayon = Vec::new();
    let mut procspawn_rows = Vec::new();

    opts.progress(
        NAME,
        &format!("multiproc: warm pool of {workers} ({METHOD})"),
    );
    match Pool::builder()
        .workers(workers)
        .start_method(METHOD)
        .build()
    {
        Ok(pool) => {
            opts.progress(
                NAME,
                "map_trivial_1m default and pod: multiproc, interleaved with rayon",
            );
            let (serde, pod, on_rayon) = map_default_and_pod(&pool, workers, plan.map_reps);
            multiproc.push(Measurement::new("map_trivial_1m", "default", "s", serde));
            multiproc.push(Measurement::new("map_trivial_1m", "pod", "s", pod));
            for param in ["default", "pod"] {
                rayon.push(Measurement::new(
                    "map_trivial_1m",
                    param,
                    "s",
                    on_rayon.clone(),
                ));
            }
            opts.progress(
                NAME,
                &format!(
                    "map_trivial_1m chunksize1: multiproc over {} items, scaled to 1M",
                    plan.c1_items
                ),
            );
            multiproc.push(Measurement::new(
                "map_trivial_1m",
                "chunksize1",
                "s",
                map_chunksize1(&pool, plan.c1_items, plan.c1_reps),
            ));
            opts.progress(
                NAME,
                "cpu_bound_speedup: serial, multiproc, rayon, procspawn",
            );
            let (ours, theirs, peer, serial) =
                cpu_speedup(&pool, workers, plan.cpu_n, plan.cpu_reps);
            procspawn_rows.push(Measurement::new(
                "cpu_bound_speedup",
                "all_cores",
                "x",
                peer,
            ));
            if let Some(s) = report::median(&serial) {
                opts.progress(NAME, &format!("cpu_bound_speedup: serial job {s:.3} s"));
            }
            multiproc.push(Measurement::new(
                "cpu_bound_speedup",
                "all_cores",
                "x",
                ours,
            ));
            rayon.push(Measurement::new(
                "cpu_bound_speedup",
                "all_cores",
                "x",
                theirs,
            ));
            pool.join();
        }
        Err(e) => {
            let why = format!("the pool did not start: {e}");
            for (bench, param, unit) in [
                ("map_trivial_1m", "default", "s"),
                ("map_trivial_1m", "pod", "s"),
                ("map_trivial_1m", "chunksize1", "s"),
                ("cpu_bound_speedup", "all_cores", "x"),
            ] {
                multiproc.push(Measurement::new(bench, param, unit, Err(why.clone())));
            }
        }
    }
    for method in METHODS {
        opts.progress(NAME, &format!("pool_startup {method}: multiproc"));
        multiproc.push(Measurement::new(
            "pool_startup",
            method.as_str(),
            "ms",
            startup(method, workers, plan.startup_reps),
        ));
    }

    opts.progress(NAME, "python (pool_bench.py)");
    let mut python = opts.python.run(
        "pool_bench.py",
        &plan.python_args(workers),
        plan.python_timeout,
    );
    python.measurements.push(Measurement::new(
        "map_trivial_1m",
        "pod",
        "s",
        Err("Python's Pool has no plain-data map: compare its map_trivial_1m/default".into()),
    ));
    let rows = report::pair(
        NAME,
        multiproc,
        python.measurements,
        python.failure.as_deref(),
    );
    let rows = report::add_reference(NAME, rows, Impl::Rayon, rayon);
    report::add_reference(NAME, rows, Impl::Procspawn, procspawn_rows)
}

/// Maps `incr` over `0..items` with `chunksize` (default chunking if
/// `None`) and checks the results; returns the seconds the map took.
fn timed_map(pool: &Pool, items: u64, chunksize: Option<usize>) -> Result<f64, String> {
    let t0 = Instant::now();
    let task = pool.task(incr);
    let task = match chunksize {
        Some(n) => task.chunksize(n),
        None => task,
    };
    let out = task.map(0..items).map_err(|e| format!("map failed: {e}"))?;
    let took = t0.elapsed().as_secs_f64();
    let expected = 1..=items;
    if out.len() as u64 != items || !out.into_iter().eq(expected) {
        return Err("the map returned wrong results".to_string());
    }
    Ok(took)
}

/// `map_pod(incr, items)`, checked; returns the seconds it took.
fn timed_pod_map(pool: &Pool, items: &[u64]) -> Result<f64, String> {
    let t0 = Instant::now();
    let out = pool
        .map_pod(incr, items)
        .map_err(|e| format!("map_pod failed: {e}"))?;
    let took = t0.elapsed().as_secs_f64();
    if out.len() != items.len() || !out.iter().zip(items).all(|(r, a)| *r == a + 1) {
        return Err("map_pod returned wrong results".to_string());
    }
    Ok(took)
}

/// The same map on rayon's threads, checked; returns the seconds it took.
fn timed_rayon_map(threads: &rayon::ThreadPool, items: &[u64]) -> Result<f64, String> {
    let t0 = Instant::now();
    let out: Vec<u64> = threads.install(|| items.par_iter().map(|&x| incr(x)).collect());
    let took = t0.elapsed().as_secs_f64();
    if out.len() != items.len() || !out.iter().zip(items).all(|(r, a)| *r == a + 1) {
        return Err("rayon returned wrong results".to_string());
    }
    Ok(took)
}

/// `map_trivial_1m/default` and `/pod`, and rayon's map of the same items
/// on `workers` threads: seconds per map of 1M items, one of each per
/// round for `reps` rounds, after a warm-up map of each.
fn map_default_and_pod(pool: &Pool, workers: usize, reps: usize) -> (Samples, Samples, Samples) {
    let items: Vec<u64> = (0..MAP_ITEMS).collect();
    let threads = rayon::ThreadPoolBuilder::new().num_threads(workers).build();
    let threads = threads.map_err(|e| format!("rayon pool failed: {e}"));
    let warm = |ok: Result<f64, String>| ok.map(|_| Vec::with_capacity(reps));
    let mut serde = warm(timed_map(pool, MAP_ITEMS, None));
    let mut pod = warm(timed_pod_map(pool, &items));
    let mut on_rayon = threads
        .as_ref()
        .map_err(Clone::clone)
        .and_then(|t| warm(timed_rayon_map(t, &items)));
    let push = |samples: &mut Samples, got: Result<f64, String>| {
        if let Ok(v) = samples {
            match got {
                Ok(s) => v.push(s),
                Err(e) => *samples = Err(e),
            }
        }
    };
    for _ in 0..reps {
        if serde.is_ok() {
            push(&mut serde, timed_map(pool, MAP_ITEMS, None));
        }
        if pod.is_ok() {
            push(&mut pod, timed_pod_map(pool, &items));
        }
        if let Ok(t) = &threads
            && on_rayon.is_ok()
        {
            push(&mut on_rayon, timed_rayon_map(t, &items));
        }
    }
    (serde, pod, on_rayon)
}

/// `map_trivial_1m/chunksize1`: per-item time of maps of `items` items
/// with chunk size 1, times 1M (seconds), after a warm-up map.
fn map_chunksize1(pool: &Pool, items: u64, reps: usize) -> Result<Vec<f64>, String> {
    timed_map(pool, items.min(10_000), Some(1))?;
    (0..reps)
        .map(|_| timed_map(pool, items, Some(1)).map(|s| s / items as f64 * MAP_ITEMS as f64))
        .collect()
}

/// The items of the CPU-bound job with bound `n`.
fn cpu_job(n: u64) -> Vec<(u64, u64, u64)> {
    (0..CPU_ITEMS).map(|k| (k, CPU_ITEMS, n)).collect()
}

/// Speed-ups of multiproc's pool and of a rayon pool of `workers` threads
/// on the CPU-bound job (bound `n`), one per repetition: each repetition
/// times the job serially, on the pool, then on rayon, and divides.
/// Returns both, and the serial times (s).
fn cpu_speedup(pool: &Pool, workers: usize, n: u64, reps: usize) -> Speedups {
    let threads = match rayon::ThreadPoolBuilder::new().num_threads(workers).build() {
        Ok(t) => t,
        Err(e) => {
            let why = format!("rayon pool failed: {e}");
            return (Err(why.clone()), Err(why.clone()), Err(why), Vec::new());
        }
    };
    let peer = procspawn::Pool::new(workers).map_err(|e| format!("procspawn pool failed: {e}"));
    let job = cpu_job(n);
    let serial = || -> u64 { job.iter().copied().map(count_primes).sum() };
    let on_pool = || -> Result<u64, String> {
        pool.map(count_primes, job.iter().copied())
            .map(|counts| counts.into_iter().sum())
            .map_err(|e| format!("map failed: {e}"))
    };
    let on_rayon =
        || -> u64 { threads.install(|| job.par_iter().copied().map(count_primes).sum()) };
    // procspawn: one job per item on its pool of `workers` processes, as a
    // user of it would submit them.
    let on_procspawn = || -> Result<u64, String> {
        let peer = peer.as_ref().map_err(Clone::clone)?;
        let handles: Vec<_> = job
            .iter()
            .map(|&item| peer.spawn(item, count_primes))
            .collect();
        handles.into_iter().try_fold(0, |sum, h| {
            h.join()
                .map(|c| sum + c)
                .map_err(|e| format!("procspawn job failed: {e}"))
        })
    };

    // Warm-up, and the answer every run must give.
    let expected = serial();
    let warm = on_pool().and_then(|got| {
        if got == expected && on_rayon() == expected {
            Ok(())
        } else {
            Err("wrong prime count".to_string())
        }
    });
    if let Err(e) = warm {
        return (Err(e.clone()), Err(e.clone()), Err(e), Vec::new());
    }
    let mut peer_samples = on_procspawn().and_then(|got| {
        if got == expected {
            Ok(Vec::with_capacity(reps))
        } else {
            Err("procspawn: wrong prime count".to_string())
        }
    });
    let mut ours = Ok(Vec::with_capacity(reps));
    let mut theirs = Vec::with_capacity(reps);
    let mut serial_times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let (s, serial_time) = timed(serial);
        let (m, pool_time) = timed(on_pool);
        let (r, rayon_time) = timed(on_rayon);
        if s != expected || r != expected {
            let e = Err("wrong prime count".to_string());
            return (e.clone(), e.clone(), e, serial_times);
        }
        if let Ok(samples) = &mut peer_samples {
            match timed(on_procspawn) {
                (Ok(got), took) if got == expected => samples.push(serial_time / took),
                (Ok(_), _) => peer_samples = Err("procspawn: wrong prime count".to_string()),
                (Err(e), _) => peer_samples = Err(e),
            }
        }
        serial_times.push(serial_time);
        if let Ok(samples) = &mut ours {
            match m {
                Ok(got) if got == expected => samples.push(serial_time / pool_time),
                Ok(_) => ours = Err("wrong prime count".to_string()),
                Err(e) => ours = Err(e),
            }
        }
        theirs.push(serial_time / rayon_time);
    }
    if let Ok(peer) = peer {
        peer.shutdown();
    }
    (ours, Ok(theirs), peer_samples, serial_times)
}

/// The speed-ups of multiproc, rayon and procspawn, and the serial times.
type Speedups = (Samples, Samples, Samples, Vec<f64>);

/// Runs `f`, returning what it returned and the seconds it took.
fn timed<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let t0 = Instant::now();
    let out = f();
    (out, t0.elapsed().as_secs_f64())
}

/// `pool_startup`: ms per `build()` of a pool of `workers` with `method`,
/// after a warm-up pool. Each pool is dropped, untimed, before the next.
fn startup(method: StartMethod, workers: usize, reps: usize) -> Result<Vec<f64>, String> {
    let build = || {
        Pool::builder()
            .workers(workers)
            .start_method(method)
            .build()
            .map_err(|e| format!("build failed: {e}"))
    };
    drop(build()?);
    (0..reps)
        .map(|_| {
            let (pool, took) = timed(build);
            drop(pool?);
            Ok(took * 1e3)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_job_counts_primes() {
        // 25 primes below 100, 168 below 1000, whatever the split.
        assert_eq!(count_primes((0, 1, 100)), 25);
        let total: u64 = (0..CPU_ITEMS)
            .map(|k| count_primes((k, CPU_ITEMS, 1000)))
            .sum();
        assert_eq!(total, 168);
        assert_eq!(cpu_job(1000).len() as u64, CPU_ITEMS);
    }

    #[test]
    fn python_gets_the_same_plan() {
        let plan = Plan::new(true);
        let args = plan.python_args(2);
        let value = |flag: &str| {
            let i = args.iter().position(|a| a == flag).unwrap();
            args[i + 1].clone()
        };
        assert_eq!(value("--workers"), "2");
        assert_eq!(value("--start-method"), "forkserver");
        assert_eq!(value("--c1-items"), plan.c1_items.to_string());
        assert_eq!(value("--cpu-items"), CPU_ITEMS.to_string());
        assert_eq!(args.len() % 2, 0);
    }
}
