//! Under `panic = "abort"`, a child's or a pool task's panic still comes
//! back as `Panicked` with its message (issue 17): builds the example
//! `abort_report` with the workspace's `panic-abort` profile (the dev
//! profile with `panic = "abort"`, dependencies unoptimised so that they
//! build quickly), in a target directory of its own, and runs it.

use std::process::Command;
use std::time::Duration;

mod common;

#[test]
fn a_panic_under_abort_is_reported_with_its_message() {
    common::deadline(Duration::from_secs(600), || {
        let manifest = env!("CARGO_MANIFEST_DIR");
        let exe = std::env::current_exe().unwrap();
        // target/<profile>/deps/panic_abort-HASH -> target/panic-abort
        let target = exe
            .parent()
            .unwrap()
            .parent()
            .unwrap()
            .parent()
            .unwrap()
            .join("panic-abort");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args([
                "build",
                "--quiet",
                "--offline",
                "--profile",
                "panic-abort",
                "--example",
                "abort_report",
                "--manifest-path",
            ])
            .arg(format!("{manifest}/Cargo.toml"))
            .arg("--target-dir")
            .arg(&target)
            .status()
            .unwrap();
        assert!(
            status.success(),
            "building the example with panic = abort failed"
        );
        // With a backtrace, every report is larger than a reply frame sent
        // inline (2 KiB): it must arrive all the same.
        for backtrace in ["0", "1"] {
            check_abort_report(&target, backtrace);
        }
    });
}

/// Runs the example with `RUST_BACKTRACE=backtrace` and checks every
/// report it prints.
fn check_abort_report(target: &std::path::Path, backtrace: &str) {
    let out = Command::new(target.join("panic-abort/examples/abort_report"))
        .env("RUST_BACKTRACE", backtrace)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("panic strategy: abort"), "{stdout}");
    for method in ["fork", "forkserver", "spawn"] {
        assert!(
            stdout.contains(&format!("{method}: panicked: three is not allowed")),
            "RUST_BACKTRACE={backtrace}: {stdout}"
        );
        assert!(
            stdout.contains(&format!("{method} long: panicked: 3000 bytes")),
            "RUST_BACKTRACE={backtrace}: {stdout}"
        );
    }
    assert!(
        stdout.contains("pool: panicked: three is not allowed"),
        "RUST_BACKTRACE={backtrace}: {stdout}"
    );
    assert!(
        stdout.contains("pool long: panicked: 3000 bytes"),
        "RUST_BACKTRACE={backtrace}: {stdout}"
    );
    assert!(
        stdout.contains("pool: 4 of 5 fine, and it still works: [7]"),
        "{stdout}"
    );
}
