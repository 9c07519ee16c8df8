//! Runs the CPython side of a group: a script under `python/` that measures
//! the same workload with `multiprocessing` and prints one JSON line per
//! measurement:
//!
//! ```text
//! {"bench": "start_join", "param": "fork", "unit": "ms", "samples": [1.2, 1.1]}
//! {"bench": "start_join", "param": "spawn", "unit": "ms", "error": "why"}
//! ```

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Command, Stdio};
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
        let path = self.script_dir.join(script);
        let shown = self.program.to_string_lossy().into_owned();
        let mut child = match Command::new(&self.program)
            .arg(&path)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
        {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return PythonOutput::failed(format!(
                    "python interpreter `{shown}` not found (set ${PYTHON_ENV})"
                ));
            }
            Err(e) => return PythonOutput::failed(format!("could not run `{shown}`: {e}")),
        };
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let out_reader = thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .collect::<Vec<_>>()
        });
        let err_reader = thread::spawn(move || {
            let mut text = String::new();
            let _ = BufReader::new(stderr).read_to_string(&mut text);
            text
        });

        let deadline = Instant::now() + timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Ok(status),
                Ok(None) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break Err(format!(
                        "{script} timed out after {} s and was killed",
                        timeout.as_secs()
                    ));
                }
                Ok(None) => thread::sleep(Duration::from_millis(20)),
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break Err(format!("waiting for {script} failed: {e}"));
                }
            }
        };
        // The script's own children (idle workers) may hold the pipes open
        // for a while after it was killed; only wait for them on success.
        let lines = match status {
            Ok(_) => out_reader.join().unwrap_or_default(),
            Err(_) => Vec::new(),
        };
        let stderr_text = match status {
            Ok(_) => err_reader.join().unwrap_or_default(),
            Err(_) => String::new(),
        };

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
                    last_lines(&stderr_text, 3)
                ));
            }
            Ok(_) => {}
        }
        output
    }
}

impl PythonOutput {
    fn failed(why: String) -> PythonOutput {
        PythonOutput {
            measurements: Vec::new(),
            failure: Some(why),
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
