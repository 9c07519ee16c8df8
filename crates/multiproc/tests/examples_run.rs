//! Every example runs to a clean exit. `cargo test` builds the examples
//! before it runs any test; this runs their binaries, each under a deadline.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn example(name: &str) -> PathBuf {
    // target/<profile>/deps/examples_run-HASH -> target/<profile>/examples/NAME
    let exe = std::env::current_exe().unwrap();
    exe.parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join(name)
}

fn run(name: &str, args: &[&str], limit: Duration) -> String {
    let path = example(name);
    assert!(
        path.exists(),
        "example binary {} was not built",
        path.display()
    );
    let mut child = Command::new(&path)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(
                status.success(),
                "example {name} failed with {status}\n{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            return stdout;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("example {name} exceeded its deadline of {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_tour_runs() {
    let out = run("tour", &["200000"], Duration::from_secs(120));
    assert!(out.contains("1. Processes on every core"), "{out}");
    assert!(out.contains("this process carries on"), "{out}");
}

#[test]
fn the_process_example_runs() {
    let out = run("process", &[], Duration::from_secs(60));
    assert!(out.contains("square(12) = 144"), "{out}");
    assert!(out.contains("a killed child reports SIGKILL"), "{out}");
}
