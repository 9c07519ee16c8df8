//! The multiproc tour: `cargo run --release --example tour`.
//!
//! It follows the text multiproc grew from, running for real:
//!
//! 1. processes, each with its own address space, in parallel on every core;
//! 2. a Queue: producers and consumers exchange data asynchronously;
//! 3. a Pipe: two processes talk both ways;
//! 4. a Manager: processes share a dict and a list;
//! 5. a Pool: a map with a progress bar that survives a worker killed on
//!    purpose;
//! 6. isolation and hard limits: a crash and a runaway stay contained.
//!
//! An optional argument sets the prime limit of chapter 1 (default
//! 4,000,000).

use std::time::{Duration, Instant};

use multiproc::{
    DictProxy, JoinError, ListProxy, Manager, Pool, Process, StartMethod, TaskError, cpu_count,
    current_process,
};

/// The CPU-bound job: how many primes lie in `[start, end)`, by trial
/// division, on purpose slow and easy to split.
fn count_primes((start, end): (u64, u64)) -> u64 {
    (start..end).filter(|&n| is_prime(n)).count() as u64
}

fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

/// Splits `[0, limit)` into `parts` ranges of about equal work (later
/// numbers cost more, so the ranges shrink).
fn split(limit: u64, parts: usize) -> Vec<(u64, u64)> {
    let total = (limit as f64).powf(1.5);
    let mut bounds = vec![0u64];
    for i in 1..parts {
        let target = total * i as f64 / parts as f64;
        bounds.push(target.powf(1.0 / 1.5) as u64);
    }
    bounds.push(limit);
    bounds.windows(2).map(|w| (w[0], w[1])).collect()
}

/// Puts the numbers of a range on the queue.
fn produce((q, (from, to)): (multiproc::Queue<u64>, (u64, u64))) {
    for x in from..to {
        q.put(x).expect("a consumer is alive");
    }
}

/// Counts and sums values until the end marker.
fn tally(q: multiproc::Queue<u64>) -> (u64, u64) {
    let (mut count, mut sum) = (0, 0);
    while let Ok(x) = q.get() {
        if x == u64::MAX {
            break;
        }
        count += 1;
        sum += x;
    }
    (count, sum)
}

/// Answers questions over a pipe until the parent hangs up.
fn interviewee(conn: multiproc::Connection<String, String>) {
    let me = current_process();
    while let Ok(question) = conn.recv() {
        let answer = match question.as_str() {
            "who are you?" => format!("{}, pid {}, a separate process", me.name, me.pid),
            _ => "I answer through shared memory, from my own address space".to_string(),
        };
        if conn.send(&answer).is_err() {
            break;
        }
    }
}

/// Counts the primes of one range and records the result in the manager's
/// dict, and a line in its list.
fn survey(((start, end), counts, log): ((u64, u64), DictProxy<String, u64>, ListProxy<String>)) {
    let n = count_primes((start, end));
    counts
        .insert(format!("{start}..{end}"), n)
        .expect("the manager is up");
    log.push(format!(
        "{} (pid {}) found {n}",
        current_process().name,
        std::process::id()
    ))
    .expect("the manager is up");
}

/// Checks one block of numbers; block 13 takes its worker process down.
fn check_block(block: u64) -> u64 {
    if block == 13 {
        // Killed on purpose, the hard way: no unwinding, no cleanup.
        std::process::abort();
    }
    count_primes((block * 10_000, (block + 1) * 10_000))
}

fn crash(_: ()) -> u64 {
    // A worker that dies the hard way: the parent must get an error, not die.
    std::process::abort()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let limit: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(4_000_000);
    let cores = cpu_count();
    println!(
        "multiproc tour — {} (pid {})",
        current_process().name,
        std::process::id()
    );
    println!();
    println!("1. Processes on every core");
    println!(
        "   Count the primes below {limit}, first in this process, then split over {cores} worker processes."
    );

    let t = Instant::now();
    let serial = count_primes((0, limit));
    let serial_time = t.elapsed();
    println!("   serial    : {serial} primes in {}", ms(serial_time));

    for method in StartMethod::ALL {
        let t = Instant::now();
        let workers = split(limit, cores)
            .into_iter()
            .map(|range| {
                Process::builder()
                    .start_method(method)
                    .spawn(count_primes, range)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let pids: Vec<i32> = workers.iter().map(Process::pid).collect();
        let mut parallel = 0;
        for w in workers {
            parallel += w.join()?;
        }
        let took = t.elapsed();
        assert_eq!(
            parallel, serial,
            "the workers disagree with the serial count"
        );
        println!(
            "   {method:<10}: {parallel} primes in {} on {} processes {pids:?} — {:.2}x faster",
            ms(took),
            cores,
            serial_time.as_secs_f64() / took.as_secs_f64()
        );
    }

    println!();
    println!("2. A Queue: producers and consumers exchange data asynchronously");
    let n: u64 = 1_000_000;
    let q = multiproc::Queue::new()?;
    let t = Instant::now();
    let consumers: Vec<_> = (0..2)
        .map(|_| Process::spawn(tally, q.clone()))
        .collect::<Result<_, _>>()?;
    let producers: Vec<_> = [(0, n / 2), (n / 2, n)]
        .into_iter()
        .map(|range| Process::spawn(produce, (q.clone(), range)))
        .collect::<Result<_, _>>()?;
    for p in producers {
        p.join()?;
    }
    for _ in 0..2 {
        q.put(u64::MAX)?;
    }
    let mut total = (0, 0);
    for c in consumers {
        let (count, sum) = c.join()?;
        total = (total.0 + count, total.1 + sum);
    }
    let took = t.elapsed();
    assert_eq!(total, (n, n * (n - 1) / 2), "every value exactly once");
    println!(
        "   2 producers -> 2 consumers: {n} values, each exactly once, in {} ({:.1} M values/s)",
        ms(took),
        n as f64 / took.as_secs_f64() / 1e6
    );

    println!();
    println!("3. A Pipe: two processes talk both ways");
    let (ours, theirs) = multiproc::pipe::<String, String>()?;
    let child = Process::spawn(interviewee, theirs)?;
    for question in ["who are you?", "what do you do?"] {
        ours.send(&question.to_string())?;
        println!("   parent asks : {question}");
        println!("   child says  : {}", ours.recv()?);
    }
    drop(ours);
    child.join()?;

    println!();
    println!("4. A Manager: processes share a dict and a list");
    let manager = Manager::start()?;
    let counts = manager.dict::<String, u64>()?;
    let log = manager.list::<String>()?;
    let surveyors = split(limit, 3)
        .into_iter()
        .map(|range| Process::spawn(survey, (range, counts.clone(), log.clone())))
        .collect::<Result<Vec<_>, _>>()?;
    for p in surveyors {
        p.join()?;
    }
    let mut items = counts.items()?;
    items.sort_by_key(|(range, _)| range.split("..").next().and_then(|s| s.parse::<u64>().ok()));
    for (range, n) in &items {
        println!("   dict[{range:>19}] = {n}");
    }
    for line in log.snapshot()? {
        println!("   list: {line}");
    }
    let shared_total: u64 = items.iter().map(|(_, n)| n).sum();
    assert_eq!(
        shared_total, serial,
        "the shared dict agrees with the serial count"
    );
    println!("   3 processes wrote into one dict: {shared_total} primes, as counted serially");
    manager.shutdown()?;

    println!();
    println!("5. A Pool: a map with a progress bar, and a worker killed on purpose");
    let pool = Pool::new(cores)?;
    let t = Instant::now();
    let outcomes = pool.task(check_block).progress().map_results(0..40u64);
    let took = t.elapsed();
    let mut found = 0;
    for (block, outcome) in outcomes.iter().enumerate() {
        match outcome {
            Ok(n) => found += n,
            Err(e @ TaskError::WorkerDied { .. }) => println!("   block {block}: {e}"),
            Err(e) => return Err(format!("block {block}: {e}").into()),
        }
    }
    let restarts: u64 = pool.stats().iter().map(|s| s.restarts).sum();
    println!(
        "   the other {} blocks finished ({found} primes among them) in {}; workers replaced: {restarts}",
        outcomes.iter().filter(|o| o.is_ok()).count(),
        ms(took)
    );
    pool.join();

    println!();
    println!("6. Isolation: a worker that crashes does not take us down");
    match Process::spawn(crash, ())?.join() {
        Err(JoinError::Signaled { signal, .. }) => {
            println!("   the worker died of {signal}; this process carries on")
        }
        other => println!("   unexpected: {other:?}"),
    }

    println!();
    println!("7. Hard limits on runaway work");
    let runaway = Process::spawn(count_primes, (0, u64::MAX))?;
    let runaway = match runaway.join_timeout(Duration::from_millis(200)) {
        Err(multiproc::JoinTimeoutError::Timeout(p)) => p,
        other => return Err(format!("unexpected: {other:?}").into()),
    };
    runaway.kill()?;
    println!(
        "   still running after 200 ms, so killed: {}",
        runaway.join().unwrap_err()
    );
    Ok(())
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1e3)
}
