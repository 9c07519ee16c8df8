//! Shared harness for multi-process tests: every test runs under a deadline,
//! so a bug fails the test instead of hanging CI, and helpers check that no
//! process is left behind.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Runs `body` on its own thread and fails the test if it takes longer than
/// `limit`. A panic in `body` is re-raised here with its message.
pub fn deadline<T: Send + 'static>(
    limit: Duration,
    body: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        let out = body();
        let _ = tx.send(());
        out
    });
    match rx.recv_timeout(limit) {
        Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => match worker.join() {
            Ok(v) => v,
            Err(p) => std::panic::resume_unwind(p),
        },
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("test exceeded its deadline of {limit:?}"),
    }
}

/// The usual deadline for one test.
pub const LIMIT: Duration = Duration::from_secs(60);

/// Whether a process with this pid exists (a zombie counts as existing).
pub fn exists(pid: i32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// The state letter of a process from /proc (R, S, Z, ...), if it exists.
pub fn state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 2..].chars().next()
}

/// Waits until no process `pid` exists, nor a zombie of it; false if it
/// still does after `within`.
pub fn wait_gone(pid: i32, within: Duration) -> bool {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if !exists(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

/// Whether `done()` turns true within `within`, asked every 5 ms: for
/// conditions that come true by themselves (a key's time-to-live, another
/// process's late work), instead of a sleep.
pub fn eventually(within: Duration, mut done: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + within;
    loop {
        if done() {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Asserts that `pid` is gone (reaped, not a zombie) within a few seconds.
pub fn assert_gone(pid: i32) {
    assert!(
        wait_gone(pid, Duration::from_secs(10)),
        "process {pid} is still there (state {:?})",
        state(pid)
    );
}

/// A fresh path in the temporary directory, unique to this test process.
pub fn temp_path(tag: &str) -> PathBuf {
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::env::temp_dir().join(format!("multiproc-test-{}-{tag}-{n}", std::process::id()))
}

/// Waits until `path` holds a number, and returns it.
pub fn read_pid_file(path: &std::path::Path, within: Duration) -> i32 {
    let end = Instant::now() + within;
    loop {
        if let Ok(s) = std::fs::read_to_string(path)
            && let Ok(pid) = s.trim().parse()
        {
            return pid;
        }
        assert!(
            Instant::now() < end,
            "no pid appeared in {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits until `pid` no longer runs: gone, or a zombie awaiting its new
/// parent (an orphan's reaper is not ours to hurry). False after `within`.
pub fn wait_dead(pid: i32, within: Duration) -> bool {
    let end = Instant::now() + within;
    while Instant::now() < end {
        match state(pid) {
            None | Some('Z') | Some('X') => return true,
            _ => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    false
}

/// Sends `signal` to process `pid`, as a user or the OOM killer would from
/// outside. Returns whether it was delivered.
#[allow(dead_code)]
pub fn send_signal(pid: i32, signal: i32) -> bool {
    // SAFETY: kill(2) takes two integers and reads no memory of ours.
    unsafe { libc::kill(pid, signal) == 0 }
}

/// Sends this process's stderr to /dev/null: for a child that panics or
/// crashes on purpose, so that a passing `cargo test` does not print what
/// it says there (a child prints its panic, as any Rust thread does). The
/// test still sees the panic: `join` returns its report, which the test's
/// assertions show when they fail.
pub fn silence_stderr() {
    let null = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .expect("/dev/null opens");
    // SAFETY: dup2(2) takes two descriptors and reads no memory of ours;
    // `null` stays open until after the call.
    let r = unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), 2) };
    assert_eq!(r, 2, "stderr could not be redirected");
}

/// A private `redis-server` for one cluster test, or `None` (after saying
/// so) when none is installed. With `MULTIPROC_REQUIRE_REDIS=1`, as CI
/// sets, a missing server fails the test instead: CI never passes by
/// skipping.
#[cfg(feature = "cluster")]
pub fn redis_server() -> Option<multiproc::cluster::LocalServer> {
    match multiproc::cluster::LocalServer::start() {
        Ok(server) => Some(server),
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                && std::env::var_os("MULTIPROC_REQUIRE_REDIS").is_none_or(|v| v != "1") =>
        {
            eprintln!("SKIPPED: redis-server is not installed ({e})");
            None
        }
        Err(e) => panic!("could not start redis-server: {e}"),
    }
}

/// A private server, a cluster handle on it with `min_idle` 250 ms, and
/// `agents` agents (this test binary, started as a user would start it)
/// of `slots` slots each; `None` where [`redis_server`] skips.
#[cfg(feature = "cluster")]
pub struct ClusterSetup {
    /// The handle, namespace `default`.
    pub cluster: multiproc::cluster::Cluster,
    /// The agents, killed when dropped.
    pub agents: Vec<multiproc::cluster::LocalAgent>,
    /// The server (dropped last).
    pub server: multiproc::cluster::LocalServer,
}

/// See [`ClusterSetup`].
#[cfg(feature = "cluster")]
pub fn cluster_setup(agents: usize, slots: usize) -> Option<ClusterSetup> {
    let server = redis_server()?;
    let cluster = multiproc::cluster::Cluster::connect(&server.url()).unwrap();
    cluster.set_min_idle(Duration::from_millis(250)).unwrap();
    let agents = (0..agents)
        .map(|_| multiproc::cluster::LocalAgent::start(&cluster, slots).unwrap())
        .collect();
    Some(ClusterSetup {
        cluster,
        agents,
        server,
    })
}

/// Runs test `name` of this test binary alone, in a new process with
/// `env` set (the test does its work only then), and returns its stdout
/// and stderr once it passed: for checking what a test's processes print.
pub fn run_this_test_alone(name: &str, env: &str) -> (String, String) {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(env, "1")
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stdout}\n{stderr}");
    (stdout, stderr)
}

/// Runs `test` under every start method, within [`LIMIT`].
pub fn each_method(test: fn(multiproc::StartMethod)) {
    deadline(LIMIT, move || {
        for method in multiproc::StartMethod::ALL {
            test(method);
        }
    });
}

/// A builder of daemon children (killed if a failing test drops them)
/// started with `method`.
pub fn daemon_builder(method: multiproc::StartMethod) -> multiproc::ProcessBuilder {
    multiproc::Process::builder()
        .start_method(method)
        .daemon(true)
}

/// A value that refuses to encode (its `Serialize` fails) and decodes
/// from anything: an argument or result a pool or a process cannot send.
#[derive(Debug)]
pub struct Unencodable;

impl serde::Serialize for Unencodable {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("this value refuses to encode"))
    }
}

impl<'de> serde::Deserialize<'de> for Unencodable {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Ok(Unencodable)
    }
}

/// A block of the crate's shared memory that this process holds, reached
/// as a hostile task reaches it: by opening `/proc/self/fd/<n>` and reading
/// and writing the file, whatever the crate meant the block for.
pub struct RawBlock(std::fs::File);

impl RawBlock {
    /// Its size in bytes.
    pub fn size(&self) -> u64 {
        self.0.metadata().map_or(0, |m| m.len())
    }

    /// Its 64-bit word `i`.
    pub fn load(&self, i: usize) -> u64 {
        use std::os::unix::fs::FileExt;
        let mut word = [0u8; 8];
        self.0.read_exact_at(&mut word, i as u64 * 8).unwrap();
        u64::from_ne_bytes(word)
    }

    /// Overwrites its 64-bit word `i`: false if the block has none, or
    /// the kernel refused the write (a block sealed against writes).
    pub fn store(&self, i: usize, value: u64) -> bool {
        use std::os::unix::fs::FileExt;
        (i as u64 + 1) * 8 <= self.size()
            && self
                .0
                .write_all_at(&value.to_ne_bytes(), i as u64 * 8)
                .is_ok()
    }
}

/// The blocks of [`raw_blocks`] under a page: in a pool worker, its slot
/// block (an arena or a return area takes megabytes).
pub fn small_raw_blocks() -> Vec<RawBlock> {
    raw_blocks()
        .into_iter()
        .filter(|b| b.size() < 4096)
        .collect()
}

/// Every block of the crate's shared memory (memfds labelled
/// `multiproc-shm`) this process holds a descriptor of and may write.
pub fn raw_blocks() -> Vec<RawBlock> {
    let mut blocks = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let target = std::fs::read_link(entry.path()).unwrap_or_default();
        if !target.to_string_lossy().starts_with("/memfd:multiproc-shm") {
            continue;
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(entry.path());
        if let Ok(file) = file {
            blocks.push(RawBlock(file));
        }
    }
    blocks
}
