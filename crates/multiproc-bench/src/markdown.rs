//! The Markdown report (`report.md` of `--report DIR`): a header saying
//! where and how the numbers were made, then one table per group with
//! the ratios and the issues' targets (met or missed).

use std::io::{self, Write};

use crate::report::{self, Entry, Impl, Row};
use crate::targets;

/// Where and how a run was made: the report's header.
#[derive(Debug, Clone, Default)]
pub struct Header {
    /// When the run was made (UTC).
    pub date: String,
    /// The CPU model, from `/proc/cpuinfo`.
    pub cpu: String,
    /// How many cores the run could use.
    pub cores: String,
    /// The operating system (kernel release).
    pub os: String,
    /// The Python interpreter and its version.
    pub python: String,
    /// The multiproc version (and git commit, where known).
    pub multiproc: String,
    /// The exact command that made the report.
    pub command: String,
    /// Whether the run was `--quick`.
    pub quick: bool,
}

/// The groups of `rows`, in the order they first appear, each with its
/// rows.
pub fn by_group(rows: &[Row]) -> Vec<(String, Vec<Row>)> {
    let mut out: Vec<(String, Vec<Row>)> = Vec::new();
    for row in rows {
        match out.iter_mut().find(|(g, _)| *g == row.group) {
            Some((_, list)) => list.push(row.clone()),
            None => out.push((row.group.clone(), vec![row.clone()])),
        }
    }
    out
}

/// A group's heading: `start (issue 2)`.
pub fn group_title(group: &str) -> String {
    match targets::issue_of(group) {
        Some(n) => format!("{group} (issue {n})"),
        None => group.to_string(),
    }
}

/// Writes the report of `rows` (every group of the run) as Markdown.
/// `chart` is the chart's file name, beside the report, if there is one.
pub fn write(
    out: &mut impl Write,
    header: &Header,
    rows: &[Row],
    chart: Option<&str>,
) -> io::Result<()> {
    let groups = by_group(rows);
    writeln!(out, "# multiproc against Python's multiprocessing")?;
    writeln!(out)?;
    let names: Vec<String> = groups.iter().map(|(g, _)| format!("`{g}`")).collect();
    writeln!(
        out,
        "Every group measured multiproc and the same workload in CPython's \
         `multiprocessing` in the same run, on the same machine: compare the \
         ratios, not the absolute numbers across machines or runs."
    )?;
    writeln!(out)?;
    writeln!(out, "| | |")?;
    writeln!(out, "|---|---|")?;
    for (what, value) in [
        ("date", header.date.as_str()),
        ("CPU", header.cpu.as_str()),
        ("cores", header.cores.as_str()),
        ("OS", header.os.as_str()),
        ("Python", header.python.as_str()),
        ("multiproc", header.multiproc.as_str()),
    ] {
        writeln!(out, "| {what} | {} |", cell(value))?;
    }
    writeln!(
        out,
        "| mode | {} |",
        if header.quick {
            "`--quick` (fewer repetitions: a smoke test, not figures to quote)"
        } else {
            "full"
        }
    )?;
    writeln!(out, "| groups | {} |", names.join(", "))?;
    writeln!(out)?;
    writeln!(out, "Made with:")?;
    writeln!(out)?;
    writeln!(out, "```sh\n{}\n```", header.command)?;
    writeln!(out)?;

    let (mut met, mut missed, mut unknown) = (0, 0, 0);
    for (group, rows) in &groups {
        for entry in report::entries(rows) {
            for t in targets::targets_for(group, &entry) {
                match t.met(&entry) {
                    Some(true) => met += 1,
                    Some(false) => missed += 1,
                    None => unknown += 1,
                }
            }
        }
    }
    write!(out, "Targets of the issues: **{met} met, {missed} missed**")?;
    if unknown > 0 {
        write!(out, ", {unknown} not measured")?;
    }
    writeln!(out, ".")?;
    writeln!(out)?;
    if let Some(chart) = chart {
        writeln!(out, "![multiproc against Python, per group]({chart})")?;
        writeln!(out)?;
    }
    writeln!(
        out,
        "How to read the tables: values are medians, with the smallest and \
         largest sample in brackets. Python's samples and every reference's \
         were taken in the same run, in rounds alternating with multiproc's \
         (interleaved), so a ratio compares the same moments. A param ending \
         in `_contended` was measured with a CPU-bound hog process per core \
         running throughout (`--contended`), beside the idle row of the same \
         bench. **ratio** is how many \
         times better multiproc is than Python: python / multiproc for times \
         and sizes (`ms`, `us`, `s`, `KiB`), multiproc / python for rates \
         (units ending in `/s`) and speed-ups (`x`); above 1 means multiproc \
         is better. **vs raw** (or another reference: a floor such as \
         `shm-spin`, the `socketpair` baseline, a Rust peer such as \
         `ipc-channel`, `procspawn` or `rayon`) is how \
         many times *worse* than that reference multiproc is: 1.00x is on \
         par, below 1 beats it. **target** is the issue's target for the row, \
         **met** whether this run meets it."
    )?;
    writeln!(out)?;

    let losses: Vec<String> = groups
        .iter()
        .flat_map(|(group, rows)| {
            report::losses(rows)
                .into_iter()
                .map(move |l| format!("`{group}` {l}"))
        })
        .collect();
    if !losses.is_empty() {
        writeln!(
            out,
            "Where multiproc loses in this run (a median better than ours):"
        )?;
        writeln!(out)?;
        for loss in &losses {
            writeln!(out, "- {}", cell(loss))?;
        }
        writeln!(out)?;
    }

    for (group, rows) in &groups {
        write_group(out, group, rows)?;
    }
    out.flush()
}

/// Writes one group's section: a heading, the table, and why any value
/// is unavailable.
pub fn write_group(out: &mut impl Write, group: &str, rows: &[Row]) -> io::Result<()> {
    writeln!(out, "## {}", group_title(group))?;
    writeln!(out)?;
    let references = report::references(rows);
    let mut header = vec![
        "bench".to_string(),
        "param".to_string(),
        "unit".to_string(),
        "multiproc".to_string(),
        "python".to_string(),
        "ratio".to_string(),
    ];
    for r in &references {
        header.push(r.name());
        header.push(format!("vs {}", r.name()));
    }
    header.extend(["target".to_string(), "met".to_string()]);
    writeln!(out, "| {} |", header.join(" | "))?;
    let align: Vec<&str> = header
        .iter()
        .enumerate()
        .map(|(i, _)| {
            if (3..header.len() - 2).contains(&i) {
                "---:"
            } else {
                "---"
            }
        })
        .collect();
    writeln!(out, "|{}|", align.join("|"))?;
    for entry in report::entries(rows) {
        writeln!(out, "| {} |", line(group, &entry, &references).join(" | "))?;
    }
    writeln!(out)?;
    let notes = report::unavailable_notes(rows);
    for note in &notes {
        writeln!(out, "- {}", cell(note))?;
    }
    if !notes.is_empty() {
        writeln!(out)?;
    }
    Ok(())
}

/// The cells of one bench and param.
fn line(group: &str, entry: &Entry<'_>, references: &[Impl]) -> Vec<String> {
    let mut cells = vec![
        format!("`{}`", entry.bench),
        format!("`{}`", entry.param),
        cell(entry.unit),
        value(entry.get(Impl::Multiproc)),
        value(entry.get(Impl::Python)),
        format!("**{}**", report::ratio_cell(entry.ratio())),
    ];
    for &r in references {
        cells.push(value(entry.get(r)));
        cells.push(match entry.get(r) {
            None => "-".to_string(),
            Some(_) => report::ratio_cell(entry.times_worse_than(r)),
        });
    }
    let targets = targets::targets_for(group, entry);
    if targets.is_empty() {
        cells.extend(["-".to_string(), "-".to_string()]);
    } else {
        let described: Vec<String> = targets.iter().map(|t| t.describe(entry.unit)).collect();
        let verdicts: Vec<&str> = targets
            .iter()
            .map(|t| match t.met(entry) {
                Some(true) => "met",
                Some(false) => "**missed**",
                None => "not measured",
            })
            .collect();
        cells.push(described.join("; "));
        cells.push(verdicts.join("; "));
    }
    cells
}

/// A median for a table cell, large ones shortened: `5663`, `574.6 k`,
/// `130.9 M`; `n/a` if unavailable, `-` if there is no row.
fn value(row: Option<&Row>) -> String {
    // The scale of the median, for the min and max too.
    let scale = match row.and_then(|r| r.median) {
        Some(v) if v.abs() >= 1e6 => Some((1e6, " M")),
        Some(v) if v.abs() >= 1e4 => Some((1e3, " k")),
        _ => None,
    };
    match scale {
        Some((div, suffix)) => {
            let text = report::value_cell_with(row, &|v| report::format_value(v / div));
            format!("{text}{suffix}")
        }
        None => report::value_cell(row),
    }
}

/// `text` made safe for one table cell or list item: no line breaks, no
/// bare `|`.
fn cell(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::report::{Impl, Measurement, add_reference, pair};

    /// A fixed run of two groups: `start` (no reference) and `pipe` (with
    /// the socket pair, and an unavailable Python value).
    pub(crate) fn sample_rows() -> Vec<Row> {
        let mut rows = pair(
            "start",
            vec![
                Measurement::new("start_join", "fork", "ms", Ok(vec![0.4, 0.5, 0.3])),
                Measurement::new("worker_private_memory", "fork", "KiB", Ok(vec![68.0])),
            ],
            vec![
                Measurement::new("start_join", "fork", "ms", Ok(vec![4.0, 4.4])),
                Measurement::new("worker_private_memory", "fork", "KiB", Ok(vec![1512.0])),
            ],
            None,
        );
        let pipe = pair(
            "pipe",
            vec![
                Measurement::new("roundtrip_bytes", "8B", "us", Ok(vec![20.0])),
                Measurement::new("oneway_bytes", "1MiB", "MB/s", Ok(vec![4500.0])),
            ],
            vec![Measurement::new(
                "roundtrip_bytes",
                "8B",
                "us",
                Ok(vec![42.0]),
            )],
            Some("pipe.py timed out | killed"),
        );
        let raw = vec![Measurement::new(
            "roundtrip_bytes",
            "8B",
            "us",
            Ok(vec![18.0]),
        )];
        rows.extend(add_reference("pipe", pipe, Impl::Socketpair, raw));
        rows
    }

    #[test]
    fn markdown_has_a_table_per_group_with_ratios_and_targets() {
        let header = Header {
            date: "2025-01-02 03:04 UTC".into(),
            cpu: "Some CPU".into(),
            cores: "2".into(),
            command: "cargo run --release -p multiproc-bench -- --all --report docs/bench".into(),
            ..Header::default()
        };
        let mut out = Vec::new();
        write(&mut out, &header, &sample_rows(), Some("chart.svg")).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("| CPU | Some CPU |"), "{text}");
        assert!(text.contains("-- --all --report docs/bench\n```"), "{text}");
        assert!(text.contains("![multiproc against Python, per group](chart.svg)"));
        assert!(text.contains("## start (issue 2)") && text.contains("## pipe (issue 3)"));
        // 4.2 / 0.4 = 10.5: at least 10x, met; no bare fork was measured.
        let join = text
            .lines()
            .find(|l| l.starts_with("| `start_join`"))
            .unwrap();
        assert!(
            join.contains("**10.50x**")
                && join.ends_with("| ≥ 10x python; ≤ 2x raw | met; not measured |"),
            "{join}"
        );
        let memory = text
            .lines()
            .find(|l| l.starts_with("| `worker_private_memory`"))
            .unwrap();
        assert!(memory.ends_with("| ≤ 2048 KiB | met |"), "{memory}");
        // The pipe table has socketpair columns; the start table has none.
        assert!(text.contains("| ratio | socketpair | vs socketpair | target | met |"));
        let rt = text
            .lines()
            .find(|l| l.starts_with("| `roundtrip_bytes`"))
            .unwrap();
        // Every value with its range; the issue 20 target against
        // ipc-channel has no row to compare with.
        assert!(
            rt.contains("| 20.00 [20.00-20.00] | 42.00 [42.00-42.00] |"),
            "{rt}"
        );
        assert!(rt.contains("| 18.00 [18.00-18.00] | 1.11x |"), "{rt}");
        assert!(
            rt.ends_with(
                "| ≥ 2.5x python; ≤ 1.5x socketpair; ≥ 30x python; ≤ 1x ipc-channel; \
                 max ≤ 3x median | **missed**; met; **missed**; not measured; met |"
            ),
            "{rt}"
        );
        let ow = text
            .lines()
            .find(|l| l.starts_with("| `oneway_bytes`"))
            .unwrap();
        assert!(ow.contains("| n/a | **n/a** | - | - |"), "{ow}");
        assert!(ow.ends_with("| ≥ 3000 MB/s | met |"), "{ow}");
        assert!(text.contains("- python unavailable: pipe.py timed out \\| killed"));
        assert!(
            text.contains("**5 met, 2 missed**, 2 not measured"),
            "{text}"
        );
        // Where multiproc loses: the socket pair's 18 us beat our 20 us.
        assert!(
            text.contains("- `pipe` roundtrip_bytes 8B: socketpair 1.11x better"),
            "{text}"
        );
    }
}
