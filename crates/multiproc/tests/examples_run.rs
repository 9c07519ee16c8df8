//! Every example runs to a clean exit. `cargo test` builds the examples
//! before it runs any test; this runs their binaries, each under a deadline.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn example(name: &str) -> PathBuf {
    // target/<profile>/deps/examples_run-HASH -> target/<profile>/examples/NAME
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join(name);
    assert!(
        path.exists(),
        "example binary {} was not built: run `cargo test` without a `--test` filter, which builds the examples",
        path.display()
    );
    path
}

fn run(name: &str, args: &[&str], limit: Duration) -> String {
    run_both(name, args, limit).0
}

/// Runs an example to its end; its stdout and stderr.
fn run_both(name: &str, args: &[&str], limit: Duration) -> (String, String) {
    let path = example(name);
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
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            assert!(
                status.success(),
                "example {name} failed with {status}\n{stdout}\n{stderr}"
            );
            return (stdout, stderr);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("example {name} exceeded its deadline of {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs an example as in a terminal (stdin, stdout and stderr on a new
/// pseudo-terminal of 80 columns) to its end; everything it wrote there,
/// with the terminal's `\r`s taken out.
fn run_on_terminal(name: &str, limit: Duration) -> String {
    use std::io::Read;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::fs::OpenOptionsExt;

    // SAFETY: posix_openpt takes flags and returns a new descriptor or -1.
    let master = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
    assert!(
        master >= 0,
        "no pseudo-terminal: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: `master` is a new descriptor that nothing else owns.
    let master = unsafe { OwnedFd::from_raw_fd(master) };
    let mut path = [0 as libc::c_char; 128];
    // SAFETY: grantpt and unlockpt take a descriptor; ptsname_r writes at
    // most `path.len()` bytes, NUL included, into `path`.
    unsafe {
        assert_eq!(libc::grantpt(master.as_raw_fd()), 0);
        assert_eq!(libc::unlockpt(master.as_raw_fd()), 0);
        assert_eq!(
            libc::ptsname_r(master.as_raw_fd(), path.as_mut_ptr(), path.len()),
            0
        );
    }
    // SAFETY: ptsname_r succeeded: `path` holds a NUL-terminated name.
    let path = unsafe { std::ffi::CStr::from_ptr(path.as_ptr()) }
        .to_str()
        .unwrap()
        .to_owned();
    let terminal = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(&path)
        .unwrap();
    let size = libc::winsize {
        ws_row: 24,
        ws_col: 80,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one `winsize` through the pointer, which
    // points to `size` for the whole call.
    let set = unsafe { libc::ioctl(terminal.as_raw_fd(), libc::TIOCSWINSZ, &size) };
    assert_eq!(set, 0, "{}", std::io::Error::last_os_error());
    let mut child = Command::new(example(name))
        .env("TERM", "xterm")
        .stdin(Stdio::from(terminal.try_clone().unwrap()))
        .stdout(Stdio::from(terminal.try_clone().unwrap()))
        .stderr(Stdio::from(terminal))
        .spawn()
        .unwrap();
    // The terminal's other end: read until every process that had this
    // one has closed it (EIO), or the terminal's buffer would fill up.
    let reader = std::thread::spawn(move || {
        let mut master = std::fs::File::from(master);
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = master.read(&mut buf) {
            out.extend_from_slice(&buf[..n]);
        }
        out
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("example {name} exceeded its deadline of {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = String::from_utf8_lossy(&reader.join().unwrap()).replace('\r', "");
    assert!(
        status.success(),
        "example {name} failed with {status}\n{out}"
    );
    out
}

/// Starts `command` (a server) with its output piped, and waits for the
/// `listening on ...` line it prints once it accepts connections.
fn listening(command: &mut Command) -> std::process::Child {
    use std::io::{BufRead, BufReader};
    let mut server = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the server starts");
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("listening on"), "{line}");
    server
}

#[test]
fn the_tour_runs() {
    let out = run("tour", &["200000"], Duration::from_secs(120));
    assert!(out.contains("1. Processes on every core"), "{out}");
    assert!(out.contains("this process carries on"), "{out}");
    assert!(out.contains("each exactly once"), "{out}");
    assert!(out.contains("3 processes wrote into one dict"), "{out}");
    assert!(out.contains("killed by SIGABRT"), "{out}");
    assert!(out.contains("the other 39 blocks finished"), "{out}");
    assert!(out.contains("workers replaced: 1"), "{out}");
}

#[test]
fn the_process_example_runs() {
    let (out, err) = run_both("process", &[], Duration::from_secs(60));
    assert!(out.contains("square(12) = 144"), "{out}");
    // A child prints its panic, as any Rust thread (and Python's Process)
    // does, besides `join` returning it.
    assert!(out.contains("panic came back as a value"), "{out}");
    assert!(err.contains("this child gives up"), "{err}");
    assert!(out.contains("a killed child reports SIGKILL"), "{out}");
}

#[test]
fn the_pipe_example_runs() {
    let out = run("pipe", &[], Duration::from_secs(60));
    assert!(out.contains("20 + 22 = Sum(42)"), "{out}");
    assert!(out.contains("the child served 2 requests"), "{out}");
}

#[test]
fn the_echo_server_echoes_until_killed() {
    let path = common::temp_path("echo.sock");
    let socket = path.clone();
    let mut server = listening(Command::new(example("echo_server")).args([
        "--address",
        path.to_str().unwrap(),
        "--authkey",
        "k",
    ]));
    // The server is not our child process: kill it even if the test fails.
    let result = std::panic::catch_unwind(move || {
        common::deadline(common::LIMIT, move || {
            let addr = multiproc::Address::Unix(path);
            let conn: multiproc::Connection<(), ()> =
                multiproc::Client::connect(&addr, Some(b"k")).unwrap();
            for msg in [&b"one"[..], b"", &[9u8; 100_000][..]] {
                conn.send_bytes(msg).unwrap();
                assert_eq!(conn.recv_bytes().unwrap(), msg);
            }
            let wrong = multiproc::Client::connect::<(), ()>(&addr, Some(b"nope"));
            assert!(wrong.is_err());
        })
    });
    server.kill().unwrap();
    let status = server.wait().unwrap();
    // A killed server cannot remove its socket's file: the test does.
    let removed = std::fs::remove_file(&socket);
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
    removed.unwrap();
}

#[test]
fn the_pickle_echo_server_echoes_python_objects_and_hangs_up_on_code() {
    let path = common::temp_path("pickle.sock");
    let mut server = listening(Command::new(example("pickle_echo")).args([
        "--address",
        path.to_str().unwrap(),
        "--authkey",
        "k",
    ]));
    let marker = common::temp_path("pickle.pwned");
    // Python, standard library only: one client sends objects and checks
    // them; a second sends a pickle that would run `touch`, and must find
    // its connection closed, while the first goes on.
    let script = format!(
        r#"
import os, pickle
from multiprocessing.connection import Client
a = Client({path:?}, authkey=b"k")
objs = [{{"id": 7, "data": [1.5, 2.5], "tags": ("a", "b")}}, None, 2**100, b"\x00\xff", {{1, 2}}, "é"]
for o in objs:
    a.send(o)
    assert a.recv() == o, o
b = Client({path:?}, authkey=b"k")
b.send_bytes(b"cos\nsystem\n(S'touch {marker}'\ntR.")
try:
    b.recv()
    raise SystemExit("the server answered a pickle that calls code")
except EOFError:
    pass
a.send([1, 2, 3])
assert a.recv() == [1, 2, 3]
assert not os.path.exists({marker:?})
print("ok")
"#,
        path = path.to_str().unwrap(),
        marker = marker.to_str().unwrap(),
    );
    let result = std::panic::catch_unwind(move || {
        common::deadline(common::LIMIT, move || {
            let out = Command::new(std::env::var("PYTHON").unwrap_or_else(|_| "python3".into()))
                .args(["-c", &script])
                .output()
                .expect("python3 must be installed");
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "{text}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(text.trim(), "ok");
        })
    });
    server.kill().unwrap();
    let out = server.wait_with_output().unwrap();
    let _ = std::fs::remove_file(&path);
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains(
            "client 2: could not take the pickle: pickle opcode GLOBAL at byte 0 is refused"
        ),
        "{log}"
    );
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&out.status),
        Some(9)
    );
}

/// `examples/python/pickle_jobs.py` with `args`.
fn pickle_jobs(args: &[&str]) -> Command {
    let mut py = Command::new(std::env::var("PYTHON").unwrap_or_else(|_| "python3".into()));
    py.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/python/pickle_jobs.py"
    ))
    .args(args);
    py
}

#[test]
fn python_and_rust_exchange_jobs_as_dicts_both_ways() {
    // A Python client, a Rust server running the jobs on a pool.
    let path = common::temp_path("jobs.sock");
    let mut server = listening(Command::new(example("pickle_pool")).args([
        "serve",
        path.to_str().unwrap(),
        "secret",
    ]));
    let where_ = path.to_str().unwrap().to_string();
    let client = std::panic::catch_unwind(move || {
        common::deadline(common::LIMIT, move || {
            pickle_jobs(&["client", &where_, "secret"])
                .output()
                .expect("python3 must be installed")
        })
    });
    server.kill().unwrap();
    server.wait().unwrap();
    let _ = std::fs::remove_file(&path);
    let out = client.unwrap_or_else(|p| std::panic::resume_unwind(p));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for expected in [
        "job 1: sum = 6.5 (rust worker ",
        "job 2: max = 4.0 (rust worker ",
        "job 3: mean = 3.0 (rust worker ",
        "job 4: median failed: cannot median these numbers",
    ] {
        assert!(text.contains(expected), "{expected:?} missing from {text}");
    }

    // A Rust client, a Python server.
    let path = common::temp_path("py.sock");
    let mut py = listening(&mut pickle_jobs(&[
        "server",
        path.to_str().unwrap(),
        "secret",
    ]));
    let out = run(
        "pickle_pool",
        &["call", path.to_str().unwrap(), "secret"],
        Duration::from_secs(60),
    );
    assert!(py.wait().unwrap().success());
    let _ = std::fs::remove_file(&path);
    assert!(out.contains("job 1: sum = 8 (python pid "), "{out}");
    assert!(
        out.contains("job 3: median failed: cannot median these numbers"),
        "{out}"
    );
}

#[test]
fn the_queue_example_runs() {
    let out = run("queue", &[], Duration::from_secs(60));
    assert!(out.contains("each exactly once"), "{out}");
    assert!(out.contains("all tasks done"), "{out}");
}

#[test]
fn the_sync_example_runs() {
    let out = run("sync", &[], Duration::from_secs(60));
    assert!(out.contains("(total 2000)"), "{out}");
    assert!(out.contains("the holder was killed"), "{out}");
    assert!(out.contains("bumped by 4 processes: 4"), "{out}");
}

#[test]
fn the_manager_example_runs() {
    let out = run("manager", &[], Duration::from_secs(60));
    assert!(out.contains("3 workers counted 23 words"), "{out}");
    assert!(out.contains("top words, via a second client"), "{out}");
    assert!(
        out.contains("the manager's pool squared 23 word lengths"),
        "{out}"
    );
    assert!(out.contains("manager shut down"), "{out}");
}

#[test]
fn the_pool_example_runs() {
    let (out, err) = run_both("pool", &[], Duration::from_secs(120));
    assert!(out.contains("starts at 837799 (524 steps)"), "{out}");
    assert!(
        out.contains("item 7 panicked: seven is not allowed"),
        "{out}"
    );
    // The task's panic comes back to the caller, and only there: the
    // worker does not print it (as Python's Pool does not).
    assert!(!err.contains("seven is not allowed"), "{err}");
    assert!(out.contains("item 13 failed"), "{out}");
    assert!(out.contains("the other 14 items succeeded"), "{out}");
    assert!(out.contains("TimedOut"), "{out}");
    assert!(out.contains("-> 111 steps"), "{out}");
    assert!(out.contains("pool joined"), "{out}");
}

#[test]
fn the_pool_examples_progress_bar_has_its_length_and_ends_its_line_on_a_terminal() {
    common::deadline(Duration::from_secs(150), || {
        let out = run_on_terminal("pool", Duration::from_secs(120));
        // The imap's bar (over 1..=200_000, which knows its length) shows
        // that length from its first drawing: `pos/len` never has another.
        let mut drawn = 0;
        let bytes = out.as_bytes();
        for (i, _) in out.match_indices('/') {
            let digits =
                |r: &mut dyn Iterator<Item = &u8>| r.take_while(|b| b.is_ascii_digit()).count();
            let after = digits(&mut bytes[i + 1..].iter());
            let before = digits(&mut bytes[..i].iter().rev());
            if after > 0 && before > 0 {
                assert_eq!(&out[i + 1..i + 1 + after], "200000", "{out}");
                drawn += 1;
            }
        }
        assert!(drawn > 0, "no progress bar was drawn:\n{out}");
        assert!(out.contains("200000/200000"), "{out}");
        // The line printed after the finished bar starts a line of its own.
        assert!(
            out.lines()
                .any(|l| l.starts_with("imap with a progress bar: ")),
            "glued to the bar:\n{out:?}"
        );
    });
}

#[cfg(feature = "cluster")]
#[test]
fn the_cluster_example_runs() {
    // It starts its own redis-server: skipped (or failed, in CI) without one.
    let Some(server) = common::redis_server() else {
        return;
    };
    drop(server);
    let out = run("cluster", &[], Duration::from_secs(120));
    assert!(out.contains("3 agents serve namespace demo"), "{out}");
    assert!(out.contains("all 600 items came back"), "{out}");
}
