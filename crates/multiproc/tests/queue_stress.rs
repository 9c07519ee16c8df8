//! Many producers and consumers in separate processes: every message is
//! delivered exactly once; and with producers and consumers killed at random
//! moments, nothing is delivered twice, nothing wedges, and each killed
//! process loses at most the one message it was handling.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::{LIMIT, deadline};
use multiproc::{Connection, Process, Queue, StartMethod, pipe};

const STOP: u64 = u64::MAX;

fn producer((q, id, n): (Queue<u64>, u64, u64)) -> u64 {
    for seq in 0..n {
        q.put(id << 32 | seq).unwrap();
    }
    n
}

fn collector(q: Queue<u64>) -> Vec<u64> {
    let mut got = Vec::new();
    loop {
        let v = q.get().unwrap();
        if v == STOP {
            return got;
        }
        got.push(v);
    }
}

#[test]
fn two_producers_two_consumers_exactly_once() {
    deadline(LIMIT * 2, || {
        let n = 150_000u64;
        let q = Queue::builder().ring_bytes(64 << 10).build().unwrap();
        let consumers: Vec<_> = (0..2)
            .map(|_| {
                Process::builder()
                    .start_method(StartMethod::ForkServer)
                    .spawn(collector, q.clone())
                    .unwrap()
            })
            .collect();
        let producers: Vec<_> = (0..2u64)
            .map(|id| {
                Process::builder()
                    .start_method(StartMethod::Spawn)
                    .spawn(producer, (q.clone(), id, n))
                    .unwrap()
            })
            .collect();
        for p in producers {
            assert_eq!(p.join().unwrap(), n);
        }
        for _ in 0..2 {
            q.put(STOP).unwrap();
        }
        let mut seen = HashSet::new();
        for c in consumers {
            for v in c.join().unwrap() {
                assert!(seen.insert(v), "message {v:#x} delivered twice");
            }
        }
        assert_eq!(seen.len() as u64, 2 * n, "messages were lost");
    });
}

/// Takes messages and reports each one, as soon as it has it, to the
/// parent; stops at STOP.
fn reporting_consumer((q, report): (Queue<u64>, Connection<u64, ()>)) {
    loop {
        let v = q.get().unwrap();
        if v == STOP {
            return;
        }
        report.send(&v).unwrap();
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

#[test]
fn killing_producers_and_consumers_loses_at_most_their_message() {
    deadline(LIMIT * 3, || {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1;
        println!("seed {seed}");
        let mut rng = Rng(seed);
        for round in 0..6 {
            let n = 20_000u64;
            let q = Queue::builder().ring_bytes(16 << 10).build().unwrap();
            let mut reports = Vec::new();
            let mut consumers = Vec::new();
            for _ in 0..3 {
                let (rx, tx) = pipe::<(), u64>().unwrap();
                let tx: Connection<u64, ()> = tx;
                // Collect reports as they come: a consumer blocked on a full
                // report pipe would stop consuming.
                reports.push(std::thread::spawn(move || {
                    let mut got = Vec::new();
                    while let Ok(v) = rx.recv() {
                        got.push(v);
                    }
                    got
                }));
                consumers.push(
                    Process::builder()
                        .start_method(StartMethod::ForkServer)
                        .spawn(reporting_consumer, (q.clone(), tx))
                        .unwrap(),
                );
            }
            let producers: Vec<_> = (0..3u64)
                .map(|id| {
                    Process::builder()
                        .start_method(StartMethod::ForkServer)
                        .spawn(producer, (q.clone(), id, n))
                        .unwrap()
                })
                .collect();
            // Kill one producer and one consumer at random moments.
            std::thread::sleep(Duration::from_millis(rng.next(40)));
            let killed_producer = rng.next(3) as usize;
            producers[killed_producer].kill().unwrap();
            std::thread::sleep(Duration::from_millis(rng.next(40)));
            let killed_consumer = rng.next(3) as usize;
            consumers[killed_consumer].kill().unwrap();
            for (i, p) in producers.into_iter().enumerate() {
                let r = p.join();
                if i != killed_producer {
                    assert_eq!(r.unwrap(), n, "round {round}: a surviving producer failed");
                }
            }
            // One STOP for each surviving consumer (the killed one may have
            // died before or after this point: give it one too, harmlessly).
            for _ in 0..3 {
                q.put(STOP).unwrap();
            }
            let t = Instant::now();
            let mut seen = HashSet::new();
            for (i, (c, collected)) in consumers.into_iter().zip(reports).enumerate() {
                let r = c.join();
                if i != killed_consumer {
                    r.unwrap();
                }
                for v in collected.join().unwrap() {
                    assert!(seen.insert(v), "round {round}: {v:#x} delivered twice");
                }
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "round {round}: the queue wedged"
            );
            // Survivors' messages all arrived, except the one the killed
            // consumer held when it died; the killed producer's arrived as a
            // prefix with at most one gap (the message it was writing).
            let mut missing = 0;
            for id in 0..3u64 {
                let got: Vec<u64> = (0..n).filter(|s| seen.contains(&(id << 32 | s))).collect();
                if id as usize == killed_producer {
                    let last = got.last().copied().map_or(0, |l| l + 1);
                    missing += last - got.len() as u64;
                } else {
                    missing += n - got.len() as u64;
                }
            }
            assert!(
                missing <= 2,
                "round {round}: {missing} messages lost (seed {seed})"
            );
        }
    });
}
