//! A panic's message reaches the parent even in a program built with
//! `panic = "abort"` (where the panicking process dies by SIGABRT before
//! any unwinding could carry the message back):
//!
//! ```sh
//! cargo run --profile panic-abort --example abort_report
//! ```
//!
//! The test `panic_abort` builds and runs it so.

use multiproc::{JoinError, Pool, Process, StartMethod, TaskError};

fn boom(x: u32) -> u32 {
    assert!(x != 3, "three is not allowed");
    x
}

/// The same with a report larger than a reply frame sent inline (2 KiB):
/// it travels in a memfd from a process, on the link from a pool worker.
fn boom_long(x: u32) -> u32 {
    assert!(x != 3, "{}", "L".repeat(3000));
    x
}

fn main() {
    println!(
        "panic strategy: {}",
        if cfg!(panic = "abort") {
            "abort"
        } else {
            "unwind"
        }
    );
    for method in [
        StartMethod::Fork,
        StartMethod::ForkServer,
        StartMethod::Spawn,
    ] {
        let child = Process::builder()
            .start_method(method)
            .spawn(boom, 3)
            .unwrap();
        match child.join() {
            Err(JoinError::Panicked(report)) => println!("{method}: panicked: {}", report.message),
            other => println!("{method}: {other:?}"),
        }
        let child = Process::builder()
            .start_method(method)
            .spawn(boom_long, 3)
            .unwrap();
        match child.join() {
            Err(JoinError::Panicked(report)) => {
                println!("{method} long: panicked: {} bytes", report.message.len())
            }
            other => println!("{method} long: {other:?}"),
        }
    }
    let pool = Pool::new(2).unwrap();
    let out = pool.task(boom).chunksize(1).map_results(1..=5);
    match &out[2] {
        Err(TaskError::Panicked(report)) => println!("pool: panicked: {}", report.message),
        other => println!("pool: {other:?}"),
    }
    let long = pool.task(boom_long).chunksize(1).map_results(1..=5);
    match &long[2] {
        Err(TaskError::Panicked(report)) => {
            println!("pool long: panicked: {} bytes", report.message.len())
        }
        other => println!("pool long: {other:?}"),
    }
    let fine = out.iter().filter(|r| r.is_ok()).count();
    println!(
        "pool: {fine} of 5 fine, and it still works: {:?}",
        pool.map(boom, [7]).unwrap()
    );
}
