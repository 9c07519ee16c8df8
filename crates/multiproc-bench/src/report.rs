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

/// Writes `rows` as JSON lines, one object per row.
pub fn write_json(out: &mut impl Write, rows: &[Row]) -> io::Result<()> {
    for row in rows {
        let line = serde_json::to_string(row).map_err(io::Error::other)?;
        writeln!(out, "{line}")?;
    }
    out.flush()
}

/// Writes `rows` of `group` as a table with one line per bench and param:
/// the multiproc median, the Python median, and their ratio
/// (python / multiproc, so above 1 means multiproc is faster or smaller).
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
    let header = ["bench", "param", "multiproc", "python", "ratio", "unit"].map(String::from);
    let mut lines = vec![header];
    let mut notes = Vec::new();
    for (bench, param) in keys {
        let mp = by_key.get(&(bench, param, Impl::Multiproc)).copied();
        let py = by_key.get(&(bench, param, Impl::Python)).copied();
        let cell = |r: Option<&Row>| match r.and_then(|r| r.median) {
            Some(v) => format_value(v),
            None => "n/a".to_string(),
        };
        let ratio = match (mp.and_then(|r| r.median), py.and_then(|r| r.median)) {
            (Some(m), Some(p)) if m > 0.0 => format!("{:.2}x", p / m),
            _ => "n/a".to_string(),
        };
        let unit = mp.or(py).map(|r| r.unit.clone()).unwrap_or_default();
        lines.push([
            bench.to_string(),
            param.to_string(),
            cell(mp),
            cell(py),
            ratio,
            unit,
        ]);
        for (who, r) in [("multiproc", mp), ("python", py)] {
            if let Some(e) = r.and_then(|r| r.error.as_deref()) {
                let note = format!("{who} unavailable: {e}");
                if !notes.contains(&note) {
                    notes.push(note);
                }
            }
        }
    }
    let mut widths = [0usize; 6];
    for line in &lines {
        for (w, c) in widths.iter_mut().zip(line) {
            *w = (*w).max(c.len());
        }
    }
    writeln!(out, "== group {group} ==")?;
    for line in &lines {
        let [bench, param, mp, py, ratio, unit] = line;
        writeln!(
            out,
            "{bench:<w0$}  {param:<w1$}  {mp:>w2$}  {py:>w3$}  {ratio:>w4$}  {unit}",
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3],
            w4 = widths[4],
        )?;
    }
    writeln!(
        out,
        "(medians; ratio = python / multiproc, above 1 means multiproc is better)"
    )?;
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
    }
}
