//! Runs the CPython side of a group: a script under `python/` that measures
//! the same workload with `multiprocessing` and prints one JSON line per
//! measurement:
//!
//! ```text
//! {"bench": "start_join", "param": "fork", "unit": "ms", "samples": [1.2, 1.1]}
//! {"bench": "start_join", "param": "spawn", "unit": "ms", "error": "why"}
//! ```

use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::report::Measurement;

/// Environment variable naming the Python interpreter (default `python3`).
pub const PYTHON_ENV: &str = "PYTHON";

/// The Python interpreter and the directory holding the group scripts.
#[derive(Debug, Clone)]
pub struct Python {
    program: OsString,
    script_dir: PathBuf,
}

/// What a script run produced: every measurement it printed, and, if it
/// failed part-way or entirely, why.
#[derive(Debug, Default)]
pub struct PythonOutput {
    /// Measurements printed by the script, in order.
    pub measurements: Vec<Measurement>,
    /// Why the script did not finish cleanly, if it did not.
    pub failure: Option<String>,
}

/// One line of a script's output.
#[derive(Debug, Deserialize)]
struct Line {
    bench: String,
    param: String,
    unit: String,
    #[serde(default)]
    samples: Option<Vec<f64>>,
    #[serde(default)]
    error: Option<String>,
}

impl Python {
    /// The interpreter named by `$PYTHON` (or `python3`), and this crate's
    /// `python/` directory.
    pub fn from_env() -> Python {
        let program = std::env::var_os(PYTHON_ENV)
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| OsString::from("python3"));
        Python {
            program,
            script_dir: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python"),
        }
    }

    /// The interpreter's command.
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    pub fn program(&self) -> &std::ffi::OsStr {
        &self.program
    }

    /// The same scripts run by another interpreter (a venv's, say).
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    pub fn with_program(&self, program: impl Into<OsString>) -> Python {
        Python {
            program: program.into(),
            script_dir: self.script_dir.clone(),
        }
    }

    /// The interpreter's version and name, `Python 3.11.7 (python3)`, or
    /// why it could not be had.
    pub fn version(&self) -> String {
        let shown = self.program.to_string_lossy();
        match Command::new(&self.program)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
        {
            Ok(out) if out.status.success() => {
                // Python 2 printed its version on stderr.
                let text = if out.stdout.is_empty() {
                    &out.stderr
                } else {
                    &out.stdout
                };
                format!("{} ({shown})", String::from_utf8_lossy(text).trim())
            }
            Ok(out) => format!("unknown: `{shown} --version` failed ({})", out.status),
            Err(e) => format!("unavailable: cannot run `{shown}`: {e}"),
        }
    }

    /// Runs `script` with `args`, killing it after `timeout`, and collects
    /// its measurements. Never fails: problems end up in
    /// [`PythonOutput::failure`].
    pub fn run(&self, script: &str, args: &[String], timeout: Duration) -> PythonOutput {
        self.launch(script, args, false, timeout).finish()
    }
}

/// The measurements in a script's output `lines`, and why it failed if it
/// did (`status`: how it ended, or why it was stopped).
fn parse_output(
    script: &str,
    lines: &[String],
    status: Result<ExitStatus, String>,
    stderr_text: &str,
) -> PythonOutput {
    let mut output = PythonOutput::default();
    for line in lines
        .iter()
        .map(|l| l.trim())
        .filter(|l| l.starts_with('{'))
    {
        match serde_json::from_str::<Line>(line) {
            Ok(l) => {
                let outcome = match (l.samples, l.error) {
                    (_, Some(e)) => Err(format!("python: {e}")),
                    (Some(s), None) => Ok(s),
                    (None, None) => Err("python printed neither samples nor error".into()),
                };
                output
                    .measurements
                    .push(Measurement::new(&l.bench, &l.param, &l.unit, outcome));
            }
            Err(e) => {
                output.failure = Some(format!("{script} printed a bad line ({e}): {line}"));
            }
        }
    }
    match status {
        Err(e) => output.failure = Some(e),
        Ok(s) if !s.success() => {
            output.failure = Some(format!(
                "{script} failed ({s}){}",
                last_lines(stderr_text, 3)
            ));
        }
        Ok(_) => {}
    }
    output
}

/// The line a script prints when it reaches a turn in `--interleave` mode
/// (`benchutil.turn`): it then waits for a line on its standard input.
fn is_turn_marker(line: &str) -> bool {
    line.trim_start().starts_with("{\"turn\"")
}

/// A group script running beside our measurements, its samples and ours
/// alternating: the script is started with `--interleave`, and wherever
/// it has a turn (at the start of each round of samples,
/// `benchutil.turn()`) it prints a marker and waits. [`Session::turn`]
/// lets it run up to its next turn while we wait, so the two sides never
/// run at the same time, and a drift in the machine's load hits the
/// rounds of both alike. The rounds of both sides line up as long as
/// they measure the same benches in the same order with the same number
/// of rounds; if they do not, the samples are still right, only less
/// interleaved. [`Session::finish`] closes the script's input (it then
/// runs to its end without waiting) and collects its measurements.
pub struct Session {
    script: String,
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    stdout: Option<Lines>,
    collected: Vec<String>,
    /// Where the script's standard error goes: an unlinked file, read at
    /// the end (a pipe would need a thread to drain it).
    stderr: Option<std::fs::File>,
    /// How long the script may take to reach its next turn, or its end.
    timeout: Duration,
    /// Why the session stopped early (started, timed out), if it did.
    failure: Option<String>,
}

/// The lines of a script's standard output, read in the calling thread
/// with a deadline (`poll`), so that a session keeps no thread of its
/// own: a thread in this process would change what ours measure (a fork
/// from a process with several threads costs more, for the kernel's own
/// work, and `Process` then counts the threads through `/proc`).
struct Lines {
    out: ChildStdout,
    buf: Vec<u8>,
    eof: bool,
}

/// What [`Lines::next`] found.
enum Next {
    Line(String),
    End,
    TimedOut,
}

impl Lines {
    /// The next line, waiting until `deadline` at most.
    fn next(&mut self, deadline: Instant) -> Next {
        loop {
            if let Some(at) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=at).collect();
                return Next::Line(String::from_utf8_lossy(&line[..at]).into_owned());
            }
            if self.eof {
                if self.buf.is_empty() {
                    return Next::End;
                }
                let rest = std::mem::take(&mut self.buf);
                return Next::Line(String::from_utf8_lossy(&rest).into_owned());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Next::TimedOut;
            }
            let timeout = rustix::time::Timespec::try_from(left).ok();
            let mut fds = [rustix::event::PollFd::new(
                &self.out,
                rustix::event::PollFlags::IN,
            )];
            match rustix::event::poll(&mut fds, timeout.as_ref()) {
                Ok(0) | Err(rustix::io::Errno::INTR) => continue,
                Ok(_) => {}
                Err(_) => self.eof = true,
            }
            let mut chunk = [0u8; 8192];
            match self.out.read(&mut chunk) {
                Ok(0) => self.eof = true,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => self.eof = true,
            }
        }
    }
}

/// How long a script's output may stay open after it exited (held by
/// processes it left) before the rest is given up.
const LEFT_OPEN: Duration = Duration::from_secs(5);

/// An unlinked file for a script's standard error.
fn stderr_file() -> std::io::Result<std::fs::File> {
    let path = std::env::temp_dir().join(format!(
        "multiproc-bench-stderr-{}-{:?}",
        std::process::id(),
        Instant::now()
    ));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)?;
    std::fs::remove_file(&path)?;
    Ok(file)
}

impl Python {
    /// Starts `script` with `args` and `--interleave`, and waits until it
    /// reaches its first turn (its set-up done). It is killed if it takes
    /// longer than `timeout` to reach its next turn (or, after
    /// [`Session::finish`], its end): our side's time between its turns
    /// does not count. Never fails: a script that
    /// could not start gives a [`Session::finish`] with the reason.
    pub fn session(&self, script: &str, args: &[String], timeout: Duration) -> Session {
        let mut session = self.launch(script, args, true, timeout);
        session.wait_for_turn();
        session
    }

    /// Starts `script` with `args` (and `--interleave`, its input a pipe
    /// for [`Session::turn`], if `interleave`; else with no input).
    fn launch(
        &self,
        script: &str,
        args: &[String],
        interleave: bool,
        timeout: Duration,
    ) -> Session {
        let mut session = Session {
            script: script.to_string(),
            child: None,
            stdin: None,
            stdout: None,
            collected: Vec::new(),
            stderr: None,
            timeout,
            failure: None,
        };
        let shown = self.program.to_string_lossy().into_owned();
        let stderr = match stderr_file().and_then(|f| Ok((f.try_clone()?, f))) {
            Ok((theirs, ours)) => {
                session.stderr = Some(ours);
                Stdio::from(theirs)
            }
            Err(e) => {
                session.failure = Some(format!("no file for {script}'s stderr: {e}"));
                return session;
            }
        };
        let mut command = Command::new(&self.program);
        command.arg(self.script_dir.join(script)).args(args);
        if interleave {
            command.arg("--interleave").stdin(Stdio::piped());
        } else {
            command.stdin(Stdio::null());
        }
        let spawned = command.stdout(Stdio::piped()).stderr(stderr).spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                session.failure = Some(format!(
                    "python interpreter `{shown}` not found (set ${PYTHON_ENV})"
                ));
                return session;
            }
            Err(e) => {
                session.failure = Some(format!("could not run `{shown}`: {e}"));
                return session;
            }
        };
        session.stdout = Some(Lines {
            out: child.stdout.take().expect("piped stdout"),
            buf: Vec::new(),
            eof: false,
        });
        session.stdin = child.stdin.take();
        session.child = Some(child);
        session
    }
}

impl Session {
    /// Reads the script's output up to its next turn marker (or its end),
    /// keeping the other lines. Kills it at the deadline.
    fn wait_for_turn(&mut self) {
        let deadline = Instant::now() + self.timeout;
        while self.child.is_some() && self.stdin.is_some() {
            let Some(lines) = self.stdout.as_mut() else {
                self.stdin = None;
                return;
            };
            match lines.next(deadline) {
                Next::Line(line) if is_turn_marker(&line) => return,
                Next::Line(line) => self.collected.push(line),
                // The script's output ended: it is finishing; no more turns.
                Next::End => self.stdin = None,
                Next::TimedOut => self.kill("timed out"),
            }
        }
    }

    fn kill(&mut self, why: &str) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.stdin = None;
        self.failure = Some(format!("{} {why} and was killed", self.script));
    }

    /// Lets the script run its next turn, and waits until it is at the
    /// one after (or has ended). Does nothing once it has ended.
    pub fn turn(&mut self) {
        let Some(stdin) = self.stdin.as_mut() else {
            return;
        };
        if stdin
            .write_all(b"go\n")
            .and_then(|()| stdin.flush())
            .is_err()
        {
            // It is gone: its output tells why.
            self.stdin = None;
            return;
        }
        self.wait_for_turn();
    }

    /// Lets the script run to its end without waiting for turns, then
    /// collects its measurements (as [`Python::run`] does).
    pub fn finish(mut self) -> PythonOutput {
        drop(self.stdin.take());
        let Some(mut child) = self.child.take() else {
            return parse_output(
                &self.script,
                &self.collected,
                Err(self.failure.take().unwrap_or_default()),
                "",
            );
        };
        let deadline = Instant::now() + self.timeout;
        // When the script exited: its output may stay open a while longer
        // in processes it left (a pool's workers on their way out), but
        // not beyond `LEFT_OPEN` after it.
        let mut exited_at = None;
        let status = loop {
            let step = deadline.min(Instant::now() + Duration::from_millis(100));
            let next = match self.stdout.as_mut() {
                Some(lines) => lines.next(step),
                None => Next::End,
            };
            match next {
                Next::Line(line) if is_turn_marker(&line) => {}
                Next::Line(line) => self.collected.push(line),
                Next::End => break wait_until(&mut child, deadline),
                Next::TimedOut if Instant::now() < deadline => {
                    if exited_at.is_none() && matches!(child.try_wait(), Ok(Some(_))) {
                        exited_at = Some(Instant::now());
                    }
                    if exited_at.is_some_and(|t| t.elapsed() > LEFT_OPEN) {
                        break wait_until(&mut child, deadline);
                    }
                }
                Next::TimedOut => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break Err(format!("{} timed out and was killed", self.script));
                }
            }
        };
        let mut stderr_text = String::new();
        if let (Ok(_), Some(mut file)) = (&status, self.stderr.take()) {
            use std::io::Seek;
            let _ = file
                .rewind()
                .and_then(|()| file.read_to_string(&mut stderr_text));
        }
        parse_output(&self.script, &self.collected, status, &stderr_text)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits for `child` to exit, killing it at `deadline`.
fn wait_until(child: &mut Child, deadline: Instant) -> Result<ExitStatus, String> {
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(status),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err("the script timed out and was killed".to_string());
            }
            Ok(None) => thread::sleep(Duration::from_millis(10)),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("waiting for the script failed: {e}"));
            }
        }
    }
}

/// The last `n` non-empty lines of `text`, as `: a | b`, or nothing.
fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        return String::new();
    }
    let tail = &lines[lines.len().saturating_sub(n)..];
    format!(
        ": {}",
        tail.iter()
            .map(|l| l.trim())
            .collect::<Vec<_>>()
            .join(" | ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A script that takes three turns, recording what it read at each
    /// (`go\n` while the session drives it, nothing once its input is
    /// closed), then prints that as its samples.
    const TURNS: &str = r#"
import json, sys
seen = []
for i in range(3):
    print(json.dumps({"turn": i + 1}), flush=True)
    seen.append(float(len(sys.stdin.readline())))
print(json.dumps({"bench": "b", "param": "-", "unit": "ms", "samples": seen}), flush=True)
"#;

    #[test]
    fn a_session_alternates_turns_and_finishes_on_its_own() {
        let dir = std::env::temp_dir().join(format!("multiproc-bench-py-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("turns.py"), TURNS).unwrap();
        let python = Python {
            script_dir: dir.clone(),
            ..Python::from_env()
        };
        if !python.version().starts_with("Python 3") {
            eprintln!("no python3: skipped");
            return;
        }
        let mut session = python.session("turns.py", &[], Duration::from_secs(30));
        // Two turns driven, the third left to the end of its input.
        session.turn();
        session.turn();
        let out = session.finish();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(out.failure, None);
        assert_eq!(out.measurements.len(), 1);
        assert_eq!(out.measurements[0].outcome, Ok(vec![3.0, 3.0, 0.0]));
    }
}
