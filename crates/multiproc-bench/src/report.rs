//! Measurements, their medians, and the two output formats (a table for
//! people, JSON lines for programs).

use std::collections::HashMap;
use std::io::{self, Write};

use serde::Serialize;

/// Which implementation produced a measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Impl {
    /// This workspace's `multiproc` crate.
    Multiproc,
    /// CPython's `multiprocessing`, run by a script under `python/`.
    Python,
    /// A floor with no library at all (plain std sockets, say): what the
    /// operating system alone costs for the same workload.
    Raw,
}

/// The raw samples of one benchmark for one parameter, or why there are none.
#[derive(Debug, Clone)]
pub struct Measurement {
    /// Benchmark name, e.g. `start_join`.
    pub bench: String,
    /// Parameter, e.g. the start method `fork`.
    pub param: String,
    /// Unit of every sample, e.g. `ms` or `KiB`.
    pub unit: String,
    /// The samples, or the reason the benchmark could not be measured.
    pub outcome: Result<Vec<f64>, String>,
}

impl Measurement {
    /// A measurement of `bench` with `param`, in `unit`.
    pub fn new(
        bench: &str,
        param: &str,
        unit: &str,
        outcome: Result<Vec<f64>, String>,
    ) -> Measurement {
        Measurement {
            bench: bench.to_string(),
            param: param.to_string(),
            unit: unit.to_string(),
            outcome,
        }
    }
}

/// One reported result: the median of one benchmark, parameter and
/// implementation. Serialized as one line of `--json` output.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Benchmark group, e.g. `start`.
    pub group: String,
    /// Benchmark name within the group.
    pub bench: String,
    /// Parameter of the benchmark.
    pub param: String,
    /// Implementation measured.
    #[serde(rename = "impl")]
    pub implementation: Impl,
    /// Median of the samples; `null` when the measurement is unavailable.
    pub median: Option<f64>,
    /// Unit of `median`, `min` and `max`.
    pub unit: String,
    /// Number of samples behind the median.
    pub runs: usize,
    /// Smallest sample.
    pub min: Option<f64>,
    /// Largest sample.
    pub max: Option<f64>,
    /// Why the measurement is unavailable (absent when it is available).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Row {
    /// Summarizes `m`, measured by `implementation` in `group`.
    pub fn from_measurement(group: &str, implementation: Impl, m: Measurement) -> Row {
        let (median, runs, min, max, error) = match m.outcome {
            Ok(samples) if samples.is_empty() => {
                (None, 0, None, None, Some("no samples".to_string()))
            }
            Ok(samples) => {
                let min = samples.iter().copied().fold(f64::INFINITY, f64::min);
                let max = samples.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                (
                    median(&samples).map(round),
                    samples.len(),
                    Some(round(min)),
                    Some(round(max)),
                    None,
                )
            }
            Err(e) => (None, 0, None, None, Some(e)),
        };
        Row {
            group: group.to_string(),
            bench: m.bench,
            param: m.param,
            implementation,
            median,
            unit: m.unit,
            runs,
            min,
            max,
            error,
        }
    }

    /// Whether the row carries a median.
    pub fn is_available(&self) -> bool {
        self.median.is_some()
    }
}

/// The median of `samples` (the mean of the middle two for an even count);
/// `None` for no samples. NaNs sort last.
pub fn median(samples: &[f64]) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// Rounds to 4 decimals (0.1 µs for ms), dropping float noise from the
/// output.
fn round(v: f64) -> f64 {
    (v * 1e4).round() / 1e4
}

/// Pairs each multiproc measurement with Python's measurement of the same
/// bench and param, in multiproc's order. A missing Python measurement
/// becomes an unavailable row whose error is `python_failure` (or a note
/// that the script did not report it). Python measurements with no multiproc
/// counterpart follow at the end.
pub fn pair(
    group: &str,
    multiproc: Vec<Measurement>,
    python: Vec<Measurement>,
    python_failure: Option<&str>,
) -> Vec<Row> {
    let mut python: Vec<Option<Measurement>> = python.into_iter().map(Some).collect();
    let mut rows = Vec::new();
    for m in multiproc {
        let found = python.iter_mut().find(|p| {
            p.as_ref()
                .is_some_and(|p| p.bench == m.bench && p.param == m.param)
        });
        let py = match found.and_then(Option::take) {
            Some(p) => p,
            None => Measurement::new(
                &m.bench,
                &m.param,
                &m.unit,
                Err(python_failure
                    .unwrap_or("the python script reported no result for this bench")
                    .to_string()),
            ),
        };
        rows.push(Row::from_measurement(group, Impl::Multiproc, m));
        rows.push(Row::from_measurement(group, Impl::Python, py));
    }
    for p in python.into_iter().flatten() {
        rows.push(Row::from_measurement(group, Impl::Python, p));
    }
    rows
}

/// Adds `raw` measurements (the floor with no library, [`Impl::Raw`]) to
/// `rows` made by [`pair`]: each goes right after the last row of the same
/// bench and param, or at the end if there is none.
pub fn add_raw(group: &str, mut rows: Vec<Row>, raw: Vec<Measurement>) -> Vec<Row> {
    for m in raw {
        let at = rows
            .iter()
            .rposition(|r| r.bench == m.bench && r.param == m.param)
            .map_or(rows.len(), |i| i + 1);
        rows.insert(at, Row::from_measurement(group, Impl::Raw, m));
    }
    rows
}

/// Whether a larger value is better in `unit`: rates (`MB/s`, `msg/s`,
/// any unit ending in `/s`) are; times and sizes are not.
pub fn higher_is_better(unit: &str) -> bool {
    unit.ends_with("/s")
}

/// How many times better `ours` is than `theirs`, both in `unit`: their
/// value over ours for times and sizes, ours over theirs for rates. Above 1
/// means ours is better. `None` if the division makes no sense.
pub fn times_better(unit: &str, ours: f64, theirs: f64) -> Option<f64> {
    let (num, den) = if higher_is_better(unit) {
        (ours, theirs)
    } else {
        (theirs, ours)
    };
    (num >= 0.0 && den > 0.0).then(|| num / den)
}

/// Writes `rows` as JSON lines, one object per row.
pub fn write_json(out: &mut impl Write, rows: &[Row]) -> io::Result<()> {
    for row in rows {
        let line = serde_json::to_string(row).map_err(io::Error::other)?;
        writeln!(out, "{line}")?;
    }
    out.flush()
}

/// Writes `rows` of `group` as a table with one line per bench and param:
/// the multiproc median, the Python median, and `ratio`, how many times
/// better multiproc is than Python ([`times_better`]: python / multiproc
/// for times and sizes, multiproc / python for rates; above 1 means
/// multiproc is better). If the group has [`Impl::Raw`] rows, two more
/// columns follow: the raw median and `vs raw`, how many times worse than
/// the raw floor multiproc is (multiproc / raw for times, raw / multiproc
/// for rates; 1.00x means on par with it).
pub fn write_table(out: &mut impl Write, group: &str, rows: &[Row]) -> io::Result<()> {
    let mut keys: Vec<(&str, &str)> = Vec::new();
    let mut by_key: HashMap<(&str, &str, Impl), &Row> = HashMap::new();
    for row in rows {
        let key = (row.bench.as_str(), row.param.as_str());
        if !keys.contains(&key) {
            keys.push(key);
        }
        by_key.insert((key.0, key.1, row.implementation), row);
    }
    let with_raw = rows.iter().any(|r| r.implementation == Impl::Raw);
    let mut header = vec!["bench", "param", "multiproc", "python", "ratio"];
    if with_raw {
        header.extend(["raw", "vs raw"]);
    }
    header.push("unit");
    let mut lines: Vec<Vec<String>> = vec![header.into_iter().map(String::from).collect()];
    let mut notes = Vec::new();
    for (bench, param) in keys {
        let get = |i: Impl| by_key.get(&(bench, param, i)).copied();
        let (mp, py, raw) = (get(Impl::Multiproc), get(Impl::Python), get(Impl::Raw));
        let unit = mp.or(py).or(raw).map(|r| r.unit.as_str()).unwrap_or("");
        let cell = |r: Option<&Row>| match r.and_then(|r| r.median) {
            Some(v) => format_value(v),
            None => "n/a".to_string(),
        };
        let median = |r: Option<&Row>| r.and_then(|r| r.median);
        let ratio = match (median(mp), median(py)) {
            (Some(m), Some(p)) => times_better(unit, m, p).map(|x| format!("{x:.2}x")),
            _ => None,
        };
        let mut line = vec![
            bench.to_string(),
            param.to_string(),
            cell(mp),
            cell(py),
            ratio.unwrap_or_else(|| "n/a".to_string()),
        ];
        if with_raw {
            let vs_raw = match (median(mp), median(raw)) {
                // Worse than raw = how many times better raw is.
                (Some(m), Some(r)) => times_better(unit, r, m).map(|x| format!("{x:.2}x")),
                _ => None,
            };
            line.push(if raw.is_some() { cell(raw) } else { "-".into() });
            line.push(match (raw, vs_raw) {
                (None, _) => "-".into(),
                (Some(_), v) => v.unwrap_or_else(|| "n/a".to_string()),
            });
        }
        line.push(unit.to_string());
        lines.push(line);
        for (who, r) in [("multiproc", mp), ("python", py), ("raw", raw)] {
            if let Some(e) = r.and_then(|r| r.error.as_deref()) {
                let note = format!("{who} unavailable: {e}");
                if !notes.contains(&note) {
                    notes.push(note);
                }
            }
        }
    }
    let columns = lines[0].len();
    let mut widths = vec![0usize; columns];
    for line in &lines {
        for (w, c) in widths.iter_mut().zip(line) {
            *w = (*w).max(c.len());
        }
    }
    writeln!(out, "== group {group} ==")?;
    for line in &lines {
        let mut text = String::new();
        for (i, (cell, w)) in line.iter().zip(&widths).enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            if i == columns - 1 {
                // The unit, last: no padding.
                text.push_str(cell);
            } else if i < 2 {
                text.push_str(&format!("{cell:<w$}"));
            } else {
                text.push_str(&format!("{cell:>w$}"));
            }
        }
        writeln!(out, "{text}")?;
    }
    writeln!(
        out,
        "(medians; ratio = how many times better multiproc is than python: python / multiproc \
         for times and sizes,\n multiproc / python for rates (units ending in /s); above 1 means \
         multiproc is better)"
    )?;
    if with_raw {
        writeln!(
            out,
            "(vs raw = how many times worse multiproc is than the raw floor: multiproc / raw for \
             times,\n raw / multiproc for rates; 1.00x means on par with it)"
        )?;
    }
    for note in notes {
        writeln!(out, "note: {note}")?;
    }
    writeln!(out)?;
    out.flush()
}

/// Formats a median with about four significant digits.
fn format_value(v: f64) -> String {
    let a = v.abs();
    if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 10.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }

    #[test]
    fn pairing_marks_missing_python_rows_unavailable() {
        let mp = vec![
            Measurement::new("b", "x", "ms", Ok(vec![1.0])),
            Measurement::new("b", "y", "ms", Ok(vec![2.0])),
        ];
        let py = vec![Measurement::new("b", "y", "ms", Ok(vec![6.0]))];
        let rows = pair("g", mp, py, Some("boom"));
        assert_eq!(rows.len(), 4);
        assert_eq!(rows[1].implementation, Impl::Python);
        assert_eq!(rows[1].error.as_deref(), Some("boom"));
        assert_eq!(rows[3].median, Some(6.0));
        let mut out = Vec::new();
        write_table(&mut out, "g", &rows).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("3.00x"), "{text}");
        assert!(text.contains("python unavailable: boom"), "{text}");
        assert!(!text.contains("vs raw"), "{text}");
    }

    #[test]
    fn rates_are_better_higher_and_raw_rows_follow_their_pair() {
        let mp = vec![
            Measurement::new("rt", "8B", "us", Ok(vec![10.0])),
            Measurement::new("tp", "8B", "MB/s", Ok(vec![400.0])),
        ];
        let py = vec![
            Measurement::new("rt", "8B", "us", Ok(vec![30.0])),
            Measurement::new("tp", "8B", "MB/s", Ok(vec![100.0])),
        ];
        let raw = vec![
            Measurement::new("rt", "8B", "us", Ok(vec![8.0])),
            Measurement::new("tp", "8B", "MB/s", Ok(vec![500.0])),
        ];
        let rows = add_raw("g", pair("g", mp, py, None), raw);
        let order: Vec<(&str, Impl)> = rows
            .iter()
            .map(|r| (r.bench.as_str(), r.implementation))
            .collect();
        assert_eq!(
            order,
            [
                ("rt", Impl::Multiproc),
                ("rt", Impl::Python),
                ("rt", Impl::Raw),
                ("tp", Impl::Multiproc),
                ("tp", Impl::Python),
                ("tp", Impl::Raw),
            ]
        );
        assert_eq!(
            serde_json::to_value(&rows[2]).unwrap()["impl"],
            serde_json::json!("raw")
        );
        let mut out = Vec::new();
        write_table(&mut out, "g", &rows).unwrap();
        let text = String::from_utf8(out).unwrap();
        let rt = text.lines().find(|l| l.starts_with("rt")).unwrap();
        let tp = text.lines().find(|l| l.starts_with("tp")).unwrap();
        // 30 / 10 and 400 / 100: both 3 and 4 times better than python.
        assert!(rt.contains("3.00x") && rt.contains("1.25x"), "{text}");
        assert!(tp.contains("4.00x") && tp.contains("1.25x"), "{text}");
    }
}
