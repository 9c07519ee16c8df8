//! `--report DIR`: the run's results as files, for people and programs.
//!
//! * `report.md`: the machine and the command, then a Markdown table per
//!   group with the ratios and the issues' targets ([`crate::markdown`]);
//! * `report.json`: the results in the `--json` format, one object per
//!   line ([`report::write_json`]);
//! * `chart.svg`: multiproc against Python per group ([`crate::chart`]).

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::Path;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::chart;
use crate::markdown::{self, Header};
use crate::python::{PYTHON_ENV, Python};
use crate::report::{self, Row};

/// The Markdown report's file name.
pub const MARKDOWN: &str = "report.md";
/// The JSON results' file name.
pub const JSON: &str = "report.json";
/// The chart's file name.
pub const CHART: &str = "chart.svg";

/// The header of a run made with command-line arguments `args`.
pub fn header(python: &Python, args: &[String], quick: bool) -> Header {
    Header {
        date: utc_now(),
        cpu: cpu_model().unwrap_or_else(|| "unknown".to_string()),
        cores: cores(),
        os: fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|r| format!("Linux {}", r.trim()))
            .unwrap_or_else(|_| std::env::consts::OS.to_string()),
        python: python.version(),
        multiproc: multiproc_version(),
        command: command(args),
        quick,
    }
}

/// Writes the report of `rows` into `dir` (created if need be): the
/// Markdown report, the JSON results and the chart. A chart that cannot
/// be drawn (no results) leaves the other two files, without a chart
/// link, and is reported as the error.
pub fn write(dir: &Path, header: &Header, rows: &[Row]) -> Result<(), String> {
    fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let file = |name: &str| {
        let path = dir.join(name);
        File::create(&path)
            .map(BufWriter::new)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))
    };
    let failed = |name: &str, e: std::io::Error| format!("writing {name} failed: {e}");

    report::write_json(&mut file(JSON)?, rows).map_err(|e| failed(JSON, e))?;
    let subtitle = format!(
        "{} · {} · {} cores · {}{}",
        header.date,
        header.cpu,
        header.cores,
        header.python,
        if header.quick { " · --quick" } else { "" }
    );
    let chart = chart::render(rows, &subtitle);
    if let Ok(svg) = &chart {
        let mut out = file(CHART)?;
        out.write_all(svg.as_bytes())
            .and_then(|()| out.flush())
            .map_err(|e| failed(CHART, e))?;
    }
    let link = chart.is_ok().then_some(CHART);
    markdown::write(&mut file(MARKDOWN)?, header, rows, link).map_err(|e| failed(MARKDOWN, e))?;
    chart.map(|_| ())
}

/// The command that reproduces a run with arguments `args`, as a user
/// types it (with `$PYTHON`, if set).
pub fn command(args: &[String]) -> String {
    let mut text = String::new();
    if let Some(python) = std::env::var_os(PYTHON_ENV).filter(|p| !p.is_empty()) {
        text.push_str(&format!(
            "{PYTHON_ENV}={} ",
            shell_word(&python.to_string_lossy())
        ));
    }
    text.push_str("cargo run --release -p multiproc-bench");
    if cfg!(feature = "cluster") {
        // The build the run came from: the cluster group needs it.
        text.push_str(" --features cluster");
    }
    text.push_str(" --");
    for arg in args {
        text.push(' ');
        text.push_str(&shell_word(arg));
    }
    text
}

/// `word` quoted for a POSIX shell where it needs to be.
fn shell_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// The first `model name` of `/proc/cpuinfo`.
fn cpu_model() -> Option<String> {
    let text = fs::read_to_string("/proc/cpuinfo").ok()?;
    text.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == "model name").then(|| value.split_whitespace().collect::<Vec<_>>().join(" "))
    })
}

/// The cores this process may use, and the machine's if that differs.
fn cores() -> String {
    let available = std::thread::available_parallelism().map_or(0, |n| n.get());
    let online = fs::read_to_string("/proc/cpuinfo")
        .map(|t| t.lines().filter(|l| l.starts_with("processor")).count())
        .unwrap_or(0);
    if online == 0 || online == available {
        available.to_string()
    } else {
        format!("{available} available to the run ({online} on the machine)")
    }
}

/// This crate's version and, where git knows it, the commit.
fn multiproc_version() -> String {
    let dir = env!("CARGO_MANIFEST_DIR");
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let version = env!("CARGO_PKG_VERSION");
    match git(&["rev-parse", "--short", "HEAD"]) {
        Some(commit) if !commit.is_empty() => {
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            let note = if dirty {
                ", with uncommitted changes"
            } else {
                ""
            };
            format!("{version}, git {commit}{note}")
        }
        _ => version.to_string(),
    }
}

/// The current time, `YYYY-MM-DD HH:MM UTC`.
fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    utc(secs)
}

/// `secs` since the epoch as `YYYY-MM-DD HH:MM UTC`.
fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let (h, m) = ((secs % 86_400) / 3600, (secs % 3600) / 60);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{d:02} {h:02}:{m:02} UTC")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_civil() {
        assert_eq!(utc(0), "1970-01-01 00:00 UTC");
        // 2024-02-29 12:34:56 UTC, a leap day.
        assert_eq!(utc(1_709_210_096), "2024-02-29 12:34 UTC");
        assert_eq!(utc(1_735_689_600), "2025-01-01 00:00 UTC");
    }

    #[test]
    fn commands_are_quoted_for_the_shell() {
        assert_eq!(shell_word("--report"), "--report");
        assert_eq!(shell_word("docs/bench"), "docs/bench");
        assert_eq!(shell_word("my dir"), "'my dir'");
        assert_eq!(shell_word("it's"), r"'it'\''s'");
        let shown = command(&["cluster".to_string(), "--quick".to_string()]);
        assert!(shown.ends_with("-- cluster --quick"), "{shown}");
        assert_eq!(
            shown.contains("--features cluster --"),
            cfg!(feature = "cluster")
        );
    }

    #[test]
    fn a_report_directory_gets_three_files() {
        let dir =
            std::env::temp_dir().join(format!("multiproc-bench-report-{}", std::process::id()));
        let rows = crate::markdown::tests::sample_rows();
        write(&dir, &Header::default(), &rows).unwrap();
        let md = fs::read_to_string(dir.join(MARKDOWN)).unwrap();
        assert!(md.contains("](chart.svg)"));
        let json = fs::read_to_string(dir.join(JSON)).unwrap();
        assert_eq!(json.lines().count(), rows.len());
        assert!(
            fs::read_to_string(dir.join(CHART))
                .unwrap()
                .contains("<svg")
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
