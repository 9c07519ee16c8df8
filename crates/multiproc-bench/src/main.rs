//! Benchmarks of multiproc against CPython's `multiprocessing`, both measured
//! in the same run. See this crate's README.md.
//!
//! ```text
//! cargo run --release -p multiproc-bench -- [GROUP...|--all] [--idle] [--contended] [--quick] [--json] [--report DIR]
//! ```

use std::io;
use std::path::PathBuf;
use std::process::ExitCode;

mod chart;
mod groups;
mod hogs;
mod markdown;
mod measure;
mod python;
mod report;
mod report_dir;
mod rig;
mod targets;

use groups::Options;
use report::Row;

/// A benchmark group: a name on the command line and the function that runs
/// it.
struct Group {
    name: &'static str,
    about: &'static str,
    run: fn(&Options) -> Vec<Row>,
    /// Whether the group also runs in the contended mode (its waiting
    /// code is what contention tests).
    contended: bool,
}

/// Every group, in the order `all` runs them. A new group is one file under
/// `src/groups/` (plus its script under `python/`) and one line here.
const GROUPS: &[Group] = &[
    Group {
        name: groups::start::NAME,
        about: "start+join latency and idle worker memory, per start method",
        run: groups::start::run,
        contended: false,
    },
    Group {
        name: groups::pipe::NAME,
        about: "pipe round-trip latency and one-way throughput, with a raw socket floor",
        run: groups::pipe::run,
        contended: true,
    },
    Group {
        name: groups::queue::NAME,
        about: "Queue/SimpleQueue throughput, 1 and 2 producers and consumers",
        run: groups::queue::run,
        contended: true,
    },
    Group {
        name: groups::sync::NAME,
        about: "Lock, locked Value, Event ping-pong and Barrier rates, 1 and 2 processes",
        run: groups::sync::run,
        contended: true,
    },
    Group {
        name: groups::manager::NAME,
        about: "Manager dict set/get from 1 and 2 clients, list append, queue, start-up",
        run: groups::manager::run,
        contended: true,
    },
    Group {
        name: groups::pickle::NAME,
        about: "PickleConnection against CPython: a dict round trip from a Python client, decoding",
        run: groups::pickle::run,
        contended: false,
    },
    Group {
        name: groups::pool::NAME,
        about: "Pool map (1M trivial items, chunk size 1), CPU-bound speed-up vs rayon, start-up",
        run: groups::pool::run,
        contended: false,
    },
    #[cfg(feature = "cluster")]
    Group {
        name: groups::cluster::NAME,
        about: "cluster pool on redis-server vs Celery: map, submit latency, agent SIGKILL recovery",
        run: groups::cluster::run,
        contended: false,
    },
];

/// What the command line asked for.
#[derive(Debug)]
struct Cli {
    groups: Vec<&'static Group>,
    quick: bool,
    json: bool,
    /// Where to write the report files (`--report DIR`).
    report: Option<PathBuf>,
    /// Run the groups on the idle machine.
    idle: bool,
    /// Run the groups that have a contended mode with a hog per core.
    contended: bool,
}

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

/// The one-line synopsis, also shown after a usage error.
const USAGE_LINE: &str = "usage: multiproc-bench [GROUP...|--all] [--idle] [--contended] [--quick] \
     [--json] [--report DIR]";

/// The `--help` text.
fn usage() -> String {
    let mut text = format!(
        "Benchmarks multiproc against CPython's multiprocessing, in the same run.\n\n\
         {USAGE_LINE}\n\n\
         options:\n\
         \x20 --all         every group (the default when none is named), idle and\n\
         \x20               contended unless --idle or --contended says otherwise\n\
         \x20 --idle        the idle runs (the default when groups are named)\n\
         \x20 --contended   the contended runs: a CPU-bound hog process per core runs\n\
         \x20               throughout; params get the suffix _contended (groups\n\
         \x20               pipe, queue, sync, manager; the others have none)\n\
         \x20 --quick       fewer repetitions (about 30 s per group)\n\
         \x20 --json        one JSON object per line instead of a table\n\
         \x20 --report DIR  also write DIR/report.md (tables, ratios, targets),\n\
         \x20               DIR/report.json (as --json) and DIR/chart.svg\n\
         \x20 -h, --help    print this help\n\n\
         groups (default: all):\n"
    );
    for g in GROUPS {
        text.push_str(&format!("  {:<12}{}\n", g.name, g.about));
    }
    text.push_str(
        "\nThe Python side runs with $PYTHON (default python3). Reported values are \
         medians;\nratio = how many times better multiproc is than python (python / multiproc \
         for times\nand sizes, multiproc / python for rates), so above 1 means multiproc is \
         better.\n",
    );
    text
}

/// `Ok(None)` means `--help` was asked for.
fn parse(args: impl IntoIterator<Item = String>) -> Result<Option<Cli>, String> {
    let mut cli = Cli {
        groups: Vec::new(),
        quick: false,
        json: false,
        report: None,
        idle: false,
        contended: false,
    };
    let mut all = false;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "--all" => all = true,
            "--quick" => cli.quick = true,
            "--json" => cli.json = true,
            "--idle" => cli.idle = true,
            "--contended" => cli.contended = true,
            "--report" => match args.next() {
                Some(dir) if !dir.is_empty() && !dir.starts_with('-') => {
                    cli.report = Some(PathBuf::from(dir));
                }
                _ => return Err("--report needs a directory".to_string()),
            },
            flag if flag.starts_with('-') => return Err(format!("unknown option `{flag}`")),
            "cluster" if cfg!(not(feature = "cluster")) => {
                return Err("group `cluster` needs the feature of the same name: \
                     cargo run --release -p multiproc-bench --features cluster -- cluster"
                    .to_string());
            }
            name => {
                let group = GROUPS.iter().find(|g| g.name == name).ok_or_else(|| {
                    let known: Vec<&str> = GROUPS.iter().map(|g| g.name).collect();
                    format!(
                        "unknown group `{name}` (known groups: {})",
                        known.join(", ")
                    )
                })?;
                if !cli.groups.iter().any(|g| g.name == group.name) {
                    cli.groups.push(group);
                }
            }
        }
    }
    if all && !cli.groups.is_empty() {
        return Err("--all runs every group: name no group with it".to_string());
    }
    if cli.groups.is_empty() {
        cli.groups = GROUPS.iter().collect();
        // Every group: both modes, unless one was asked for.
        if !cli.idle && !cli.contended {
            cli.idle = true;
            cli.contended = true;
        }
    } else if !cli.idle && !cli.contended {
        cli.idle = true;
    }
    Ok(Some(cli))
}

fn main() -> ExitCode {
    // procspawn (the Rust peer of `start` and `pool`) runs its children's
    // jobs from here, in a re-executed copy of this program; elsewhere it
    // does nothing.
    procspawn::init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cli = match parse(args.iter().cloned()) {
        Ok(Some(cli)) => cli,
        Ok(None) => {
            print!("{}", usage());
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("error: {e}\n{USAGE_LINE} (see --help)");
            return ExitCode::from(2);
        }
    };
    let opts = Options {
        quick: cli.quick,
        verbose: true,
        python: python::Python::from_env(),
        contended: false,
    };
    let header = cli
        .report
        .as_ref()
        .map(|_| report_dir::header(&opts.python, &args, cli.quick));
    let mut all_rows = Vec::new();
    let mut multiproc_failed = false;
    let mut runs: Vec<(&Group, bool)> = Vec::new();
    for &group in &cli.groups {
        if cli.idle {
            runs.push((group, false));
        }
        if cli.contended && group.contended {
            runs.push((group, true));
        } else if cli.contended && !cli.idle {
            eprintln!("[{}] has no contended mode: skipped", group.name);
        }
    }
    for (group, contended) in runs {
        let rows = if contended {
            let opts = Options {
                contended: true,
                ..opts.clone()
            };
            match run_contended(group, &opts) {
                Ok(rows) => rows,
                Err(e) => {
                    eprintln!("error: [{}] contended run: {e}", group.name);
                    multiproc_failed = true;
                    continue;
                }
            }
        } else {
            (group.run)(&opts)
        };
        // The raw floors are measured by our code too: their failure counts.
        multiproc_failed |= rows
            .iter()
            .any(|r| r.implementation.is_ours() && !r.is_available());
        let mut out = io::stdout().lock();
        let written = if cli.json {
            report::write_json(&mut out, &rows)
        } else {
            let title = if contended {
                format!("{} (contended)", group.name)
            } else {
                group.name.to_string()
            };
            report::write_table(&mut out, &title, &rows)
        };
        if let Err(e) = written {
            // A closed pipe (`| head`) ends the run quietly.
            if e.kind() != io::ErrorKind::BrokenPipe {
                eprintln!("error: writing the results failed: {e}");
            }
            return ExitCode::FAILURE;
        }
        if let (Some(dir), Some(header)) = (&cli.report, &header) {
            // Rewritten after every group: a run cut short leaves a report
            // of the groups that finished.
            all_rows.extend(rows);
            if let Err(e) = report_dir::write(dir, header, &all_rows) {
                eprintln!("error: writing the report failed: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    if let Some(dir) = &cli.report {
        eprintln!(
            "report written to {}",
            dir.join(report_dir::MARKDOWN).display()
        );
    }
    if multiproc_failed {
        eprintln!("error: some multiproc measurements failed (see their errors)");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// The param suffix of the contended runs' rows (issue 20).
const CONTENDED_SUFFIX: &str = "_contended";

/// Runs `group` with a CPU-bound hog per core ([`hogs::Hogs`]) for its
/// whole run (the Python side too), and suffixes every row's param with
/// [`CONTENDED_SUFFIX`].
fn run_contended(group: &Group, opts: &Options) -> Result<Vec<Row>, String> {
    let hogs = hogs::Hogs::start(multiproc::cpu_count())?;
    opts.progress(
        group.name,
        &format!("contended: {} hog processes running", hogs.len()),
    );
    let rows = (group.run)(opts);
    drop(hogs);
    Ok(rows
        .into_iter()
        .map(|mut row| {
            row.param.push_str(CONTENDED_SUFFIX);
            row
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn no_group_means_all() {
        let cli = parse(args(&["--quick"])).unwrap().unwrap();
        assert_eq!(cli.groups.len(), GROUPS.len());
        assert!(cli.quick && !cli.json);
        assert!(cli.idle && cli.contended, "every group runs in both modes");
    }

    #[test]
    fn modes_are_chosen() {
        let named = parse(args(&["pipe"])).unwrap().unwrap();
        assert!(named.idle && !named.contended);
        let contended = parse(args(&["pipe", "--contended"])).unwrap().unwrap();
        assert!(!contended.idle && contended.contended);
        let all = parse(args(&["--all", "--idle"])).unwrap().unwrap();
        assert!(all.idle && !all.contended);
        let both = parse(args(&["sync", "--idle", "--contended"]))
            .unwrap()
            .unwrap();
        assert!(both.idle && both.contended);
    }

    #[test]
    fn unknown_names_are_errors() {
        assert!(
            parse(args(&["nope"]))
                .unwrap_err()
                .contains("unknown group")
        );
        assert!(
            parse(args(&["--fast"]))
                .unwrap_err()
                .contains("unknown option")
        );
        assert!(parse(args(&["start", "--help"])).unwrap().is_none());
    }

    #[test]
    fn all_and_report_are_parsed() {
        let cli = parse(args(&["--all", "--report", "out/dir"]))
            .unwrap()
            .unwrap();
        assert_eq!(cli.groups.len(), GROUPS.len());
        assert_eq!(cli.report, Some(PathBuf::from("out/dir")));
        assert!(
            parse(args(&["--report"]))
                .unwrap_err()
                .contains("directory")
        );
        assert!(parse(args(&["--report", "--quick"])).is_err());
        assert!(
            parse(args(&["start", "--all"]))
                .unwrap_err()
                .contains("--all")
        );
    }

    #[test]
    fn the_cluster_group_needs_its_feature() {
        let parsed = parse(args(&["cluster"]));
        if cfg!(feature = "cluster") {
            let cli = parsed.unwrap().unwrap();
            assert_eq!(cli.groups[0].name, "cluster");
        } else {
            assert!(parsed.unwrap_err().contains("--features cluster"));
        }
    }

    #[test]
    fn groups_are_deduplicated() {
        let cli = parse(args(&["start", "start", "--json"])).unwrap().unwrap();
        assert_eq!(cli.groups.len(), 1);
        assert!(cli.json);
    }
}
