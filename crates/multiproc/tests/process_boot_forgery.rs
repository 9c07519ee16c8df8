//! A program that links multiproc, started by someone else with a forged
//! `MULTIPROC_BOOT` and a socket on descriptor 3 (issue 14, defect 5), must
//! refuse to boot: a clear message, exit code 87, and neither `main` nor any
//! function named by the forged bytes runs. This test binary is such a
//! program; it starts itself the way an attacker would.
//! (The unit tests of `sys/boot.rs` forge a *genuine* request, and show the
//! same bytes do run when the real parent sends them.)

mod common;

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{LIMIT, deadline};

/// The exit code of a refused boot.
const REFUSED: i32 = 87;

/// A preamble as the reviewer forged it: the start magic, version 1, and
/// three offsets from the library's anchor function.
fn forged_preamble() -> Vec<u8> {
    let mut p = b"MPST\x01\0\0\0".to_vec();
    for offset in [-4096i64, 128, 256] {
        p.extend_from_slice(&offset.to_le_bytes());
    }
    p
}

/// Runs this test binary with `role` and `fd3` at descriptor 3, filtered to
/// one test that records that `main` ran; returns (exit code, stdout,
/// stderr).
fn run_forged(role: &str, fd3: Option<&UnixStream>) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "main_ran_marker", "--nocapture"])
        .env("MULTIPROC_BOOT", role)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let raw = fd3.map(|s| s.as_raw_fd());
    // SAFETY: runs in the forked child before exec; dup2 and close are
    // async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            match raw {
                Some(fd) => {
                    if libc::dup2(fd, 3) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                None => {
                    libc::close(3);
                }
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let end = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("a forged boot hung");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let (mut out, mut err) = (String::new(), String::new());
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status.code(), out, err)
}

fn assert_refused((code, out, err): (Option<i32>, String, String)) {
    assert_eq!(code, Some(REFUSED), "stdout: {out}\nstderr: {err}");
    assert!(err.contains("multiproc: refusing to boot: "), "{err}");
    assert!(!out.contains("MAIN RAN"), "main ran: {out}");
    assert!(!out.contains("running"), "the harness ran: {out}");
}

/// What the forged child would print if it reached `main` and ran this.
#[test]
fn main_ran_marker() {
    println!("MAIN RAN");
}

fn double(x: u32) -> u32 {
    2 * x
}

/// A genuine start still boots, in this same binary (and the binary links
/// the start code, hence the boot hook, as any user of `spawn` does).
#[test]
fn a_genuine_spawn_still_boots() {
    deadline(LIMIT, || {
        for m in [
            multiproc::StartMethod::Spawn,
            multiproc::StartMethod::ForkServer,
        ] {
            let p = multiproc::Process::builder()
                .start_method(m)
                .spawn(double, 21)
                .unwrap();
            assert_eq!(p.join().unwrap(), 42, "{m}");
        }
    });
}

#[test]
fn the_reviewers_forged_environment_is_refused() {
    deadline(LIMIT, || {
        let me = std::process::id();
        // Exactly the shown attack: the old role format, a socket on fd 3
        // with a forged preamble waiting.
        let (mut ours, theirs) = UnixStream::pair().unwrap();
        ours.write_all(&forged_preamble()).unwrap();
        assert_refused(run_forged(&format!("child:{me}"), Some(&theirs)));
        assert_refused(run_forged(&format!("forkserver:{me}"), Some(&theirs)));
    });
}

#[test]
fn a_well_formed_forged_role_is_refused() {
    deadline(LIMIT, || {
        let me = std::process::id();
        let secret = "00".repeat(32);
        for kind in ["child", "forkserver"] {
            // The secret the role names, then the preamble, all queued.
            let (mut ours, theirs) = UnixStream::pair().unwrap();
            ours.write_all(&[0u8; 32]).unwrap();
            ours.write_all(&forged_preamble()).unwrap();
            let (code, out, err) = run_forged(&format!("{kind}:{me}:{secret}"), Some(&theirs));
            assert!(err.contains("were waiting"), "{err}");
            assert_refused((code, out, err));
            // No socket at all.
            assert_refused(run_forged(&format!("{kind}:{me}:{secret}"), None));
            // A parent that is not ours.
            assert_refused(run_forged(&format!("{kind}:1:{secret}"), Some(&theirs)));
        }
    });
}

fn count_open(ends: Vec<multiproc::Connection<u8, u8>>) -> usize {
    ends.iter().filter(|c| c.send(&1).is_ok()).count()
}

/// The boot channel asks the kernel for writer credentials while the child
/// authenticates its parent; the argument that follows may still carry as
/// many handles as any message (64), under every start method.
#[test]
fn an_argument_with_the_most_handles_still_arrives() {
    deadline(LIMIT, || {
        for m in multiproc::StartMethod::ALL {
            // A pipe end is three descriptors: 21 ends are 63.
            let (ours, theirs): (Vec<_>, Vec<_>) = (0..21)
                .map(|_| multiproc::pipe::<u8, u8>().unwrap())
                .unzip();
            let p = multiproc::Process::builder()
                .start_method(m)
                .spawn(count_open, theirs)
                .unwrap();
            assert_eq!(p.join().unwrap(), 21, "{m}");
            for o in &ours {
                assert_eq!(o.recv().unwrap(), 1, "{m}");
            }
        }
    });
}
