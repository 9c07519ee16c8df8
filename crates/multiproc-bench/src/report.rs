//! Measurements, their medians, and the two output formats (a table for
//! people, JSON lines for programs).

use std::io::{self, Write};

use serde::Serialize;

/// Which implementation produced a measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Impl {
    /// This workspace's `multiproc` crate.
    Multiproc,
    /// CPython's `multiprocessing`, run by a script under `python/`.
    Python,
    /// A floor with no library at all (plain std sockets, say): what the
    /// operating system alone costs for the same workload.
    Raw,
    /// Rayon's thread pool running the same Rust code (the pool group's
    /// reference for a CPU-bound speed-up).
    Rayon,
    /// A plain Unix socket pair with no library around it: the blocking
    /// transport multiproc's pipes replaced (and the baseline of the
    /// contended round trips), not a floor of theirs.
    Socketpair,
    /// The `ipc-channel` crate (Servo's), the Rust peer for pipes and
    /// one-way channels.
    IpcChannel,
    /// The `procspawn` crate, the Rust peer for starting a process and for
    /// a pool of processes.
    Procspawn,
    /// Two processes spinning on a word of shared memory each: the floor
    /// of a round trip when both have a core.
    ShmSpin,
}

impl Impl {
    /// The implementation's name, as in the JSON output (`multiproc`,
    /// `python`, `raw`, ...).
    pub fn name(self) -> String {
        match self {
            Impl::Multiproc => "multiproc",
            Impl::Python => "python",
            Impl::Raw => "raw",
            Impl::Rayon => "rayon",
            Impl::Socketpair => "socketpair",
            Impl::IpcChannel => "ipc-channel",
            Impl::Procspawn => "procspawn",
            Impl::ShmSpin => "shm-spin",
        }
        .to_string()
    }

    /// Whether this crate's own code measured it (multiproc, or a floor or
    /// baseline written here): its failure fails the run. Python and the
    /// Rust peers are someone else's.
    pub fn is_ours(self) -> bool {
        matches!(
            self,
            Impl::Multiproc | Impl::Raw | Impl::Socketpair | Impl::ShmSpin
        )
    }

    /// Whether this is one of the two implementations compared by the
    /// ratio (multiproc, python) rather than a reference such as a raw
    /// floor.
    pub fn is_compared(self) -> bool {
        self == Impl::Multiproc || self == Impl::Python
    }
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
pub fn add_raw(group: &str, rows: Vec<Row>, raw: Vec<Measurement>) -> Vec<Row> {
    add_reference(group, rows, Impl::Raw, raw)
}

/// Adds the measurements of a reference implementation `which` (a floor,
/// a Rust peer) to `rows`, as [`add_raw`] does for [`Impl::Raw`].
pub fn add_reference(
    group: &str,
    mut rows: Vec<Row>,
    which: Impl,
    measured: Vec<Measurement>,
) -> Vec<Row> {
    for m in measured {
        let at = rows
            .iter()
            .rposition(|r| r.bench == m.bench && r.param == m.param)
            .map_or(rows.len(), |i| i + 1);
        rows.insert(at, Row::from_measurement(group, which, m));
    }
    rows
}

/// Whether a larger value is better in `unit`: rates (`MB/s`, `msg/s`,
/// any unit ending in `/s`) and speed-ups (`x`) are; times and sizes are
/// not.
pub fn higher_is_better(unit: &str) -> bool {
    unit.ends_with("/s") || unit == "x"
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

/// The rows of one bench and param, one per implementation.
#[derive(Debug, Clone)]
pub struct Entry<'a> {
    /// Benchmark name.
    pub bench: &'a str,
    /// Parameter.
    pub param: &'a str,
    /// Unit, taken from the first row.
    pub unit: &'a str,
    /// The rows, in their order (the last one wins for an implementation
    /// measured twice).
    pub rows: Vec<&'a Row>,
}

impl<'a> Entry<'a> {
    /// The row of implementation `which`, if any.
    pub fn get(&self, which: Impl) -> Option<&'a Row> {
        self.rows
            .iter()
            .rev()
            .find(|r| r.implementation == which)
            .copied()
    }

    /// The median of implementation `which`, if measured.
    pub fn median(&self, which: Impl) -> Option<f64> {
        self.get(which).and_then(|r| r.median)
    }

    /// How many times better multiproc is than Python ([`times_better`]).
    pub fn ratio(&self) -> Option<f64> {
        let (m, p) = (self.median(Impl::Multiproc)?, self.median(Impl::Python)?);
        times_better(self.unit, m, p)
    }

    /// How many times *worse* multiproc is than `reference` (a raw floor,
    /// say): 1 is on par, above 1 is worse.
    pub fn times_worse_than(&self, reference: Impl) -> Option<f64> {
        let (m, r) = (self.median(Impl::Multiproc)?, self.median(reference)?);
        times_better(self.unit, r, m)
    }
}

/// Groups `rows` by bench and param, in the order they first appear.
pub fn entries(rows: &[Row]) -> Vec<Entry<'_>> {
    let mut out: Vec<Entry<'_>> = Vec::new();
    for row in rows {
        match out
            .iter_mut()
            .find(|e| e.bench == row.bench && e.param == row.param)
        {
            Some(entry) => entry.rows.push(row),
            None => out.push(Entry {
                bench: &row.bench,
                param: &row.param,
                unit: &row.unit,
                rows: vec![row],
            }),
        }
    }
    out
}

/// The reference implementations in `rows` (all but multiproc and
/// Python: raw floors and the like), in the order they first appear.
pub fn references(rows: &[Row]) -> Vec<Impl> {
    let mut out = Vec::new();
    for row in rows {
        if !row.implementation.is_compared() && !out.contains(&row.implementation) {
            out.push(row.implementation);
        }
    }
    out
}

/// The median of `row` for a table cell, with its smallest and largest
/// sample: `3.935 [3.100-9.200]` (`format` writes each number); `n/a` if
/// unavailable, `-` if there is no row.
pub fn value_cell_with(row: Option<&Row>, format: &dyn Fn(f64) -> String) -> String {
    match row {
        None => "-".to_string(),
        Some(r) => match (r.median, r.min, r.max) {
            (Some(m), Some(lo), Some(hi)) => {
                format!("{} [{}-{}]", format(m), format(lo), format(hi))
            }
            (Some(m), _, _) => format(m),
            (None, _, _) => "n/a".to_string(),
        },
    }
}

/// [`value_cell_with`] [`format_value`].
pub fn value_cell(row: Option<&Row>) -> String {
    value_cell_with(row, &format_value)
}

/// A ratio for a table cell, `2.50x`; `n/a` if there is none.
pub fn ratio_cell(ratio: Option<f64>) -> String {
    ratio.map_or_else(|| "n/a".to_string(), |x| format!("{x:.2}x"))
}

/// Where multiproc loses in `rows`: one line per bench, param and
/// implementation whose median beats multiproc's (Python, or a reference
/// more than 1.00x better), `roundtrip_bytes 8B: socketpair 1.31x better`.
pub fn losses(rows: &[Row]) -> Vec<String> {
    let mut out = Vec::new();
    for entry in entries(rows) {
        let Some(ours) = entry.median(Impl::Multiproc) else {
            continue;
        };
        let mut seen = Vec::new();
        for row in entry.rows.iter().rev() {
            let which = row.implementation;
            if which == Impl::Multiproc || seen.contains(&which) {
                continue;
            }
            seen.push(which);
            let Some(theirs) = row.median else { continue };
            if let Some(x) = times_better(entry.unit, theirs, ours).filter(|&x| x > 1.0) {
                out.push(format!(
                    "{} {}: {} {x:.2}x better",
                    entry.bench,
                    entry.param,
                    which.name()
                ));
            }
        }
    }
    out
}

/// The `who unavailable: why` notes of `rows`, without repeats.
pub fn unavailable_notes(rows: &[Row]) -> Vec<String> {
    let mut notes = Vec::new();
    for row in rows {
        if let Some(e) = row.error.as_deref() {
            let note = format!("{} unavailable: {e}", row.implementation.name());
            if !notes.contains(&note) {
                notes.push(note);
            }
        }
    }
    notes
}

/// Writes `rows` of `group` as a table with one line per bench and param:
/// the multiproc median, the Python median, and `ratio`, how many times
/// better multiproc is than Python ([`times_better`]: python / multiproc
/// for times and sizes, multiproc / python for rates; above 1 means
/// multiproc is better). For each reference implementation in the group
/// (such as [`Impl::Raw`]) two more columns follow: its median and
/// `vs <name>`, how many times worse than it multiproc is (multiproc / raw
/// for times, raw / multiproc for rates; 1.00x means on par with it).
pub fn write_table(out: &mut impl Write, group: &str, rows: &[Row]) -> io::Result<()> {
    let references = references(rows);
    let mut header: Vec<String> = ["bench", "param", "multiproc", "python", "ratio"]
        .map(String::from)
        .to_vec();
    for r in &references {
        header.push(r.name());
        header.push(format!("vs {}", r.name()));
    }
    header.push("unit".to_string());
    let mut lines: Vec<Vec<String>> = vec![header];
    for entry in entries(rows) {
        let mut line = vec![
            entry.bench.to_string(),
            entry.param.to_string(),
            value_cell(entry.get(Impl::Multiproc)),
            value_cell(entry.get(Impl::Python)),
            ratio_cell(entry.ratio()),
        ];
        for &r in &references {
            line.push(value_cell(entry.get(r)));
            line.push(match entry.get(r) {
                None => "-".to_string(),
                Some(_) => ratio_cell(entry.times_worse_than(r)),
            });
        }
        line.push(entry.unit.to_string());
        lines.push(line);
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
    writeln!(out, "({RATIO_NOTE})")?;
    if !references.is_empty() {
        writeln!(out, "({VS_NOTE})")?;
    }
    for note in unavailable_notes(rows) {
        writeln!(out, "note: {note}")?;
    }
    for loss in losses(rows) {
        writeln!(out, "multiproc loses: {loss}")?;
    }
    writeln!(out)?;
    out.flush()
}

/// What `ratio` means, for the readers of a table.
pub const RATIO_NOTE: &str = "median [min-max] of the samples; ratio (of the medians) = how many \
     times better multiproc is than python:\n python / multiproc for times and sizes, multiproc / python for rates (units \
     ending in /s) and speed-ups (x);\n above 1 means multiproc is better";

/// What `vs raw` (and `vs` any reference) means.
pub const VS_NOTE: &str = "vs X = how many times worse multiproc is than reference X (a floor, \
     a baseline or a Rust peer): multiproc / raw for times,\n raw / multiproc for rates; 1.00x means on \
     par with it";

/// Formats a median with about four significant digits.
pub fn format_value(v: f64) -> String {
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
