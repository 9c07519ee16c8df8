//! The speed targets that the issues set for each group (issue 2 `start`,
//! 3 `pipe`, 4 `queue`, 5 `sync`, 6 `pool`, 7 `manager`, 16 `cluster`), so
//! that the report can say which are met. The bench and param names are the JSON
//! names the issues define.

use crate::report::{Entry, Impl, higher_is_better};

/// What a target asks of one bench and param.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Goal {
    /// Multiproc at least this many times better than Python (the ratio).
    Ratio(f64),
    /// Multiproc's median at least this good, in the row's unit: at least
    /// this much for rates, at most this much for times and sizes.
    Value(f64),
    /// Multiproc at most this many times worse than the reference
    /// implementation named (as in JSON: `raw`, ...).
    Within(&'static str, f64),
    /// Multiproc's median within this many percent of the reference
    /// implementation named, or better than it.
    WithinPercent(&'static str, f64),
    /// Multiproc's worst sample at most this many times its median: the
    /// slowest sample for times, the lowest for rates.
    Spread(f64),
}

/// One target of an issue.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Target {
    /// The issue that sets it.
    pub issue: u32,
    /// Benchmark group.
    pub group: &'static str,
    /// Benchmark name.
    pub bench: &'static str,
    /// Parameter; `None` for every parameter of the bench.
    pub param: Option<&'static str>,
    /// What is asked.
    pub goal: Goal,
}

/// The issue that defines each group.
pub const ISSUES: &[(&str, u32)] = &[
    ("start", 2),
    ("pipe", 3),
    ("queue", 4),
    ("sync", 5),
    ("pool", 6),
    ("manager", 7),
    ("pickle", 19),
    ("cluster", 16),
];

/// Shorthand for the table below.
const fn t(
    issue: u32,
    group: &'static str,
    bench: &'static str,
    param: Option<&'static str>,
    goal: Goal,
) -> Target {
    Target {
        issue,
        group,
        bench,
        param,
        goal,
    }
}

/// Every target the issues set, as the issues word them.
pub const TARGETS: &[Target] = &[
    // Issue 2: start+join at least 10x / 15x / 40x faster than Python's
    // same method; idle worker private memory under 2 MiB for every method.
    t(2, "start", "start_join", Some("fork"), Goal::Ratio(10.0)),
    t(
        2,
        "start",
        "start_join",
        Some("forkserver"),
        Goal::Ratio(15.0),
    ),
    t(2, "start", "start_join", Some("spawn"), Goal::Ratio(40.0)),
    t(
        2,
        "start",
        "worker_private_memory",
        None,
        Goal::Value(2048.0),
    ),
    // Issue 3: 8-byte round trips (bytes and typed) at least 2.5x lower
    // latency than Python, and within 1.5x of a plain socketpair (the
    // `socketpair` row, formerly `raw`); one way,
    // at least 5x Python's messages/s at 8 B and 3 GB/s at 1 MiB.
    t(3, "pipe", "roundtrip_bytes", Some("8B"), Goal::Ratio(2.5)),
    t(
        3,
        "pipe",
        "roundtrip_bytes",
        Some("8B"),
        Goal::Within("socketpair", 1.5),
    ),
    t(3, "pipe", "roundtrip_typed", Some("8B"), Goal::Ratio(2.5)),
    t(3, "pipe", "oneway_bytes_msgs", Some("8B"), Goal::Ratio(5.0)),
    t(3, "pipe", "oneway_bytes", Some("1MiB"), Goal::Value(3000.0)),
    // Issue 4: 8-byte messages at least 100x Python's messages/s, 1p1c and
    // 2p2c; 1 KiB, 64 KiB and 1 MiB at least 5x Python's MB/s, and at
    // least 2 GB/s at 1 MiB.
    t(
        4,
        "queue",
        "queue_1p1c_msgs",
        Some("8B"),
        Goal::Ratio(100.0),
    ),
    t(
        4,
        "queue",
        "queue_2p2c_msgs",
        Some("8B"),
        Goal::Ratio(100.0),
    ),
    // Issue 14: no speed lost to the soundness work: queue 8B 1p1c and
    // 2p2c at least 150x Python (issue 15 too).
    t(
        14,
        "queue",
        "queue_1p1c_msgs",
        Some("8B"),
        Goal::Ratio(150.0),
    ),
    t(
        14,
        "queue",
        "queue_2p2c_msgs",
        Some("8B"),
        Goal::Ratio(150.0),
    ),
    // Issue 15: an acknowledged get at least 50x Python's plain get.
    t(15, "queue", "queue_1p1c_ack", Some("8B"), Goal::Ratio(50.0)),
    // Issue 17: a consumer awaiting `get_async` on tokio's current_thread
    // runtime at least 50x Python's plain get.
    t(
        17,
        "queue",
        "queue_1p1c_async",
        Some("8B"),
        Goal::Ratio(50.0),
    ),
    t(4, "queue", "queue_1p1c", Some("1KiB"), Goal::Ratio(5.0)),
    t(4, "queue", "queue_1p1c", Some("64KiB"), Goal::Ratio(5.0)),
    t(4, "queue", "queue_1p1c", Some("1MiB"), Goal::Ratio(5.0)),
    t(4, "queue", "queue_1p1c", Some("1MiB"), Goal::Value(2000.0)),
    // Issue 5: Lock at least 4x, locked Value increments 20x, Event
    // ping-pong and Barrier cycles 5x Python.
    t(5, "sync", "lock_uncontended", None, Goal::Ratio(4.0)),
    t(5, "sync", "value_incr_locked_2p", None, Goal::Ratio(20.0)),
    t(5, "sync", "event_pingpong_2p", None, Goal::Ratio(5.0)),
    t(5, "sync", "barrier_2p", None, Goal::Ratio(5.0)),
    // Issue 14: the soundness work keeps the lock at least 10x and locked
    // Value increments at least 40x Python, and the pipe round trip at
    // least 30x.
    t(14, "sync", "lock_uncontended", None, Goal::Ratio(10.0)),
    t(14, "sync", "value_incr_locked_2p", None, Goal::Ratio(40.0)),
    t(14, "pipe", "roundtrip_bytes", Some("8B"), Goal::Ratio(30.0)),
    // Issue 19: a Python client's dict round trip through multiproc's
    // pickle server at least 2x faster than through Python's. (Decoding:
    // reported, no target.)
    t(
        19,
        "pickle",
        "pickle_roundtrip",
        Some("dict_small"),
        Goal::Ratio(2.0),
    ),
    // Issue 6: map of a trivial function over 1M integers at least 10x
    // faster than Python, default chunking and chunk size 1; a CPU-bound
    // job's speed-up within 10% of rayon's. (Pool start-up: no target.)
    t(
        6,
        "pool",
        "map_trivial_1m",
        Some("default"),
        Goal::Ratio(10.0),
    ),
    t(
        6,
        "pool",
        "map_trivial_1m",
        Some("chunksize1"),
        Goal::Ratio(10.0),
    ),
    t(
        6,
        "pool",
        "cpu_bound_speedup",
        Some("all_cores"),
        Goal::WithinPercent("rayon", 10.0),
    ),
    // Issue 7: dict set and get from 1 and 2 clients at least 10x Python.
    // (List append, manager queue and start-up: no target.)
    t(7, "manager", "dict_set", None, Goal::Ratio(10.0)),
    t(7, "manager", "dict_get", None, Goal::Ratio(10.0)),
    // Issue 16: a cluster map of 100k trivial items over 2 agents at least
    // 500k items/s and 50x Celery (a group); with chunk size 1 at least
    // 20k items/s; one submit+get on idle agents at most 1 ms; a SIGKILLed
    // agent's last task done elsewhere within 1.5 s (min_idle 250 ms), no
    // task lost.
    t(
        16,
        "cluster",
        "cluster_map",
        Some("trivial_100k"),
        Goal::Value(500_000.0),
    ),
    t(
        16,
        "cluster",
        "cluster_map",
        Some("trivial_100k"),
        Goal::Ratio(50.0),
    ),
    t(
        16,
        "cluster",
        "cluster_map",
        Some("chunksize1"),
        Goal::Value(20_000.0),
    ),
    t(
        16,
        "cluster",
        "cluster_submit_latency",
        Some("idle"),
        Goal::Value(1.0),
    ),
    t(
        16,
        "cluster",
        "cluster_recovery",
        Some("agent_sigkill"),
        Goal::Value(1500.0),
    ),
    t(
        16,
        "cluster",
        "cluster_recovery",
        Some("lost"),
        Goal::Value(0.0),
    ),
    // Issue 16: the named objects within 1.5x of a raw redis-crate floor
    // doing the same commands: dict set, get and update of 1000 pairs, an
    // uncontended lock, a queue round trip.
    t(
        16,
        "cluster",
        "cluster_dict",
        None,
        Goal::Within("raw", 1.5),
    ),
    t(
        16,
        "cluster",
        "cluster_lock",
        Some("uncontended"),
        Goal::Within("raw", 1.5),
    ),
    t(
        16,
        "cluster",
        "cluster_queue",
        Some("roundtrip"),
        Goal::Within("raw", 1.5),
    ),
    // Issue 20: on a busy machine (the `_contended` rows, a hog per core)
    // at least as good as the plain socket pair (the queue: Python's
    // Queue) measured in the same run; idle, a round trip at least as good
    // as the best Rust peer's.
    t(
        20,
        "pipe",
        "roundtrip_bytes",
        Some("8B"),
        Goal::Within("ipc-channel", 1.0),
    ),
    // ... and predictable: its slowest batch within 3x of the median.
    t(20, "pipe", "roundtrip_bytes", Some("8B"), Goal::Spread(3.0)),
    t(
        20,
        "pipe",
        "roundtrip_bytes",
        Some("8B_contended"),
        Goal::Within("socketpair", 1.0),
    ),
    t(
        20,
        "queue",
        "queue_1p1c_msgs",
        Some("8B_contended"),
        Goal::Ratio(1.0),
    ),
    t(
        20,
        "queue",
        "queue_2p2c_msgs",
        Some("8B_contended"),
        Goal::Ratio(1.0),
    ),
    t(
        20,
        "sync",
        "event_pingpong_2p",
        Some("-_contended"),
        Goal::Within("socketpair", 1.0),
    ),
    t(
        20,
        "manager",
        "dict_get",
        Some("1client_contended"),
        Goal::Within("socketpair", 1.0),
    ),
    // Issue 20: a fork start within 2x of a bare fork+exit+wait (the
    // `raw` row), and a plain-data map of 1M items in at most 5 ms.
    t(
        20,
        "start",
        "start_join",
        Some("fork"),
        Goal::Within("raw", 2.0),
    ),
    t(
        20,
        "pool",
        "map_trivial_1m",
        Some("pod"),
        Goal::Value(0.005),
    ),
];

/// The suffix of a busy machine's params.
const CONTENDED: &str = "_contended";

/// The issue that defines `group`, if known.
pub fn issue_of(group: &str) -> Option<u32> {
    ISSUES.iter().find(|(g, _)| *g == group).map(|&(_, n)| n)
}

/// The targets of `entry` (one bench and param) in `group`.
pub fn targets_for(group: &str, entry: &Entry<'_>) -> Vec<&'static Target> {
    TARGETS
        .iter()
        .filter(|t| {
            t.group == group
                && t.bench == entry.bench
                && match t.param {
                    Some(p) => p == entry.param,
                    // The issues set these for the idle machine: a busy
                    // machine's rows have their own targets (issue 20).
                    None => !entry.param.ends_with(CONTENDED),
                }
        })
        .collect()
}

/// The implementation named `name` among `entry`'s rows.
fn reference(entry: &Entry<'_>, name: &str) -> Option<Impl> {
    entry
        .rows
        .iter()
        .map(|r| r.implementation)
        .find(|i| i.name() == name)
}

impl Target {
    /// Whether `entry` meets the target; `None` if a median it needs is
    /// unavailable.
    pub fn met(&self, entry: &Entry<'_>) -> Option<bool> {
        let higher = higher_is_better(entry.unit);
        match self.goal {
            Goal::Ratio(x) => entry.ratio().map(|r| r >= x),
            Goal::Value(v) => entry
                .median(Impl::Multiproc)
                .map(|m| if higher { m >= v } else { m <= v }),
            Goal::Within(name, x) => entry
                .times_worse_than(reference(entry, name)?)
                .map(|w| w <= x),
            Goal::WithinPercent(name, pct) => {
                let m = entry.median(Impl::Multiproc)?;
                let r = entry.median(reference(entry, name)?)?;
                Some(if higher {
                    m >= r * (1.0 - pct / 100.0)
                } else {
                    m <= r * (1.0 + pct / 100.0)
                })
            }
            Goal::Spread(x) => {
                let row = entry.get(Impl::Multiproc)?;
                let m = row.median?;
                Some(if higher {
                    row.min? * x >= m
                } else {
                    row.max? <= m * x
                })
            }
        }
    }

    /// The target in words, for a table cell: `≥ 10x python`,
    /// `≤ 2048 KiB`, `≤ 1.5x raw`, `within 10% of rayon`.
    pub fn describe(&self, unit: &str) -> String {
        let at_least = if higher_is_better(unit) { "≥" } else { "≤" };
        match self.goal {
            Goal::Ratio(x) => format!("≥ {}x python", number(x)),
            Goal::Value(v) => format!("{at_least} {} {unit}", number(v)),
            Goal::Within(name, x) => format!("≤ {}x {name}", number(x)),
            Goal::WithinPercent(name, pct) => format!("within {}% of {name}", number(pct)),
            Goal::Spread(x) if higher_is_better(unit) => {
                format!("min ≥ median / {}", number(x))
            }
            Goal::Spread(x) => format!("max ≤ {}x median", number(x)),
        }
    }

    /// The ratio to Python that the target asks for, if it asks for one
    /// (for the chart).
    pub fn ratio(&self) -> Option<f64> {
        match self.goal {
            Goal::Ratio(x) => Some(x),
            _ => None,
        }
    }
}

/// `x` without trailing zeros: `10`, `2.5`, `0.25`, `0.005` (two
/// decimals, or more for a number below 0.1, so that a small target is
/// not printed rounded: a 5 ms target is `0.005 s`, not `0.01 s`).
pub fn number(x: f64) -> String {
    let a = x.abs();
    let decimals = if a > 0.0 && a < 0.1 {
        // Two significant digits.
        (-a.log10()).ceil() as usize + 1
    } else {
        2
    };
    let text = format!("{x:.decimals$}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    text.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Impl, Measurement, add_reference, entries, pair};

    #[test]
    fn numbers_keep_their_significant_digits() {
        assert_eq!(number(10.0), "10");
        assert_eq!(number(2.5), "2.5");
        assert_eq!(number(0.25), "0.25");
        assert_eq!(number(0.005), "0.005");
        assert_eq!(number(0.0125), "0.013");
        assert_eq!(number(0.0), "0");
        assert_eq!(number(1500.0), "1500");
    }

    #[test]
    fn every_target_names_a_known_group() {
        // A group's targets come from the issue that made it, or from a
        // later issue that raised them (issue 14 after the soundness work).
        for t in TARGETS {
            let made = issue_of(t.group).unwrap_or_else(|| panic!("{t:?}"));
            assert!(t.issue >= made, "{t:?}");
        }
    }

    #[test]
    fn targets_are_checked_the_right_way_round() {
        let mp = vec![
            Measurement::new("roundtrip_bytes", "8B", "us", Ok(vec![20.0])),
            Measurement::new("oneway_bytes", "1MiB", "MB/s", Ok(vec![2500.0])),
        ];
        let py = vec![
            Measurement::new("roundtrip_bytes", "8B", "us", Ok(vec![60.0])),
            Measurement::new("oneway_bytes", "1MiB", "MB/s", Ok(vec![2000.0])),
        ];
        let raw = vec![Measurement::new(
            "roundtrip_bytes",
            "8B",
            "us",
            Ok(vec![10.0]),
        )];
        let rows = add_reference("pipe", pair("pipe", mp, py, None), Impl::Socketpair, raw);
        let all = entries(&rows);
        let rt = targets_for("pipe", &all[0]);
        // 3x python (met for issue 3, missed for issue 14), 2x the
        // socketpair (missed), no ipc-channel row (not measured), one
        // sample (its own max: within 3x of the median).
        let verdicts: Vec<_> = rt.iter().map(|t| t.met(&all[0])).collect();
        assert_eq!(
            verdicts,
            [Some(true), Some(false), Some(false), None, Some(true)]
        );
        assert_eq!(rt[4].describe("us"), "max ≤ 3x median");
        assert_eq!(rt[0].describe("us"), "≥ 2.5x python");
        assert_eq!(rt[1].describe("us"), "≤ 1.5x socketpair");
        assert_eq!(rt[2].describe("us"), "≥ 30x python");
        let ow = targets_for("pipe", &all[1]);
        assert_eq!(ow.len(), 1);
        assert_eq!(ow[0].met(&all[1]), Some(false));
        assert_eq!(ow[0].describe("MB/s"), "≥ 3000 MB/s");
        assert!(targets_for("queue", &all[0]).is_empty());
    }

    #[test]
    fn a_spread_target_checks_the_worst_sample_against_the_median() {
        let spread = Target {
            issue: 20,
            group: "pipe",
            bench: "b",
            param: None,
            goal: Goal::Spread(3.0),
        };
        let verdict = |unit: &str, samples: Vec<f64>| {
            let m = vec![Measurement::new("b", "p", unit, Ok(samples))];
            let rows = pair("pipe", m, Vec::new(), None);
            spread.met(&entries(&rows)[0])
        };
        // Times: the slowest sample against the median.
        assert_eq!(verdict("us", vec![1.0, 1.0, 1.0, 2.9]), Some(true));
        assert_eq!(verdict("us", vec![1.0, 1.0, 1.0, 3.1]), Some(false));
        // Rates: the lowest.
        assert_eq!(verdict("msg/s", vec![9.0, 9.0, 9.0, 3.1]), Some(true));
        assert_eq!(verdict("msg/s", vec![9.0, 9.0, 9.0, 2.9]), Some(false));
        assert_eq!(spread.describe("msg/s"), "min ≥ median / 3");
    }

    #[test]
    fn idle_targets_leave_the_busy_machines_rows_alone() {
        let row = |param: &'static str| {
            Measurement::new("lock_uncontended", param, "ops/s", Ok(vec![1.0]))
        };
        let rows = pair(
            "sync",
            vec![row("-"), row("-_contended")],
            vec![row("-"), row("-_contended")],
            None,
        );
        let all = entries(&rows);
        let issues = |e| {
            targets_for("sync", e)
                .iter()
                .map(|t| t.issue)
                .collect::<Vec<_>>()
        };
        assert_eq!(issues(&all[0]), [5, 14]);
        assert!(issues(&all[1]).is_empty());
        // A contended row's own target still applies.
        let ev = Measurement::new(
            "event_pingpong_2p",
            "-_contended",
            "round trips/s",
            Ok(vec![1.0]),
        );
        let rows = pair("sync", vec![ev.clone()], vec![ev], None);
        let all = entries(&rows);
        assert_eq!(issues(&all[0]), [20]);
    }
}
