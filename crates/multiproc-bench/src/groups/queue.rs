//! Group `queue`: throughput of `multiproc::Queue` and `SimpleQueue`
//! between processes (Python: `multiprocessing.Queue` and `SimpleQueue`).
//!
//! * `queue_1p1c` (MB/s, payload bytes only, 1 MB = 10^6 bytes): one
//!   producer child puts, the **parent** gets. Params `8B` (a `u64`),
//!   `1KiB`, `64KiB` and `1MiB` (a `serde_bytes::ByteBuf`, so the payload
//!   is copied as one block, not element by element). `queue_1p1c_msgs`
//!   (msg/s) is the message rate of the same 8-byte runs.
//! * `queue_1p1c_ring16MiB` (`1MiB`): the 1 MiB runs again on a queue with
//!   a 16 MiB ring ([`BIG_RING`]). The `queue_1p1c` 1MiB row uses the
//!   default 4 MiB ring, where a 1 MiB message travels inline (the limit
//!   is half the ring, less 8 bytes).
//! * `queue_2p2c` (`8B`, MB/s; `queue_2p2c_msgs` in msg/s): two producer
//!   children put `u64`s, two consumer children get them; the parent only
//!   commands and checks that every message arrived once (count and sum).
//! * `simplequeue_1p1c` (`8B`, MB/s; `simplequeue_1p1c_msgs` in msg/s):
//!   `queue_1p1c` 8B with a `SimpleQueue<u64>`.
//! * `queue_1p1c_ack` (`8B`, msg/s): `queue_1p1c` 8B with every value taken
//!   by an acknowledged get (`get_delivery`, then `ack`), interleaved with
//!   the plain runs. Python has no acknowledged get: its row is its plain
//!   `Queue` 1 -> 1 rate from the same run.
//! * `queue_1p1c_async` (`8B`, msg/s): `queue_1p1c` 8B with the parent
//!   awaiting `get_async` in a task on tokio's current_thread runtime,
//!   interleaved with the plain runs. Its Python row is, again, Python's
//!   plain `Queue` 1 -> 1 rate from the same run.
//!
//! Every child is started with forkserver and waits for commands on its
//! own pipe, blocked in `recv`. A run: the parent sends the producer a
//! message count (and the consumers a go), then gets that many messages
//! (1p1c) or waits for the consumers' reports (2p2c); it is timed from the
//! first command to the last message or report. After a warm-up (a
//! calibration whose result is thrown away), the count is calibrated so
//! that a run lasts about [`Plan::target`]. Dropping the parent's ends of
//! the command pipes ends the children (this machinery, shared with group
//! `sync`, is in [`crate::rig`]).
//!
//! The bytes producer puts the same payload every time, shared by
//! reference ([`Payload`], an `Arc`), as Python's producer puts the same
//! `bytes` object: each `put` encodes (copies) the bytes, in both. Cloning
//! a `Vec` per put instead would mostly measure the clone: glibc's
//! `memcpy` of a freshly allocated 64 KiB copy runs at ~2 GB/s on this
//! machine's AMD cores (the copy lands 16 bytes past its source modulo
//! 4096, a 4K-aliasing case of `rep movsb`), whatever the queue does.
//!
//! Interleaving: the two 8-byte 1p1c benches (Queue and SimpleQueue) run
//! side by side, one run of each in turn, and so do the two 1 MiB ring
//! sizes; so a drift in the machine's load hits them alike. The Python
//! side, `python/queue_bench.py` (not `queue.py`, which would shadow the
//! standard library's `queue` module), runs with the same plan as a
//! [`crate::python::Session`], its rounds between ours, and interleaves
//! its own benches the same way.
//!
//! The `raw` floor of every `queue_1p1c` param (and `queue_1p1c_msgs`
//! 8B) is the same ring with bytes and nothing else
//! (`multiproc::__bench::RawRing`: no serde, no out-of-line path): the
//! producer child pushes the payload's bytes (8B: the `u64`'s 8 bytes),
//! the parent pops each into one reused buffer (8B: and checks the order).
//! It is measured interleaved with the multiproc benches of its param.
//! This crate has no `unsafe`; the ring's own is in `multiproc`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use multiproc::__bench::RawRing;
use multiproc::{Connection, DEFAULT_RING_BYTES, Queue, SimpleQueue, StartMethod, Waitable, wait};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_bytes::ByteBuf;

use super::Options;
use crate::report::{self, Measurement, Row};
use crate::rig::{Plan, Rig, Run, Runs, command_pipe, end, measure_rigs, start};

/// The group's name on the command line and in the output.
pub const NAME: &str = "queue";

/// How every child (and Python's) is started.
const METHOD: StartMethod = StartMethod::ForkServer;

/// Payload sizes of `queue_1p1c` (param, bytes). The 8-byte one is a `u64`.
const SIZES: [(&str, usize); 4] = [
    ("8B", 8),
    ("1KiB", 1 << 10),
    ("64KiB", 64 << 10),
    ("1MiB", 1 << 20),
];

/// The param of the 8-byte (`u64`) benches.
const SMALL: &str = "8B";

/// The payload size whose two ring sizes are compared.
const BIG: usize = 1 << 20;

/// Ring of the `queue_1p1c` 1MiB bench: large enough for 1 MiB inline.
const BIG_RING: usize = 16 << 20;

/// Bench name of the 1 MiB runs on the 16 MiB ring.
const BIG_RING_BENCH: &str = "queue_1p1c_ring16MiB";

/// Byte value of the payloads.
const FILL: u8 = 0xa5;

/// What a 2p2c producer puts after its messages; a consumer stops at the
/// first one it gets (every value put is below it).
const SENTINEL: u64 = u64::MAX;

/// How long the parent waits for a 2p2c consumer's report.
const REPORT_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs the group: multiproc, then Python.
pub fn run(opts: &Options) -> Vec<Row> {
    let plan = Plan::new(opts.quick);
    let mut multiproc = Vec::new();
    opts.progress(
        NAME,
        "python (queue_bench.py) starting, its rounds interleaved with ours",
    );
    let args = plan.python_args(METHOD);
    let mut python = opts
        .python
        .session("queue_bench.py", &args, plan.python_timeout);
    let mut turn = || python.turn();

    opts.progress(
        NAME,
        "queue_1p1c and simplequeue_1p1c 8B: multiproc, interleaved",
    );
    let mut raw = Vec::new();
    let [queue_runs, simple_runs, raw_runs, ack_runs, async_runs] = measure_rigs(
        plan.target,
        plan.reps,
        [u64_rig(), simple_rig(), raw_rig(8), ack_rig(), async_rig()],
        &mut turn,
    );
    multiproc.extend(measurements("queue_1p1c", SMALL, 8, queue_runs));
    raw.extend(measurements("queue_1p1c", SMALL, 8, raw_runs));
    multiproc.push(rate_measurement("queue_1p1c_ack", ack_runs));
    multiproc.push(rate_measurement("queue_1p1c_async", async_runs));
    // Reported last, after the Queue benches.
    let simple = measurements("simplequeue_1p1c", SMALL, 8, simple_runs);
    for (param, size) in SIZES.into_iter().filter(|&(_, size)| size > 8) {
        if size == BIG {
            opts.progress(
                NAME,
                &format!(
                    "queue_1p1c {param}: multiproc, 16 MiB and 4 MiB rings, and raw, interleaved"
                ),
            );
            let rigs = [
                bytes_rig(size, Some(BIG_RING)),
                bytes_rig(size, None),
                raw_rig(size),
            ];
            let [big_ring, default_ring, raw_runs] =
                measure_rigs(plan.target, plan.reps, rigs, &mut turn);
            multiproc.extend(measurements("queue_1p1c", param, size, default_ring));
            multiproc.extend(measurements(BIG_RING_BENCH, param, size, big_ring));
            raw.extend(measurements("queue_1p1c", param, size, raw_runs));
        } else {
            opts.progress(
                NAME,
                &format!("queue_1p1c {param}: multiproc and raw, interleaved"),
            );
            let rigs = [bytes_rig(size, None), raw_rig(size)];
            let [runs, raw_runs] = measure_rigs(plan.target, plan.reps, rigs, &mut turn);
            multiproc.extend(measurements("queue_1p1c", param, size, runs));
            raw.extend(measurements("queue_1p1c", param, size, raw_runs));
        }
    }
    opts.progress(NAME, "queue_2p2c 8B: multiproc");
    let [runs] = measure_rigs(plan.target, plan.reps, [two_by_two_rig()], &mut turn);
    multiproc.extend(measurements("queue_2p2c", SMALL, 8, runs));
    multiproc.extend(simple);

    let python = python.finish();
    let rows = report::pair(
        NAME,
        multiproc,
        python.measurements,
        python.failure.as_deref(),
    );
    report::add_raw(NAME, rows, raw)
}

/// The MB/s measurement of `bench` and `param` from per-run `(messages,
/// seconds)` of `size`-byte payloads, plus `<bench>_msgs` (msg/s) for the
/// 8-byte param.
fn measurements(bench: &str, param: &str, size: usize, runs: Runs) -> Vec<Measurement> {
    let rate = |f: &dyn Fn(u64, f64) -> f64| {
        runs.as_ref()
            .map(|runs| runs.iter().map(|&(n, secs)| f(n, secs)).collect())
            .map_err(Clone::clone)
    };
    let mut out = vec![Measurement::new(
        bench,
        param,
        "MB/s",
        rate(&|n, secs| n as f64 * size as f64 / secs / 1e6),
    )];
    if param == SMALL {
        out.push(Measurement::new(
            &format!("{bench}_msgs"),
            param,
            "msg/s",
            rate(&|n, secs| n as f64 / secs),
        ));
    }
    out
}

/// A msg/s measurement of 8-byte runs: `queue_1p1c_ack` (the parent
/// takes every `u64` with an acknowledged get and acknowledges it) and
/// `queue_1p1c_async` (the parent awaits `get_async` on tokio's
/// current_thread runtime). Python has neither: their rows are Python's
/// plain `Queue` 1 -> 1 in the same run.
fn rate_measurement(bench: &str, runs: Runs) -> Measurement {
    Measurement::new(
        bench,
        SMALL,
        "msg/s",
        runs.as_ref()
            .map(|runs| runs.iter().map(|&(n, secs)| n as f64 / secs).collect())
            .map_err(Clone::clone),
    )
}

/// A byte payload shared by reference, like a Python `bytes` object:
/// putting it again clones the `Arc`, not the bytes. It travels as one
/// block of bytes (as a `ByteBuf`), and a get yields a fresh buffer.
#[derive(Clone)]
struct Payload(Arc<ByteBuf>);

impl Serialize for Payload {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        ByteBuf::deserialize(deserializer).map(|b| Payload(Arc::new(b)))
    }
}

// ---------------------------------------------------------------------------
// Children

/// 1p1c producer of `u64`s: for every command `count`, puts `0..count`;
/// returns when the command pipe closes.
fn produce_u64((cmd, q): (Connection<(), u64>, Queue<u64>)) {
    while let Ok(count) = cmd.recv() {
        for i in 0..count {
            if q.put(i).is_err() {
                return;
            }
        }
    }
}

/// The same with a `SimpleQueue`.
fn produce_simple((cmd, q): (Connection<(), u64>, SimpleQueue<u64>)) {
    while let Ok(count) = cmd.recv() {
        for i in 0..count {
            if q.put(i).is_err() {
                return;
            }
        }
    }
}

/// 1p1c producer of `size`-byte payloads: for every command `count`, puts
/// the same shared payload that many times (see [`Payload`]).
fn produce_bytes((cmd, q, size): (Connection<(), u64>, Queue<Payload>, u64)) {
    let payload = Payload(Arc::new(ByteBuf::from(vec![FILL; size as usize])));
    while let Ok(count) = cmd.recv() {
        for _ in 0..count {
            if q.put(payload.clone()).is_err() {
                return;
            }
        }
    }
}

/// Raw-floor producer: for every command `count`, pushes `count` records
/// of `size` bytes (8: the little-endian `u64`s `0..count`).
fn produce_raw((cmd, ring, size): (Connection<(), u64>, RawRing, u64)) {
    let payload = vec![FILL; size as usize];
    while let Ok(count) = cmd.recv() {
        for i in 0..count {
            let pushed = if size == 8 {
                ring.push(&i.to_le_bytes())
            } else {
                ring.push(&payload)
            };
            if pushed.is_err() {
                return;
            }
        }
    }
}

/// 2p2c producer: for every command `(first, count)`, puts
/// `first..first + count` and then [`SENTINEL`].
fn produce_range((cmd, q): (Connection<(), (u64, u64)>, Queue<u64>)) {
    while let Ok((first, count)) = cmd.recv() {
        for v in (first..first + count).chain([SENTINEL]) {
            if q.put(v).is_err() {
                return;
            }
        }
    }
}

/// 2p2c consumer: for every command, gets values until a [`SENTINEL`], then
/// reports how many it got and their (wrapping) sum.
fn consume_until_sentinel((cmd, q): (Connection<(u64, u64), u64>, Queue<u64>)) {
    while cmd.recv().is_ok() {
        let (mut count, mut sum) = (0u64, 0u64);
        loop {
            match q.get() {
                Ok(SENTINEL) => break,
                Ok(v) => {
                    count += 1;
                    sum = sum.wrapping_add(v);
                }
                Err(_) => return,
            }
        }
        if cmd.send(&(count, sum)).is_err() {
            return;
        }
    }
}

// ---------------------------------------------------------------------------
// Rigs: the children of a bench and the parent's side of a run

/// `queue_1p1c` 8B: a producer child puts `u64`s, the parent gets them and
/// checks their order.
fn u64_rig() -> Result<Rig, String> {
    let q = Queue::<u64>::new().map_err(|e| format!("queue failed: {e}"))?;
    let (ours, theirs) = command_pipe::<u64, ()>()?;
    let child = start(METHOD, produce_u64, (theirs, q.clone()))?;
    let run: Box<Run> = Box::new(move |count| {
        let t0 = Instant::now();
        ours.send(&count)
            .map_err(|e| format!("command failed: {e}"))?;
        for i in 0..count {
            let v = q.get().map_err(|e| format!("get failed: {e}"))?;
            if v != i {
                return Err(format!("got {v} where {i} was due"));
            }
        }
        Ok(t0.elapsed())
    });
    Ok(Rig {
        children: vec![child],
        run,
    })
}

/// `queue_1p1c_ack` 8B: as [`u64_rig`], each value taken with
/// `get_delivery` and acknowledged.
fn ack_rig() -> Result<Rig, String> {
    let q = Queue::<u64>::new().map_err(|e| format!("queue failed: {e}"))?;
    let (ours, theirs) = command_pipe::<u64, ()>()?;
    let child = start(METHOD, produce_u64, (theirs, q.clone()))?;
    let run: Box<Run> = Box::new(move |count| {
        let t0 = Instant::now();
        ours.send(&count)
            .map_err(|e| format!("command failed: {e}"))?;
        for i in 0..count {
            let d = q
                .get_delivery()
                .map_err(|e| format!("get_delivery failed: {e}"))?;
            let v = d.ack().map_err(|e| format!("ack failed: {e}"))?;
            if v != i {
                return Err(format!("got {v} where {i} was due"));
            }
        }
        Ok(t0.elapsed())
    });
    Ok(Rig {
        children: vec![child],
        run,
    })
}

/// `queue_1p1c_async` 8B: as [`u64_rig`], the parent awaiting each value
/// with `get_async` in a task on tokio's current_thread runtime (one
/// `block_on` per run, the runtime kept between runs).
fn async_rig() -> Result<Rig, String> {
    let q = Queue::<u64>::new().map_err(|e| format!("queue failed: {e}"))?;
    let (ours, theirs) = command_pipe::<u64, ()>()?;
    let child = start(METHOD, produce_u64, (theirs, q.clone()))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|e| format!("runtime failed: {e}"))?;
    let run: Box<Run> = Box::new(move |count| {
        let t0 = Instant::now();
        ours.send(&count)
            .map_err(|e| format!("command failed: {e}"))?;
        rt.block_on(async {
            for i in 0..count {
                let v = q
                    .get_async()
                    .await
                    .map_err(|e| format!("get_async failed: {e}"))?;
                if v != i {
                    return Err(format!("got {v} where {i} was due"));
                }
            }
            Ok(())
        })?;
        Ok(t0.elapsed())
    });
    Ok(Rig {
        children: vec![child],
        run,
    })
}

/// `simplequeue_1p1c` 8B: as [`u64_rig`] with a `SimpleQueue`.
fn simple_rig() -> Result<Rig, String> {
    let q = SimpleQueue::<u64>::new().map_err(|e| format!("queue failed: {e}"))?;
    let (ours, theirs) = command_pipe::<u64, ()>()?;
    let child = start(METHOD, produce_simple, (theirs, q.clone()))?;
    let run: Box<Run> = Box::new(move |count| {
        let t0 = Instant::now();
        ours.send(&count)
            .map_err(|e| format!("command failed: {e}"))?;
        for i in 0..count {
            let v = q.get().map_err(|e| format!("get failed: {e}"))?;
            if v != i {
                return Err(format!("got {v} where {i} was due"));
            }
        }
        Ok(t0.elapsed())
    });
    Ok(Rig {
        children: vec![child],
        run,
    })
}

/// `queue_1p1c` of `size`-byte payloads: a producer child puts
/// [`Payload`]s, the parent gets them. `ring` is the ring size (`None`: the
/// default, [`multiproc::DEFAULT_RING_BYTES`]).
fn bytes_rig(size: usize, ring: Option<usize>) -> Result<Rig, String> {
    let builder = Queue::builder();
    let builder = match ring {
        Some(bytes) => builder.ring_bytes(bytes),
        None => builder,
    };
    let q = builder
        .build::<Payload>()
        .map_err(|e| format!("queue failed: {e}"))?;
    let (ours, theirs) = command_pipe::<u64, ()>()?;
    let child = start(METHOD, produce_bytes, (theirs, q.clone(), size as u64))?;
    let run: Box<Run> = Box::new(move |count| {
        let t0 = Instant::now();
        ours.send(&count)
            .map_err(|e| format!("command failed: {e}"))?;
        let mut last = size;
        for _ in 0..count {
            last = q.get().map_err(|e| format!("get failed: {e}"))?.0.len();
        }
        let took = t0.elapsed();
        if last != size {
            return Err(format!("got a payload of {last} bytes, not {size}"));
        }
        Ok(took)
    });
    Ok(Rig {
        children: vec![child],
        run,
    })
}

/// The raw floor of `queue_1p1c` for `size`-byte records: a producer
/// child pushes them into a [`RawRing`] as large as the default queue
/// ring, the parent pops each into one reused buffer (8 bytes: as `u64`s,
/// checking their order).
fn raw_rig(size: usize) -> Result<Rig, String> {
    let ring = RawRing::new(DEFAULT_RING_BYTES).map_err(|e| format!("ring failed: {e}"))?;
    let theirs_ring = ring.try_clone().map_err(|e| format!("ring failed: {e}"))?;
    let (ours, theirs) = command_pipe::<u64, ()>()?;
    let child = start(METHOD, produce_raw, (theirs, theirs_ring, size as u64))?;
    let run: Box<Run> = Box::new(move |count| {
        let mut buf = Vec::with_capacity(size);
        let t0 = Instant::now();
        ours.send(&count)
            .map_err(|e| format!("command failed: {e}"))?;
        for i in 0..count {
            ring.pop(&mut buf).map_err(|e| format!("pop failed: {e}"))?;
            if size == 8 {
                let v = u64::from_le_bytes(buf.as_slice().try_into().unwrap_or_default());
                if v != i {
                    return Err(format!("got {v} where {i} was due"));
                }
            }
        }
        let took = t0.elapsed();
        if count > 0 && buf.len() != size {
            return Err(format!("got a record of {} bytes, not {size}", buf.len()));
        }
        Ok(took)
    });
    Ok(Rig {
        children: vec![child],
        run,
    })
}

/// `queue_2p2c`: two producer and two consumer children on one queue. A
/// run of `count` messages gives each producer half of `0..count`; each
/// consumer gets until a sentinel and reports its count and sum, and the
/// parent checks that they add up to `count` and the sum of `0..count`.
fn two_by_two_rig() -> Result<Rig, String> {
    let q = Queue::<u64>::new().map_err(|e| format!("queue failed: {e}"))?;
    let mut children = Vec::new();
    let mut producers = Vec::new();
    let mut consumers = Vec::new();
    let started = (|| {
        for _ in 0..2 {
            let (ours, theirs) = command_pipe::<u64, (u64, u64)>()?;
            children.push(start(METHOD, consume_until_sentinel, (theirs, q.clone()))?);
            consumers.push(ours);
        }
        for _ in 0..2 {
            let (ours, theirs) = command_pipe::<(u64, u64), ()>()?;
            children.push(start(METHOD, produce_range, (theirs, q.clone()))?);
            producers.push(ours);
        }
        Ok(())
    })();
    if let Err(e) = started {
        drop((producers, consumers));
        return end(children, Err(e));
    }
    // The parent neither puts nor gets: only the children hold the queue.
    drop(q);
    let run: Box<Run> = Box::new(move |count| {
        let t0 = Instant::now();
        for c in &consumers {
            c.send(&count).map_err(|e| format!("command failed: {e}"))?;
        }
        let half = count / 2;
        for (p, command) in producers.iter().zip([(0, half), (half, count - half)]) {
            p.send(&command)
                .map_err(|e| format!("command failed: {e}"))?;
        }
        let (got, sum) = collect_reports(&consumers, &producers)?;
        let took = t0.elapsed();
        // The sum of 0..count, wrapping as the consumers' sums do.
        let want = (u128::from(count) * u128::from(count.saturating_sub(1)) / 2) as u64;
        if got != count || sum != want {
            return Err(format!(
                "the consumers got {got} messages summing to {sum}, not {count} summing to {want}"
            ));
        }
        Ok(took)
    });
    Ok(Rig { children, run })
}

/// Waits for one `(count, sum)` report from each consumer and adds them
/// up. A producer's command pipe becomes readable only when the producer
/// is gone (producers never send): then its sentinel never comes, and the
/// run fails at once rather than at [`REPORT_TIMEOUT`].
fn collect_reports(
    consumers: &[Connection<u64, (u64, u64)>],
    producers: &[Connection<(u64, u64), ()>],
) -> Result<(u64, u64), String> {
    let deadline = Instant::now() + REPORT_TIMEOUT;
    let mut pending: Vec<&Connection<u64, (u64, u64)>> = consumers.iter().collect();
    let (mut got, mut sum) = (0u64, 0u64);
    while !pending.is_empty() {
        let mut watched: Vec<&dyn Waitable> = pending.iter().map(|c| *c as &dyn Waitable).collect();
        watched.extend(producers.iter().map(|p| p as &dyn Waitable));
        let left = deadline.saturating_duration_since(Instant::now());
        let mut ready = wait(&watched, Some(left)).map_err(|e| format!("wait failed: {e}"))?;
        ready.sort_unstable();
        if ready.is_empty() {
            return Err(format!(
                "no report from a consumer within {} s",
                REPORT_TIMEOUT.as_secs()
            ));
        }
        if ready.iter().any(|&i| i >= pending.len()) {
            return Err("a producer exited during a run".to_string());
        }
        // Highest index first, so that removing keeps the others valid.
        for &i in ready.iter().rev() {
            let (n, s) = pending
                .remove(i)
                .recv()
                .map_err(|e| format!("no report from a consumer: {e}"))?;
            got += n;
            sum = sum.wrapping_add(s);
        }
    }
    Ok((got, sum))
}
