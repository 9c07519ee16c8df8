//! The kill-everything soak (issue 15): two producers and two consumers
//! move numbered messages through one queue with acknowledged gets while a
//! random one of the four is SIGKILLed every 5-50 ms and restarted. What
//! the documentation promises, and this checks exactly:
//!
//! * every message whose `put` returned is received (and acknowledged) at
//!   least once; a message may be missing only if its producer was killed
//!   during that very put (at most one per producer kill);
//! * a message is received more than once only because a consumer was
//!   killed (at most one extra copy per consumer kill);
//! * nothing that was never put is received, and every payload arrives
//!   intact.
//!
//! Bookkeeping lives in a shared memory block, so that it survives the
//! kills: a producer marks a number *started* before its `put` and
//! *completed* after it returned (a replacement resumes after the last
//! started number, so no number is put twice); a consumer counts each
//! message it receives before acknowledging it, so a kill between the two
//! shows as a duplicate; now and then it works on a message for 1 ms
//! before acknowledging it, and a kill then must bring that message back.
//! The producers are faster, so the queue fills now and then, and the
//! journal fills behind the deliveries of killed consumers while the queue
//! stays busy (a consumer that finds it full takes one over). The seed of the kill schedule is printed;
//! `MULTIPROC_SOAK_SEED` replays it (the instants of the kills, not where
//! they land), `MULTIPROC_SOAK_MESSAGES` sets how many messages move (per
//! variant; 2,000,000 in all by default, and 60,000 out-of-line ones; more in
//! an optimised build, whose producers are that much faster),
//! `MULTIPROC_SOAK_VERBOSE` prints progress.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{assert_gone, deadline, send_signal};
use multiproc::{GetTimeoutError, JoinError, JoinableQueue, Process, Queue, SharedMemory, Signal};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// One numbered message: `id` is `producer * quota + sequence number`; the
/// payload (empty, or large enough to travel out of line) is derived from
/// the id, so a mixed-up payload is caught.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Job {
    id: u64,
    #[serde(with = "serde_bytes")]
    payload: Vec<u8>,
}

fn payload(id: u64, len: usize) -> Vec<u8> {
    let mut p = vec![(id % 251) as u8; len];
    let n = len.min(8);
    p[..n].copy_from_slice(&id.to_le_bytes()[..n]);
    p
}

// Words of the bookkeeping block.
/// `STARTED + p`: 1 + the last sequence number producer `p` began to put.
const STARTED: usize = 0;
/// `COMPLETED + p`: 1 + the last sequence number whose put returned.
const COMPLETED: usize = 2;
/// `TAKEN + c`: 1 + the id consumer slot `c` last received.
const TAKEN: usize = 4;
/// `ACKED + c`: 1 + the id consumer slot `c` last acknowledged.
const ACKED: usize = 6;
/// Non-zero: consumers return once the queue stays empty.
const STOP: usize = 8;
/// Messages received with a wrong payload or an impossible id.
const BAD: usize = 9;
/// 1 + the first such id.
const FIRST_BAD: usize = 10;
/// `HOLDING + c`: 1 + the id consumer slot `c` is working on: received
/// and counted, its acknowledgement not yet begun.
const HOLDING: usize = 11;
/// A consumer works on one message in `Variant::work_every` (its id a
/// multiple) for `WORK` before acknowledging it, so that some kills find a
/// delivery certainly unacknowledged.
const WORK: Duration = Duration::from_millis(1);
/// `COUNTS + id`: how many times message `id` was received.
const COUNTS: usize = 16;

/// A queue handle the workers can use: `Queue` or `JoinableQueue` (whose
/// acknowledgement is also `task_done`).
trait Handle: Serialize + DeserializeOwned + Clone + Send + 'static {
    fn queue(&self) -> &Queue<Job>;
}

impl Handle for Queue<Job> {
    fn queue(&self) -> &Queue<Job> {
        self
    }
}

impl Handle for JoinableQueue<Job> {
    fn queue(&self) -> &Queue<Job> {
        self.as_ref()
    }
}

/// What a producer is told: its slot, where to resume, how far to go,
/// and the payload length.
type ProducerArg<Q> = (Q, SharedMemory, usize, u64, u64, usize);

fn produce<Q: Handle>((q, block, p, from, quota, len): ProducerArg<Q>) {
    let w = block.as_atomic_u64();
    for seq in from..quota {
        let id = p as u64 * quota + seq;
        w[STARTED + p].store(seq + 1, Ordering::SeqCst);
        q.queue()
            .put(Job {
                id,
                payload: payload(id, len),
            })
            .unwrap_or_else(|e| panic!("put {id}: {e}"));
        w[COMPLETED + p].store(seq + 1, Ordering::SeqCst);
    }
}

/// Receives with acknowledged gets until told to stop and the queue stays
/// empty; counts each message before acknowledging it. Returns why it
/// failed, if it did.
fn consume<Q: Handle>(
    (q, block, c, total, work_every): (Q, SharedMemory, usize, u64, u64),
) -> Result<(), String> {
    let w = block.as_atomic_u64();
    loop {
        match q.queue().get_delivery_timeout(Duration::from_millis(300)) {
            Ok(d) => {
                let id = d.id;
                w[TAKEN + c].store(id + 1, Ordering::SeqCst);
                if id >= total || d.payload != payload(id, d.payload.len()) {
                    w[BAD].fetch_add(1, Ordering::SeqCst);
                    let _ = w[FIRST_BAD].compare_exchange(
                        0,
                        id.saturating_add(1),
                        Ordering::SeqCst,
                        Ordering::SeqCst,
                    );
                } else {
                    w[COUNTS + id as usize].fetch_add(1, Ordering::SeqCst);
                }
                if id % work_every == 0 {
                    w[HOLDING + c].store(id + 1, Ordering::SeqCst);
                    std::thread::sleep(WORK);
                    w[HOLDING + c].store(0, Ordering::SeqCst);
                }
                d.ack().map_err(|e| format!("ack {id}: {e}"))?;
                w[ACKED + c].store(id + 1, Ordering::SeqCst);
            }
            Err(GetTimeoutError::Timeout) => {
                if w[STOP].load(Ordering::SeqCst) != 0 {
                    return Ok(());
                }
            }
            Err(e) => return Err(format!("get_delivery: {e}")),
        }
    }
}

/// The names in /dev/shm that multiproc could have made (none: its shared
/// memory is memfds; other programs' entries come and go meanwhile).
fn shm_entries() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains("multiproc"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// A small seeded generator (xorshift64*), so a failing schedule can be
/// replayed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|s| s.trim().parse().ok())
}

/// Which queue a soak runs on.
#[derive(Debug, Clone, Copy)]
struct Variant {
    name: &'static str,
    /// Messages in all (both producers).
    messages: u64,
    /// How many times more in an optimised build, whose producers would
    /// otherwise put them all before the kills find them at work (an
    /// unbounded queue's puts never wait for the consumers).
    optimised: u64,
    /// Payload bytes per message.
    payload: usize,
    /// One message in this many is worked on before its acknowledgement.
    work_every: u64,
}

/// What a soak saw, for the caller's extra checks.
#[derive(Debug, Default)]
struct Outcome {
    producer_kills: u64,
    consumer_kills: u64,
    duplicates: u64,
    maybe_lost: usize,
    /// Consumers killed holding a delivery certainly unacknowledged.
    killed_working: usize,
}

/// Runs the soak on `q` and checks every promise; returns what it saw.
fn soak<Q: Handle>(q: Q, v: Variant) -> Outcome {
    let seed = env_u64("MULTIPROC_SOAK_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1
    });
    let scale = if cfg!(debug_assertions) {
        1
    } else {
        v.optimised
    };
    let messages = env_u64("MULTIPROC_SOAK_MESSAGES").unwrap_or(v.messages * scale) & !1;
    eprintln!(
        "{}: {messages} messages of {} bytes, seed {seed} (MULTIPROC_SOAK_SEED={seed} replays it)",
        v.name, v.payload
    );
    let shm_before = shm_entries();
    let mut rng = Rng(seed | 1);
    let quota = messages / 2;
    let block = SharedMemory::create((COUNTS + messages as usize) * 8).unwrap();
    let w = block.as_atomic_u64();

    let start_producer = |p: usize, from: u64| {
        Process::spawn(
            produce::<Q>,
            (q.clone(), block.clone(), p, from, quota, v.payload),
        )
        .unwrap()
    };
    let start_consumer = |c: usize| {
        Process::spawn(
            consume::<Q>,
            (q.clone(), block.clone(), c, messages, v.work_every),
        )
        .unwrap()
    };
    let mut producers: Vec<Option<Process<()>>> =
        (0..2).map(|p| Some(start_producer(p, 0))).collect();
    let mut consumers: Vec<Option<Process<Result<(), String>>>> =
        (0..2).map(|c| Some(start_consumer(c))).collect();
    let mut pids: Vec<i32> = producers
        .iter()
        .flatten()
        .map(Process::pid)
        .chain(consumers.iter().flatten().map(Process::pid))
        .collect();

    let mut out = Outcome::default();
    // Numbers whose producer was killed while putting them.
    let mut maybe: Vec<u64> = Vec::new();
    // What a killed consumer had received and not yet acknowledged.
    let mut held_at_kill: Vec<u64> = Vec::new();
    // What a killed consumer was certainly holding unacknowledged.
    let mut killed_working: Vec<u64> = Vec::new();
    let received = |w: &[AtomicU64]| -> u64 {
        w[COUNTS..]
            .iter()
            .filter(|c| c.load(Ordering::Relaxed) > 0)
            .count() as u64
    };
    let started = Instant::now();

    // While the producers work: kill a random one of the four every
    // 5-50 ms, and start a replacement at once.
    while producers.iter().any(Option::is_some) {
        std::thread::sleep(Duration::from_millis(5 + rng.below(46)));
        // A producer that finished its quota is done.
        for (p, slot) in producers.iter_mut().enumerate() {
            if slot.as_ref().is_some_and(|h| !h.is_alive()) {
                let h = slot.take().unwrap();
                h.join()
                    .unwrap_or_else(|e| panic!("producer {p} failed: {e}"));
                assert_eq!(w[COMPLETED + p].load(Ordering::SeqCst), quota);
            }
        }
        for (c, h) in consumers.iter().enumerate() {
            let h = h.as_ref().unwrap();
            assert!(h.is_alive(), "consumer {c} stopped early");
        }
        let live: Vec<usize> = (0..4)
            .filter(|&i| i >= 2 || producers[i].is_some())
            .collect();
        let victim = live[rng.below(live.len() as u64) as usize];
        if victim < 2 {
            let p = victim;
            let h = producers[p].take().unwrap();
            assert!(send_signal(h.pid(), libc::SIGKILL));
            match h.join() {
                Err(JoinError::Signaled {
                    signal: Signal::KILL,
                    ..
                }) => {
                    out.producer_kills += 1;
                    let s = w[STARTED + p].load(Ordering::SeqCst);
                    let done = w[COMPLETED + p].load(Ordering::SeqCst);
                    assert!(s == done || s == done + 1, "producer {p}: {s} {done}");
                    if s > done {
                        maybe.push(p as u64 * quota + s - 1);
                    }
                    if s < quota {
                        // The replacement resumes after the number in
                        // flight: none of it completed yet.
                        w[COMPLETED + p].store(s, Ordering::SeqCst);
                        let h = start_producer(p, s);
                        pids.push(h.pid());
                        producers[p] = Some(h);
                    }
                }
                // It finished just before the signal.
                Ok(()) => assert_eq!(w[COMPLETED + p].load(Ordering::SeqCst), quota),
                Err(e) => panic!("producer {p} failed: {e}"),
            }
        } else {
            let c = victim - 2;
            let h = consumers[c].take().unwrap();
            assert!(send_signal(h.pid(), libc::SIGKILL));
            match h.join() {
                Err(JoinError::Signaled {
                    signal: Signal::KILL,
                    ..
                }) => out.consumer_kills += 1,
                other => panic!("consumer {c} was not killed: {other:?}"),
            }
            // Read before the replacement writes the same slot's words.
            let taken = w[TAKEN + c].load(Ordering::SeqCst);
            if taken != w[ACKED + c].load(Ordering::SeqCst) {
                held_at_kill.push(taken - 1);
            }
            let holding = w[HOLDING + c].swap(0, Ordering::SeqCst);
            if holding > 0 {
                killed_working.push(holding - 1);
            }
            let h = start_consumer(c);
            pids.push(h.pid());
            consumers[c] = Some(h);
        }
        if std::env::var_os("MULTIPROC_SOAK_VERBOSE").is_some() && rng.below(20) == 0 {
            eprintln!(
                "{:.1} s: {} received, {} queued, {:?} started, {} + {} kills",
                started.elapsed().as_secs_f64(),
                received(w),
                q.queue().len(),
                [
                    w[STARTED].load(Ordering::SeqCst),
                    w[STARTED + 1].load(Ordering::SeqCst)
                ],
                out.producer_kills,
                out.consumer_kills
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(200),
            "stuck: {} of {messages} received after {} producer and {} consumer kills; \
             queue length {}, {}",
            received(w),
            out.producer_kills,
            out.consumer_kills,
            q.queue().len(),
            multiproc::__bench::journal_report(q.queue())
        );
    }
    let produced = Instant::now();

    // Every message whose put returned must arrive (redeliveries of what
    // killed consumers held come once the queue is idle).
    let must = |id: u64| !maybe.contains(&id);
    let mut last = (0, Instant::now());
    loop {
        let missing = (0..messages)
            .filter(|&id| must(id) && w[COUNTS + id as usize].load(Ordering::SeqCst) == 0)
            .count();
        if missing == 0 {
            break;
        }
        if missing != last.0 {
            last = (missing, Instant::now());
        }
        assert!(
            last.1.elapsed() < Duration::from_secs(20),
            "{missing} messages never arrived (first: {:?}), queue length {}, {}",
            (0..messages)
                .filter(|&id| must(id) && w[COUNTS + id as usize].load(Ordering::SeqCst) == 0)
                .take(10)
                .collect::<Vec<_>>(),
            q.queue().len(),
            multiproc::__bench::journal_report(q.queue())
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    w[STOP].store(1, Ordering::SeqCst);
    for (c, h) in consumers.into_iter().flatten().enumerate() {
        assert_eq!(
            h.join().unwrap_or_else(|e| panic!("consumer {c}: {e}")),
            Ok(()),
            "consumer {c}"
        );
    }
    // Anything still held by a dead consumer and not yet given back comes
    // now, to the last holder.
    while let Ok(d) = q.queue().get_delivery_timeout(Duration::from_millis(300)) {
        w[COUNTS + d.id as usize].fetch_add(1, Ordering::SeqCst);
        d.ack().unwrap();
    }
    for pid in pids {
        assert_gone(pid);
    }
    assert_eq!(shm_entries(), shm_before, "entries left in /dev/shm");

    // The checks.
    assert_eq!(
        w[BAD].load(Ordering::SeqCst),
        0,
        "messages with a wrong payload or id (first id {})",
        w[FIRST_BAD].load(Ordering::SeqCst).wrapping_sub(1)
    );
    let counts: Vec<u64> = w[COUNTS..]
        .iter()
        .map(|c| c.load(Ordering::SeqCst))
        .collect();
    let lost: Vec<u64> = (0..messages)
        .filter(|&id| must(id) && counts[id as usize] == 0)
        .collect();
    assert!(lost.is_empty(), "completed puts lost: {lost:?}");
    out.maybe_lost = maybe.iter().filter(|&&id| counts[id as usize] == 0).count();
    out.duplicates = counts.iter().map(|&n| n.saturating_sub(1)).sum();
    held_at_kill.sort_unstable();
    held_at_kill.dedup();
    let held_duplicates = held_at_kill
        .iter()
        .filter(|&&id| counts[id as usize] > 1)
        .count();
    let received = counts.iter().filter(|&&n| n > 0).count();
    eprintln!(
        "{}: {received} distinct messages received in {:.1} s ({:.1} s producing); \
         {} producer kills ({} mid-put, {} of those messages lost), \
         {} consumer kills ({} holding a delivery, {} certainly unacknowledged), \
         {} duplicates ({} of held ones)",
        v.name,
        started.elapsed().as_secs_f64(),
        (produced - started).as_secs_f64(),
        out.producer_kills,
        maybe.len(),
        out.maybe_lost,
        out.consumer_kills,
        held_at_kill.len(),
        killed_working.len(),
        out.duplicates,
        held_duplicates,
    );
    // At most one message in flight per producer kill (by construction),
    // and one extra copy per consumer kill.
    assert!(maybe.len() as u64 <= out.producer_kills);
    assert!(
        out.duplicates <= out.consumer_kills,
        "{} duplicates for {} consumer kills: {:?}",
        out.duplicates,
        out.consumer_kills,
        counts
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 1)
            .take(20)
            .collect::<Vec<_>>()
    );
    // A delivery its consumer certainly had not acknowledged came again.
    for id in &killed_working {
        assert!(
            counts[*id as usize] >= 2,
            "{id}, held unacknowledged by a killed consumer, came {} times; {}",
            counts[*id as usize],
            multiproc::__bench::journal_report(q.queue())
        );
    }
    out.killed_working = killed_working.len();
    // Not vacuous: both kinds of kills happened.
    assert!(out.producer_kills > 0 && out.consumer_kills > 0, "{out:?}");
    out
}

/// Random kills found a consumer at work, whose delivery then came again.
/// In a debug build 40-60% of consumer kills do, and a default run has 60
/// or more; a shorter run (fewer messages, or a release build) need not.
fn assert_some_kill_found_work(out: &Outcome) {
    if out.consumer_kills >= 30 {
        assert!(
            out.killed_working > 0,
            "no kill found a consumer at work: {out:?}"
        );
    }
}

/// The soaks run one at a time: each wants both processors.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn acknowledged_gets_on_an_unbounded_queue_survive_random_kills() {
    let _one = one_at_a_time();
    deadline(Duration::from_secs(300), || {
        let out = soak(
            Queue::<Job>::new().unwrap(),
            Variant {
                name: "unbounded",
                messages: 1_000_000,
                optimised: 4,
                payload: 0,
                work_every: 256,
            },
        );
        assert_some_kill_found_work(&out);
    });
}

#[test]
fn acknowledged_gets_on_a_bounded_queue_survive_random_kills() {
    let _one = one_at_a_time();
    deadline(Duration::from_secs(300), || {
        let out = soak(
            Queue::<Job>::bounded(1000).unwrap(),
            Variant {
                name: "bounded",
                messages: 800_000,
                optimised: 1,
                payload: 0,
                work_every: 256,
            },
        );
        assert_some_kill_found_work(&out);
    });
}

#[test]
fn acknowledged_gets_on_a_joinable_queue_survive_random_kills() {
    let _one = one_at_a_time();
    deadline(Duration::from_secs(300), || {
        soak(
            JoinableQueue::<Job>::new().unwrap(),
            Variant {
                name: "joinable",
                messages: 200_000,
                optimised: 10,
                payload: 0,
                work_every: 256,
            },
        );
    });
}

#[test]
fn acknowledged_gets_of_out_of_line_messages_survive_random_kills() {
    let _one = one_at_a_time();
    deadline(Duration::from_secs(300), || {
        // A 4 KiB ring holds at most 2 KiB - 8 inline: 3000 bytes go
        // through the mailbox, and are stored in the journal's mailbox
        // while held.
        let q = Queue::builder().ring_bytes(4096).build::<Job>().unwrap();
        let out = soak(
            q,
            Variant {
                name: "out of line",
                messages: 60_000,
                optimised: 1,
                payload: 3000,
                work_every: 16,
            },
        );
        assert_some_kill_found_work(&out);
    });
}
