//! Queues: producers and consumers in separate processes sharing one queue
//! in shared memory, and a joinable queue that knows when all work is done.
//!
//! Run with `cargo run --example queue`.

use std::time::Instant;

use multiproc::{JoinableQueue, Process, Queue, current_process};

const STOP: u64 = u64::MAX;

fn producer((q, from, to): (Queue<u64>, u64, u64)) {
    for x in from..to {
        q.put(x).expect("a consumer is alive");
    }
}

fn consumer(q: Queue<u64>) -> (String, u64, u64) {
    let (mut count, mut sum) = (0, 0);
    loop {
        match q.get() {
            Ok(STOP) | Err(_) => return (current_process().name, count, sum),
            Ok(x) => {
                count += 1;
                sum += x;
            }
        }
    }
}

fn worker(tasks: JoinableQueue<String>) {
    while let Ok(task) = tasks.get() {
        println!("   {} handled {task}", current_process().name);
        tasks.task_done().expect("one done per task got");
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n = 200_000u64;
    let q = Queue::new()?;
    let t = Instant::now();
    let consumers: Vec<_> = (0..2)
        .map(|_| Process::spawn(consumer, q.clone()))
        .collect::<Result<_, _>>()?;
    let producers: Vec<_> = [(0, n / 2), (n / 2, n)]
        .into_iter()
        .map(|(a, b)| Process::spawn(producer, (q.clone(), a, b)))
        .collect::<Result<_, _>>()?;
    for p in producers {
        p.join()?;
    }
    for _ in 0..2 {
        q.put(STOP)?;
    }
    let (mut count, mut sum) = (0, 0);
    for c in consumers {
        let (name, k, s) = c.join()?;
        println!("{name} got {k} values");
        count += k;
        sum += s;
    }
    assert_eq!(
        (count, sum),
        (n, n * (n - 1) / 2),
        "every value exactly once"
    );
    println!(
        "2 producers -> 2 consumers: {n} values, each exactly once, in {:.0} ms",
        t.elapsed().as_secs_f64() * 1e3
    );

    println!("a joinable queue:");
    let tasks = JoinableQueue::new()?;
    let w = Process::builder()
        .daemon(true)
        .spawn(worker, tasks.clone())?;
    for name in ["wash", "dry", "fold"] {
        tasks.put(name.to_string())?;
    }
    tasks.join();
    println!("   all tasks done");
    drop(w);
    Ok(())
}
