//! Group `pickle`: multiproc's [`PickleConnection`] against CPython, with
//! CPython as the client in both cases.
//!
//! * `pickle_roundtrip` (`dict_small`, µs): a CPython
//!   `multiprocessing.connection.Client` sends a small dict (3 keys, one a
//!   list of 8 floats) with `conn.send` and receives it back with
//!   `conn.recv`. multiproc's row is an echo server in this process (a
//!   [`Listener`] whose connections echo every value with
//!   `recv_value`/`send_value`: every pickle checked, decoded and encoded
//!   again); Python's row is the same server written with Python's
//!   `Listener`, `recv` and `send`. The client alternates between the two
//!   servers batch after batch (`python/pickle_bench.py`), so a change in
//!   the machine's load hits both alike. Per-batch mean round trips. A
//!   `raw` row is a third server, here, that echoes the bytes without
//!   looking at them: the floor any server meets, since the Python client
//!   pickles, unpickles and makes its system calls in every row.
//! * `pickle_decode` (`list_1k_floats`, MB/s of pickle): decoding the
//!   protocol 4 pickle CPython makes of a list of 1000 floats, into a
//!   `Vec<f64>` here (after the opcode check) and with `pickle.loads`
//!   there. The script writes the bytes first; half of multiproc's runs
//!   come before the script's and half after.

use std::path::PathBuf;
use std::time::Instant;

use multiproc::pickle::from_pickle;
use multiproc::{Address, Connection, Listener, PickleConnection};

use super::Options;
use crate::report::{self, Impl, Measurement, Row};
use crate::rig::Plan;

/// The group's name on the command line and in the output.
pub const NAME: &str = "pickle";

/// The auth key of both echo servers.
const KEY: &str = "pickle-bench";

/// Echoes every value on `conn` until the client leaves.
fn echo(conn: Connection) {
    let conn: PickleConnection<(), ()> = conn.into_pickle();
    while let Ok(value) = conn.recv_value() {
        if conn.send_value(&value).is_err() {
            return;
        }
    }
}

/// Echoes every message on `conn` as bytes, unread: the floor.
fn echo_bytes(conn: Connection) {
    while let Ok(bytes) = conn.recv_bytes() {
        if conn.send_bytes(&bytes).is_err() {
            return;
        }
    }
}

/// Serves `listener` on a thread of its own, `serve` on each connection.
/// The thread outlives the group, blocked in `accept` on a socket whose
/// file is gone: harmless, and the process exits soon.
fn serve(listener: Listener, serve: fn(Connection)) {
    std::thread::spawn(move || {
        loop {
            if let Ok(conn) = listener.accept::<(), ()>() {
                std::thread::spawn(move || serve(conn));
            }
        }
    });
}

/// `reps` decode rates (MB/s) of `bytes` into a `Vec<f64>`, each run
/// lasting about `plan.target`.
fn decode_rates(bytes: &[u8], plan: &Plan, reps: usize) -> Result<Vec<f64>, String> {
    let once = || from_pickle::<Vec<f64>>(bytes).map_err(|e| e.to_string());
    if once()?.len() != 1000 {
        return Err("the pickle is not a list of 1000 floats".into());
    }
    let mut n = 1u64;
    loop {
        let t0 = Instant::now();
        for _ in 0..n {
            once()?;
        }
        if t0.elapsed() * 4 > plan.target {
            break;
        }
        n *= 2;
    }
    (0..reps)
        .map(|_| {
            let t0 = Instant::now();
            for _ in 0..n {
                std::hint::black_box(once()?);
            }
            Ok(bytes.len() as f64 * n as f64 / t0.elapsed().as_secs_f64() / 1e6)
        })
        .collect()
}

/// Runs the group.
pub fn run(opts: &Options) -> Vec<Row> {
    let plan = Plan::new(opts.quick);
    let dir = std::env::temp_dir().join(format!("multiproc-bench-pickle-{}", std::process::id()));
    let rows = match std::fs::create_dir_all(&dir) {
        Ok(()) => measure(opts, &plan, &dir),
        Err(e) => report::pair(
            NAME,
            Vec::new(),
            Vec::new(),
            Some(&format!("temp dir: {e}")),
        ),
    };
    let _ = std::fs::remove_dir_all(&dir);
    rows
}

fn measure(opts: &Options, plan: &Plan, dir: &std::path::Path) -> Vec<Row> {
    let rust_sock: PathBuf = dir.join("rust.sock");
    let pickle_out = dir.join("list_1k_floats.pickle");
    let mut args = plan.python_args(multiproc::StartMethod::Fork);
    for (option, value) in [
        ("--rust-address", rust_sock.display().to_string()),
        (
            "--python-address",
            dir.join("python.sock").display().to_string(),
        ),
        (
            "--floor-address",
            dir.join("floor.sock").display().to_string(),
        ),
        ("--key", KEY.to_string()),
        ("--pickle-out", pickle_out.display().to_string()),
    ] {
        args.extend([option.to_string(), value]);
    }
    if opts.quick {
        args.extend(["--batches".into(), "10".into()]);
    }

    opts.progress(NAME, "python (pickle_bench.py --prepare-only)");
    let mut prepare = args.clone();
    prepare.push("--prepare-only".into());
    let prepared = opts
        .python
        .run("pickle_bench.py", &prepare, plan.python_timeout);
    let bytes = match (prepared.failure, std::fs::read(&pickle_out)) {
        (None, Ok(bytes)) => bytes,
        (failure, read) => {
            let why = failure.unwrap_or_else(|| format!("{:?}", read.err()));
            return report::pair(NAME, Vec::new(), Vec::new(), Some(&why));
        }
    };
    let first = plan.reps.div_ceil(2);
    opts.progress(NAME, "pickle_decode: multiproc (first half)");
    let mut decode = decode_rates(&bytes, plan, first);

    let bind = |path: PathBuf| Listener::bind(&Address::Unix(path), Some(KEY.as_bytes()));
    match (bind(rust_sock), bind(dir.join("floor.sock"))) {
        (Ok(rust), Ok(floor)) => {
            serve(rust, echo);
            serve(floor, echo_bytes);
        }
        (Err(e), _) | (_, Err(e)) => {
            return report::pair(NAME, Vec::new(), Vec::new(), Some(&e.to_string()));
        }
    }

    opts.progress(
        NAME,
        "python (pickle_bench.py): round trips to both servers, interleaved",
    );
    let python = opts
        .python
        .run("pickle_bench.py", &args, plan.python_timeout);

    opts.progress(NAME, "pickle_decode: multiproc (second half)");
    if let (Ok(samples), Ok(more)) = (&mut decode, decode_rates(&bytes, plan, plan.reps - first)) {
        samples.extend(more);
    }

    // The script measured multiproc's server too: its rows move over.
    let (floor, measured): (Vec<Measurement>, Vec<Measurement>) = python
        .measurements
        .into_iter()
        .partition(|m| m.bench == "pickle_roundtrip_floor");
    let (ours, theirs): (Vec<Measurement>, Vec<Measurement>) = measured
        .into_iter()
        .partition(|m| m.bench == "pickle_roundtrip_rust");
    let mut multiproc: Vec<Measurement> = ours
        .into_iter()
        .map(|m| Measurement::new("pickle_roundtrip", &m.param, &m.unit, m.outcome))
        .collect();
    if multiproc.is_empty() {
        multiproc.push(Measurement::new(
            "pickle_roundtrip",
            "dict_small",
            "us",
            Err(python
                .failure
                .clone()
                .unwrap_or_else(|| "the script measured nothing".into())),
        ));
    }
    multiproc.push(Measurement::new(
        "pickle_decode",
        "list_1k_floats",
        "MB/s",
        decode,
    ));
    let mut rows = report::pair(NAME, multiproc, theirs, python.failure.as_deref());
    for m in floor {
        let m = Measurement::new("pickle_roundtrip", &m.param, &m.unit, m.outcome);
        let at = rows
            .iter()
            .rposition(|r| r.bench == m.bench && r.param == m.param)
            .map_or(rows.len(), |i| i + 1);
        rows.insert(at, Row::from_measurement(NAME, Impl::Raw, m));
    }
    rows
}
