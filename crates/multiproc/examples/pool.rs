//! A pool of worker processes: `cargo run --release --example pool`.
//!
//! Maps, a lazy `imap` with a progress bar, a future, and what happens when
//! a task panics, kills its own worker, or runs past its timeout.

use std::time::{Duration, Instant};

use multiproc::pool::with_state;
use multiproc::{Pool, TaskError};

fn collatz_steps(mut n: u64) -> u32 {
    let mut steps = 0;
    while n > 1 {
        n = if n.is_multiple_of(2) {
            n / 2
        } else {
            3 * n + 1
        };
        steps += 1;
    }
    steps
}

/// Item 13 takes its worker process down with it; item 7 panics.
fn fragile(x: u32) -> u32 {
    match x {
        13 => std::process::abort(),
        7 => panic!("seven is not allowed"),
        _ => x * 2,
    }
}

fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// Runs once per worker: the state every task of that worker can use.
fn load_table(size: usize) -> Result<Vec<u64>, String> {
    Ok((0..size as u64).map(|i| i * i).collect())
}

fn lookup(i: usize) -> u64 {
    with_state(|table: &mut Vec<u64>| table[i % table.len()]).expect("set by load_table")
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pool = Pool::builder().initializer(load_table, 1000).build()?;
    println!("a pool of {} workers", pool.workers());

    let t = Instant::now();
    let steps = pool.map(collatz_steps, 1..=1_000_000u64)?;
    let (best, most) = steps
        .iter()
        .enumerate()
        .max_by_key(|(_, s)| **s)
        .map(|(i, s)| (i + 1, *s))
        .unwrap_or_default();
    println!(
        "map: the longest Collatz chain below 1,000,001 starts at {best} ({most} steps), in {:.0} ms",
        t.elapsed().as_secs_f64() * 1e3
    );

    let total: u64 = pool
        .task(collatz_steps)
        .progress()
        .imap(1..=200_000u64)
        .map(|r| r.map(u64::from))
        .sum::<Result<u64, TaskError>>()?;
    println!("imap with a progress bar: {total} steps in all");

    println!(
        "per-worker state from the initializer: lookup(12) = {}",
        pool.apply(lookup, 12)?
    );

    let outcomes = pool.map_results(fragile, 0..16);
    for (i, r) in outcomes.iter().enumerate() {
        match r {
            Ok(_) => {}
            Err(TaskError::Panicked(p)) => println!("item {i} panicked: {}", p.message),
            Err(e @ TaskError::WorkerDied { .. }) => println!("item {i} failed: {e}"),
            Err(e) => println!("item {i}: {e}"),
        }
    }
    let ok = outcomes.iter().filter(|r| r.is_ok()).count();
    println!("the other {ok} items succeeded; the dead worker was replaced");

    let timed = pool
        .task(nap)
        .timeout(Duration::from_millis(200))
        .map_results([10, 10_000, 20]);
    println!("with a 200 ms timeout: {timed:?}");

    let handle = pool.submit(collatz_steps, 27);
    println!("submit(collatz_steps, 27) -> {} steps", handle.get()?);

    for s in pool.stats() {
        println!(
            "worker {} (pid {}): {} items, busy {:.0} ms, restarts {}",
            s.index,
            s.pid,
            s.tasks_done,
            s.busy.as_secs_f64() * 1e3,
            s.restarts
        );
    }
    pool.join();
    println!("pool joined");
    Ok(())
}
