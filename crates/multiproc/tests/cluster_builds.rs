//! Another build of the program as an agent: the `cluster` example binary
//! registers "demo.work" with the same types as this test binary does, but
//! it is another executable (another build id).
#![cfg(feature = "cluster")]

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{LIMIT, deadline, redis_server};
use multiproc::TaskError;
use multiproc::cluster::{BuildCheck, Cluster};

#[multiproc::task(name = "demo.work")]
fn work(x: u64) -> (u64, u64) {
    (x * x, 0)
}

#[multiproc::task(name = "demo.unknown_to_the_example")]
fn unknown(x: u64) -> u64 {
    x
}

fn example_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join("cluster");
    assert!(
        path.exists(),
        "{} was not built: run `cargo test --features cluster` without a --test filter",
        path.display()
    );
    path
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn another_build_is_refused_unless_only_signatures_are_checked() {
    deadline(LIMIT, || {
        let Some(server) = redis_server() else { return };
        let cluster = Cluster::connect(&server.url())
            .unwrap()
            .namespace("demo")
            .unwrap();
        let _agent = Killed(
            Command::new(example_binary())
                .env("MULTIPROC_CLUSTER", server.url())
                .env("MULTIPROC_CLUSTER_NS", "demo")
                .env("MULTIPROC_CLUSTER_SLOTS", "1")
                .stdout(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let end = Instant::now() + Duration::from_secs(20);
        while cluster.agents().unwrap().is_empty() {
            assert!(Instant::now() < end, "the example agent did not register");
            std::thread::sleep(Duration::from_millis(10));
        }
        let exact = cluster.pool().build().unwrap();
        let e = exact.map(work, [3u64]).unwrap_err();
        assert!(matches!(e, TaskError::BuildMismatch { .. }), "{e:?}");
        let relaxed = cluster
            .pool()
            .build_check(BuildCheck::SignatureOnly)
            .build()
            .unwrap();
        // The example's own function ran: it reports one delivery.
        assert_eq!(relaxed.map(work, [3u64]).unwrap(), [(9, 1)]);
        let e = relaxed.map(unknown, [1u64]).unwrap_err();
        assert!(matches!(e, TaskError::NotRegistered(_)), "{e:?}");
    });
}
