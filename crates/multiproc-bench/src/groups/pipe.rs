//! Group `pipe`: messages over a duplex pipe between the parent and one
//! child process.
//!
//! * `roundtrip_bytes` (µs): ping-pong latency of an 8-byte message; the
//!   child echoes with `recv_bytes`/`send_bytes`. Median of per-batch mean
//!   round-trip times.
//! * `roundtrip_typed` (µs): the same with typed `send(&u64)`/`recv()`
//!   (Python: `send`/`recv`, which pickle an int).
//! * `oneway_bytes` (MB/s, payload bytes only, 1 MB = 10^6 bytes): the
//!   child sends, the parent receives with `recv_bytes`, messages of 8 B,
//!   64 KiB and 1 MiB. `oneway_bytes_msgs` (msg/s) is the message rate of
//!   the same 8-byte runs.
//!
//! Each bench also has a `socketpair` baseline (named `raw` before issue
//! 20): a plain `UnixStream::pair()` with a forked child, no framing
//! library. For the round trip, one `write` and
//! one `read` of the 8 bytes per direction; one way, one `write_all` of a
//! prebuilt 4-byte big-endian length prefix plus payload per message, read
//! with `read_exact` through a 64 KiB `BufReader`. multiproc's pipes are
//! shared-memory rings (the socket beside them carries only wake-ups), so
//! the socket pair is the transport they replace, not a floor of theirs.
//! Beside it, the Rust peer `ipc-channel` (the same echo and one-way
//! runs over its bytes channels) and, for the round trip on the idle
//! machine, the `shm-spin` floor: two processes spinning on a word of
//! shared memory each.
//!
//! The children of multiproc and Python are started with forkserver, so a
//! child holds only its own end of the pipe and closing the parent's end
//! stops it. The raw children are forked with a closure (they need the
//! socket without the library): such a child holds copies of all the
//! parent's descriptors, so it is stopped by shutting down the parent's
//! write side, and it is forked before the multiproc pipes exist.
//!
//! One-way runs are driven by the parent: it sends the child a command
//! (a message count), then receives that many messages; the time runs from
//! sending the command to receiving the last message. The count is
//! calibrated first (those runs are the warm-up) so that a run lasts about
//! the plan's target ([`rig::Plan`]).
//!
//! The children of one comparison run side by side and their batches (or
//! runs) are interleaved: the three round trips (bytes, typed, raw) in
//! turn, batch after batch, and multiproc and raw in turn for each message
//! size. A child that is not being measured waits in a blocking receive.
//! So a drift in the machine's load (another build, say) hits them alike.
//! The children and their ending are [`crate::rig`]'s, as for `queue` and
//! `sync`.
//!
//! The Python side is `python/pipe.py`, run with the same plan as a
//! [`crate::python::Session`]: its round of samples (its bytes and typed
//! round trips, or one one-way run) comes between two of ours.

use std::io::{BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ipc_channel::ipc::{self, IpcBytesReceiver, IpcBytesSender, IpcOneShotServer};
use multiproc::{Connection, Process, SharedMemory, StartMethod};

use super::Options;
use crate::measure;
use crate::report::{self, Impl, Measurement, Row};
use crate::rig::{self, Rig, ShutdownOnDrop, command_pipe, measure_each, start};

/// The group's name on the command line and in the output.
pub const NAME: &str = "pipe";

/// How the multiproc (and Python) children are started.
const METHOD: StartMethod = StartMethod::ForkServer;

/// Message sizes of `oneway_bytes`: param and bytes.
const SIZES: [(&str, usize); 3] = [("8B", 8), ("64KiB", 64 << 10), ("1MiB", 1 << 20)];

/// The param of the 8-byte benches.
const SMALL: &str = "8B";

/// The 8-byte message of `roundtrip_bytes`.
const PING: [u8; 8] = *b"ping-pon";

/// The value of `roundtrip_typed` (the same on the Python side).
const PING_VALUE: u64 = 0x0123_4567_89ab_cdef;

/// Read buffer of the raw one-way receiver.
const RAW_READ_BUF: usize = 64 << 10;

/// Repetition counts of one run.
#[derive(Debug, Clone, Copy)]
struct Plan {
    /// Untimed round trips before the batches.
    warmup: usize,
    /// Round-trip batches (samples) per bench.
    batches: usize,
    /// Round trips per batch.
    batch: usize,
    /// The one-way runs, and the Python script's time limit.
    runs: rig::Plan,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        let runs = rig::Plan::new(quick);
        if quick {
            Plan {
                warmup: 2000,
                batches: 20,
                batch: 1000,
                runs,
            }
        } else {
            Plan {
                warmup: 5000,
                batches: 100,
                batch: 1000,
                runs,
            }
        }
    }
}

/// Runs the group: multiproc, the socket pair, ipc-channel and (idle
/// only) the shared-memory spin floor, with Python's rounds interleaved.
pub fn run(opts: &Options) -> Vec<Row> {
    let plan = Plan::new(opts.quick);
    let mut multiproc = Vec::new();
    let mut socket = Vec::new();
    let mut ipc = Vec::new();
    let mut spin = Vec::new();

    let mut args = plan.runs.python_args(METHOD);
    for (option, value) in [
        ("--warmup", plan.warmup),
        ("--batches", plan.batches),
        ("--batch", plan.batch),
    ] {
        args.extend([option.to_string(), value.to_string()]);
    }
    opts.progress(
        NAME,
        "python (pipe.py) starting, its rounds interleaved with ours",
    );
    let mut python = opts
        .python
        .session("pipe.py", &args, plan.runs.python_timeout);

    opts.progress(
        NAME,
        "roundtrip 8B: multiproc bytes and typed, socketpair, ipc-channel, shm spin, python",
    );
    let [bytes, typed, socket_rt, ipc_rt, spin_rt] =
        roundtrips(&plan, opts.contended, &mut || python.turn());
    multiproc.push(Measurement::new("roundtrip_bytes", SMALL, "us", bytes));
    multiproc.push(Measurement::new("roundtrip_typed", SMALL, "us", typed));
    socket.push(Measurement::new("roundtrip_bytes", SMALL, "us", socket_rt));
    ipc.push(Measurement::new("roundtrip_bytes", SMALL, "us", ipc_rt));
    if !opts.contended {
        spin.push(Measurement::new("roundtrip_bytes", SMALL, "us", spin_rt));
    }
    for (param, size) in SIZES {
        opts.progress(
            NAME,
            &format!("oneway_bytes {param}: multiproc, socketpair, ipc-channel, python"),
        );
        let [mp_runs, socket_runs, ipc_runs] = oneway(&plan, size, &mut || python.turn());
        multiproc.extend(oneway_measurements(param, size, mp_runs));
        socket.extend(oneway_measurements(param, size, socket_runs));
        ipc.extend(oneway_measurements(param, size, ipc_runs));
    }

    let python = python.finish();
    let rows = report::pair(
        NAME,
        multiproc,
        python.measurements,
        python.failure.as_deref(),
    );
    let rows = report::add_reference(NAME, rows, Impl::Socketpair, socket);
    let rows = report::add_reference(NAME, rows, Impl::IpcChannel, ipc);
    report::add_reference(NAME, rows, Impl::ShmSpin, spin)
}

/// The `oneway_bytes` measurement of `param` from per-run `(messages,
/// seconds)`, plus `oneway_bytes_msgs` for the 8-byte size.
fn oneway_measurements(
    param: &str,
    size: usize,
    runs: Result<Vec<(u64, f64)>, String>,
) -> Vec<Measurement> {
    let rate = |f: &dyn Fn(u64, f64) -> f64| {
        runs.as_ref()
            .map(|runs| runs.iter().map(|&(n, secs)| f(n, secs)).collect())
            .map_err(Clone::clone)
    };
    let mut out = vec![Measurement::new(
        "oneway_bytes",
        param,
        "MB/s",
        rate(&|n, secs| (n as f64 * size as f64) / secs / 1e6),
    )];
    if param == SMALL {
        out.push(Measurement::new(
            "oneway_bytes_msgs",
            param,
            "msg/s",
            rate(&|n, secs| n as f64 / secs),
        ));
    }
    out
}

/// One round trip, done by the parent.
type RoundTrip = dyn FnMut() -> Result<(), String>;

/// Forks a daemon child that runs `f` (for the raw floors).
fn fork(f: impl FnOnce() + Send + 'static) -> Result<Process<()>, String> {
    Process::builder()
        .daemon(true)
        .fork(f)
        .map_err(|e| format!("fork failed: {e}"))
}

/// Per-batch mean round-trip times (µs) of `roundtrip_bytes`,
/// `roundtrip_typed`, the socket pair, ipc-channel and the shared-memory
/// spin floor (not measured when `contended`: two spinners sharing cores
/// with hogs take a time slice per round trip), measured interleaved, with
/// `between` (Python's turn) at the start of every round.
fn roundtrips(
    plan: &Plan,
    contended: bool,
    between: &mut dyn FnMut(),
) -> [Result<Vec<f64>, String>; 5] {
    // The forked children come first: a forked child holds copies of
    // every descriptor the parent has (see `raw_echo_rig`), and it must
    // not hold the multiproc pipes, or their children would never see the
    // end.
    let socket = raw_echo_rig();
    let ipc = ipc_echo_rig();
    let spin = if contended {
        Err("not measured in the contended run".to_string())
    } else {
        spin_echo_rig()
    };
    let rigs = [echo_bytes_rig(), echo_typed_rig(), socket, ipc, spin];
    measure_each(rigs, |ops| {
        measure::per_op_us(plan.warmup, plan.batches, plan.batch, ops, between)
    })
}

/// Child of `roundtrip_bytes`: echoes every message until the pipe closes.
fn echo_bytes(conn: Connection) {
    while let Ok(msg) = conn.recv_bytes() {
        if conn.send_bytes(&msg).is_err() {
            break;
        }
    }
}

/// Child of `roundtrip_typed`: echoes every value until the pipe closes.
fn echo_typed(conn: Connection<u64, u64>) {
    while let Ok(value) = conn.recv() {
        if conn.send(&value).is_err() {
            break;
        }
    }
}

/// `roundtrip_bytes`: `send_bytes` + `recv_bytes` of 8 bytes.
fn echo_bytes_rig() -> Result<Rig<RoundTrip>, String> {
    let (ours, theirs) = command_pipe::<(), ()>()?;
    let child = start(METHOD, echo_bytes, theirs)?;
    let op: Box<RoundTrip> = Box::new(move || {
        ours.send_bytes(&PING)
            .map_err(|e| format!("send_bytes failed: {e}"))?;
        let back = ours
            .recv_bytes()
            .map_err(|e| format!("recv_bytes failed: {e}"))?;
        if back.len() != PING.len() {
            return Err(format!("an echo of {} bytes came back", back.len()));
        }
        Ok(())
    });
    Ok(Rig {
        children: vec![child],
        run: op,
    })
}

/// `roundtrip_typed`: typed `send` + `recv` of a u64.
fn echo_typed_rig() -> Result<Rig<RoundTrip>, String> {
    let (ours, theirs) = command_pipe::<u64, u64>()?;
    let child = start(METHOD, echo_typed, theirs)?;
    let op: Box<RoundTrip> = Box::new(move || {
        ours.send(&PING_VALUE)
            .map_err(|e| format!("send failed: {e}"))?;
        let back = ours.recv().map_err(|e| format!("recv failed: {e}"))?;
        if back != PING_VALUE {
            return Err(format!("the echo came back as {back:#x}"));
        }
        Ok(())
    });
    Ok(Rig {
        children: vec![child],
        run: op,
    })
}

/// The raw floor of `roundtrip_bytes`: 8 bytes each way over a plain
/// socket pair, one `write` and one `read` per direction.
fn raw_echo_rig() -> Result<Rig<RoundTrip>, String> {
    let (mut ours, mut theirs) = UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
    let closer = ShutdownOnDrop(ours.try_clone().map_err(|e| format!("dup: {e}"))?);
    let child = fork(move || {
        let mut buf = [0u8; 8];
        while theirs.read_exact(&mut buf).is_ok() {
            if theirs.write_all(&buf).is_err() {
                break;
            }
        }
    })?;
    let mut buf = [0u8; 8];
    let op: Box<RoundTrip> = Box::new(move || {
        let _ = &closer;
        ours.write_all(&PING).map_err(|e| format!("write: {e}"))?;
        ours.read_exact(&mut buf).map_err(|e| format!("read: {e}"))
    });
    Ok(Rig {
        children: vec![child],
        run: op,
    })
}

/// Reads a one-way command: how many messages to send; `None` at the end.
fn command(msg: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(msg).ok().map(u64::from_le_bytes)
}

/// Child of `oneway_bytes`: for every command received, sends that many
/// messages of `size` bytes; returns when the pipe closes.
fn sender((conn, size): (Connection, u64)) {
    let payload = vec![0xa5u8; size as usize];
    while let Some(count) = conn.recv_bytes().ok().as_deref().and_then(command) {
        for _ in 0..count {
            if conn.send_bytes(&payload).is_err() {
                return;
            }
        }
    }
}

/// One-way runs of `size`-byte messages, multiproc, the socket pair and
/// ipc-channel, interleaved, with `between` (Python's turn) at the start
/// of every round.
fn oneway(
    plan: &Plan,
    size: usize,
    between: &mut dyn FnMut(),
) -> [Result<Vec<(u64, f64)>, String>; 3] {
    // The forked children first, as in `roundtrips`.
    let socket = raw_sender_rig(size);
    let ipc = ipc_sender_rig(size);
    let rigs = [sender_rig(size), socket, ipc];
    measure_each(rigs, |runs| {
        measure::timed_runs(plan.runs.target, plan.runs.reps, runs, between)
    })
}

/// `oneway_bytes`: a child sends with `send_bytes`, the parent receives
/// with `recv_bytes`.
fn sender_rig(size: usize) -> Result<Rig, String> {
    let (ours, theirs) = command_pipe::<(), ()>()?;
    let child = start(METHOD, sender, (theirs, size as u64))?;
    let op: Box<rig::Run> = Box::new(move |count| {
        let t0 = Instant::now();
        ours.send_bytes(&count.to_le_bytes())
            .map_err(|e| format!("send_bytes failed: {e}"))?;
        let mut last = 0;
        for _ in 0..count {
            last = ours
                .recv_bytes()
                .map_err(|e| format!("recv_bytes failed: {e}"))?
                .len();
        }
        let took = t0.elapsed();
        if last != size {
            return Err(format!("got a message of {last} bytes, not {size}"));
        }
        Ok(took)
    });
    Ok(Rig {
        children: vec![child],
        run: op,
    })
}

/// The raw floor of `oneway_bytes`: one `write_all` of prefix and payload
/// per message, `read_exact` of prefix and payload through a `BufReader`.
fn raw_sender_rig(size: usize) -> Result<Rig, String> {
    let prefix = u32::try_from(size).map_err(|_| "message too large".to_string())?;
    let (ours, mut theirs) = UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
    let mut writer = ours.try_clone().map_err(|e| format!("dup: {e}"))?;
    let closer = ShutdownOnDrop(ours.try_clone().map_err(|e| format!("dup: {e}"))?);
    let child = fork(move || {
        let mut frame = prefix.to_be_bytes().to_vec();
        frame.resize(4 + size, 0xa5);
        let mut cmd = [0u8; 8];
        while theirs.read_exact(&mut cmd).is_ok() {
            for _ in 0..u64::from_le_bytes(cmd) {
                if theirs.write_all(&frame).is_err() {
                    return;
                }
            }
        }
    })?;
    let mut reader = BufReader::with_capacity(RAW_READ_BUF, ours);
    let mut buf = vec![0u8; size];
    let op: Box<rig::Run> = Box::new(move |count| {
        let _ = &closer;
        let t0 = Instant::now();
        writer
            .write_all(&count.to_le_bytes())
            .map_err(|e| format!("write: {e}"))?;
        for _ in 0..count {
            let mut head = [0u8; 4];
            reader
                .read_exact(&mut head)
                .map_err(|e| format!("read: {e}"))?;
            let len = u32::from_be_bytes(head) as usize;
            if len != size {
                return Err(format!("got a message of {len} bytes, not {size}"));
            }
            reader
                .read_exact(&mut buf)
                .map_err(|e| format!("read: {e}"))?;
        }
        Ok(t0.elapsed())
    });
    Ok(Rig {
        children: vec![child],
        run: op,
    })
}

// ---------------------------------------------------------------------------
// ipc-channel, the Rust peer

/// What an ipc-channel child hands the parent: the sending end of the
/// child's inbox and the receiving end of its outbox. Both channels are
/// made in the child after the fork, so that the child holds no copy of
/// the parent's ends: dropping them ends the child's input.
type IpcEnds = (IpcBytesSender, IpcBytesReceiver);

/// Forks a child that makes its two channels, sends the parent its ends
/// through a one-shot server, and then runs `serve` on its own ends.
fn ipc_child(
    serve: impl FnOnce(IpcBytesReceiver, IpcBytesSender) + Send + 'static,
) -> Result<(Process<()>, IpcEnds), String> {
    let (server, name) =
        IpcOneShotServer::<IpcEnds>::new().map_err(|e| format!("ipc-channel server: {e}"))?;
    let child = fork(move || {
        let Ok((to_child, inbox)) = ipc::bytes_channel() else {
            return;
        };
        let Ok((outbox, from_child)) = ipc::bytes_channel() else {
            return;
        };
        let Ok(hello) = ipc::IpcSender::<IpcEnds>::connect(name) else {
            return;
        };
        if hello.send((to_child, from_child)).is_err() {
            return;
        }
        drop(hello);
        serve(inbox, outbox);
    })?;
    match server.accept() {
        Ok((_, ends)) => Ok((child, ends)),
        Err(e) => {
            let _ = child.kill();
            let _ = child.join();
            Err(format!("ipc-channel accept: {e:?}"))
        }
    }
}

/// The ipc-channel peer of `roundtrip_bytes`: 8 bytes each way over two
/// `IpcBytesSender`/`IpcBytesReceiver` channels.
fn ipc_echo_rig() -> Result<Rig<RoundTrip>, String> {
    let (child, (to_child, from_child)) = ipc_child(|inbox, outbox| {
        while let Ok(msg) = inbox.recv() {
            if outbox.send(&msg).is_err() {
                break;
            }
        }
    })?;
    let op: Box<RoundTrip> = Box::new(move || {
        to_child
            .send(&PING)
            .map_err(|e| format!("ipc-channel send: {e}"))?;
        let back = from_child
            .recv()
            .map_err(|e| format!("ipc-channel recv: {e:?}"))?;
        if back.len() != PING.len() {
            return Err(format!("an echo of {} bytes came back", back.len()));
        }
        Ok(())
    });
    Ok(Rig {
        children: vec![child],
        run: op,
    })
}

/// The ipc-channel peer of `oneway_bytes`: the child sends `count`
/// messages of `size` bytes per command, the parent receives them.
fn ipc_sender_rig(size: usize) -> Result<Rig, String> {
    let (child, (to_child, from_child)) = ipc_child(move |inbox, outbox| {
        let payload = vec![0xa5u8; size];
        while let Some(count) = inbox.recv().ok().as_deref().and_then(command) {
            for _ in 0..count {
                if outbox.send(&payload).is_err() {
                    return;
                }
            }
        }
    })?;
    let op: Box<rig::Run> = Box::new(move |count| {
        let t0 = Instant::now();
        to_child
            .send(&count.to_le_bytes())
            .map_err(|e| format!("ipc-channel send: {e}"))?;
        let mut last = 0;
        for _ in 0..count {
            last = from_child
                .recv()
                .map_err(|e| format!("ipc-channel recv: {e:?}"))?
                .len();
        }
        let took = t0.elapsed();
        if last != size {
            return Err(format!("got a message of {last} bytes, not {size}"));
        }
        Ok(took)
    });
    Ok(Rig {
        children: vec![child],
        run: op,
    })
}

// ---------------------------------------------------------------------------
// The shared-memory spin floor

/// Where the parent's ping sequence number lives (in `u64` words).
const SPIN_PING: usize = 0;

/// Where the child's echo of it lives: another cache line.
const SPIN_PONG: usize = 8;

/// The ping that tells the spinning child to return.
const SPIN_STOP: u64 = u64::MAX;

/// Where the child says it is parked (1) on its wake-up pipe: another
/// cache line again.
const SPIN_PARKED: usize = 16;

/// How long an idle spin child spins before it parks: it blocks on its
/// wake-up pipe until the parent's next ping, so that while the other rigs
/// take their turns it neither holds a core nor wakes up on one (a child
/// that slept 50 µs between polls woke 20,000 times a second and
/// preempted the rig being timed). A round trip in a batch never gets near
/// it. It was 2^20 polls, some 25 ms, in which the child held one of the
/// two cores into the next rig's batch.
const SPIN_IDLE: Duration = Duration::from_micros(20);

/// Polls between two readings of the clock by an idle spin child.
const SPIN_CLOCK_EVERY: u32 = 256;

/// How long the parent spins for an echo before it takes the child for
/// dead.
const SPIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The two words of the spin floor (a 4 KiB mapping: `as_atomic_u64`
/// gives it as atomics, with no unsafe code here).
fn spin_words(shm: &SharedMemory) -> Result<SpinWords<'_>, String> {
    let words = shm.as_atomic_u64();
    match (
        words.get(SPIN_PING),
        words.get(SPIN_PONG),
        words.get(SPIN_PARKED),
    ) {
        (Some(ping), Some(pong), Some(parked)) => Ok((ping, pong, parked)),
        _ => Err("the shared memory is too small".to_string()),
    }
}

/// The spin floor's ping, pong and parked words.
type SpinWords<'a> = (&'a AtomicU64, &'a AtomicU64, &'a AtomicU64);

/// Child of the spin floor: echoes every new ping number into the pong
/// word, spinning on the ping word; returns at [`SPIN_STOP`] (or when its
/// wake-up pipe closes). Idle for [`SPIN_IDLE`], it parks: it says
/// so in the parked word, looks at the ping word once more (a ping the
/// parent stored before it read the parked word is seen here: both are
/// `SeqCst`), and blocks on the wake-up pipe, which the parent writes
/// once it sees the child parked.
fn spin_echo((shm, wake): (SharedMemory, Connection<(), ()>)) {
    let Ok((ping, pong, parked)) = spin_words(&shm) else {
        return;
    };
    let mut last = 0;
    let mut polls = 0u32;
    let mut idle_since = Instant::now();
    loop {
        let seen = ping.load(Ordering::SeqCst);
        if seen == SPIN_STOP {
            return;
        }
        if seen != last {
            last = seen;
            pong.store(seen, Ordering::Release);
            polls = 0;
        } else if polls == 0 {
            // The first idle poll: the idle time starts.
            polls = 1;
            idle_since = Instant::now();
        } else if !polls.is_multiple_of(SPIN_CLOCK_EVERY) || idle_since.elapsed() < SPIN_IDLE {
            polls = polls.wrapping_add(1).max(1);
            std::hint::spin_loop();
        } else {
            parked.store(1, Ordering::SeqCst);
            if ping.load(Ordering::SeqCst) == last && wake.recv().is_err() {
                return;
            }
            parked.store(0, Ordering::SeqCst);
            polls = 0;
        }
    }
}

/// Tells the spin child to return when dropped (the end of its input).
struct StopSpin(SharedMemory, Connection<(), ()>);

impl Drop for StopSpin {
    fn drop(&mut self) {
        if let Ok((ping, _, _)) = spin_words(&self.0) {
            ping.store(SPIN_STOP, Ordering::SeqCst);
        }
        let _ = self.1.send(&());
    }
}

/// The shared-memory spin floor of `roundtrip_bytes`: the parent writes a
/// new number into one word, the child spins until it sees it and
/// writes it into another, where the parent spins for it. No system
/// call, no copy: what a round trip costs when both sides have a core and
/// spin, the least any library could reach (the message is the number).
fn spin_echo_rig() -> Result<Rig<RoundTrip>, String> {
    let shm = SharedMemory::create(4096).map_err(|e| format!("shared memory: {e}"))?;
    let (wake, theirs) = command_pipe::<(), ()>()?;
    let child = start(METHOD, spin_echo, (shm.clone(), theirs))?;
    let stop = StopSpin(shm, wake);
    let mut seq = 0u64;
    let op: Box<RoundTrip> = Box::new(move || {
        let (ping, pong, parked) = spin_words(&stop.0)?;
        seq += 1;
        ping.store(seq, Ordering::SeqCst);
        // A parked child is woken once (a stray wake-up, when it saw the
        // ping before blocking, only makes it look again later).
        if parked.swap(0, Ordering::SeqCst) == 1 {
            stop.1
                .send(&())
                .map_err(|e| format!("waking the spin child failed: {e}"))?;
        }
        let mut polls = 0u32;
        let mut since: Option<Instant> = None;
        while pong.load(Ordering::Acquire) != seq {
            polls = polls.wrapping_add(1);
            if polls.is_multiple_of(1 << 16) {
                let t0 = *since.get_or_insert_with(Instant::now);
                if t0.elapsed() > SPIN_TIMEOUT {
                    return Err("no echo from the spin child".to_string());
                }
                std::thread::yield_now();
            }
            std::hint::spin_loop();
        }
        Ok(())
    });
    Ok(Rig {
        children: vec![child],
        run: op,
    })
}
