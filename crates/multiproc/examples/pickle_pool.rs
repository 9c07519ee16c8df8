//! Python and Rust processes in one job, through the standard library's
//! `multiprocessing.connection` on the Python side (no package to install).
//!
//! * `serve`: a Rust `Listener` takes work items that Python programs send
//!   as dicts (`conn.send({"id": 1, "op": "sum", "numbers": [...]})`),
//!   runs each on a multiproc `Pool`, and sends the result back as a dict.
//!   `examples/python/pickle_jobs.py client` is such a program.
//! * `call`: the other way round, a Rust client sends the same dicts to a
//!   Python `Listener` (`examples/python/pickle_jobs.py server`) and
//!   prints its answers.
//!
//! ```sh
//! cargo run --example pickle_pool -- serve /tmp/jobs.sock secret &
//! python3 crates/multiproc/examples/python/pickle_jobs.py client /tmp/jobs.sock secret
//!
//! python3 crates/multiproc/examples/python/pickle_jobs.py server /tmp/py.sock secret &
//! cargo run --example pickle_pool -- call /tmp/py.sock secret
//! ```

use multiproc::{Address, Client, Connection, Listener, PickleConnection, Pool, RecvError};
use serde::{Deserialize, Serialize};

/// A work item, as the Python side writes it: `{"id": 1, "op": "sum",
/// "numbers": [1.0, 2.5]}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Job {
    id: u64,
    op: String,
    numbers: Vec<f64>,
}

/// The answer: `{"id": 1, "value": 3.5, "worker": 1234}`, or with
/// `"error"` set (and `value` None) for an operation nobody knows.
#[derive(Debug, Serialize, Deserialize)]
struct Answer {
    id: u64,
    value: Option<f64>,
    error: Option<String>,
    worker: u32,
}

/// Runs on a pool worker.
fn run(job: Job) -> Answer {
    let value = match job.op.as_str() {
        "sum" => Some(job.numbers.iter().sum()),
        "max" => job.numbers.iter().copied().reduce(f64::max),
        "mean" if !job.numbers.is_empty() => {
            Some(job.numbers.iter().sum::<f64>() / job.numbers.len() as f64)
        }
        _ => None,
    };
    Answer {
        id: job.id,
        error: value
            .is_none()
            .then(|| format!("cannot {} these numbers", job.op)),
        value,
        worker: std::process::id(),
    }
}

fn serve(address: Address, key: &[u8]) -> Result<(), Box<dyn std::error::Error>> {
    let pool = std::sync::Arc::new(Pool::builder().workers(2).build()?);
    let listener = Listener::bind(&address, Some(key))?;
    println!("listening on {}", listener.address());
    loop {
        let conn: Connection = match listener.accept() {
            Ok(conn) => conn,
            Err(e) => {
                eprintln!("refused a client: {e}");
                continue;
            }
        };
        let pool = pool.clone();
        std::thread::spawn(move || {
            let conn: PickleConnection<Answer, Job> = conn.into_pickle();
            loop {
                let job = match conn.recv() {
                    Ok(job) => job,
                    Err(RecvError::Disconnected) => return,
                    Err(e) => {
                        eprintln!("a client sent what is not a job: {e}");
                        return;
                    }
                };
                let id = job.id;
                let answer = pool.apply(run, job).unwrap_or_else(|e| Answer {
                    id,
                    value: None,
                    error: Some(e.to_string()),
                    worker: 0,
                });
                if conn.send(&answer).is_err() {
                    return;
                }
            }
        });
    }
}

fn call(address: Address, key: &[u8]) -> Result<(), Box<dyn std::error::Error>> {
    let conn: Connection = Client::connect(&address, Some(key))?;
    let conn: PickleConnection<Job, Answer> = conn.into_pickle();
    for (id, op) in [(1, "sum"), (2, "max"), (3, "median")] {
        conn.send(&Job {
            id,
            op: op.into(),
            numbers: vec![1.5, 4.0, 2.5],
        })?;
        let answer = conn.recv()?;
        match (answer.value, answer.error) {
            (Some(v), _) => println!(
                "job {}: {op} = {v} (python pid {})",
                answer.id, answer.worker
            ),
            (None, e) => println!("job {}: {op} failed: {}", answer.id, e.unwrap_or_default()),
        }
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [mode, address, key] = args.as_slice() else {
        eprintln!("usage: pickle_pool serve|call ADDRESS AUTHKEY");
        std::process::exit(2)
    };
    let address: Address = address.parse()?;
    match mode.as_str() {
        "serve" => serve(address, key.as_bytes()),
        "call" => call(address, key.as_bytes()),
        _ => {
            eprintln!("usage: pickle_pool serve|call ADDRESS AUTHKEY");
            std::process::exit(2)
        }
    }
}
