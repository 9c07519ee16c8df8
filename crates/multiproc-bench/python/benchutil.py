"""Helpers shared by the group scripts: output lines, calibrated runs,
children driven through command pipes, memory, readiness.

Every script prints one JSON line per measurement on stdout:

    {"bench": "start_join", "param": "fork", "unit": "ms", "samples": [...]}
    {"bench": "start_join", "param": "fork", "unit": "ms", "error": "why"}

The Rust side (src/python.rs) takes the medians.
"""

import argparse
import contextlib
import json
import math
import multiprocessing
import os
import sys
import time
import traceback

# How long a child may take to exit once its input has ended.
EXIT_TIMEOUT = 10.0

# Whether the Rust side drives this script's rounds (--interleave): see turn().
_interleave = False
_turns = 0


def turn():
    """Marks the start of a round of samples. With --interleave (the Rust
    side's python::Session), prints a marker line and waits for a line on
    stdin, so that the Rust side's rounds and ours alternate and never run
    at the same time; at the end of stdin, runs on without waiting.
    Without --interleave, does nothing."""
    global _interleave, _turns
    if not _interleave:
        return
    _turns += 1
    print(json.dumps({"turn": _turns}), flush=True)
    if not sys.stdin.readline():
        _interleave = False


def set_interleave(on):
    """For a script with a parser of its own: whether --interleave was
    given (see turn())."""
    global _interleave
    _interleave = on


def emit(bench, param, unit, samples):
    """Prints the samples of one measurement."""
    line = {"bench": bench, "param": param, "unit": unit, "samples": samples}
    print(json.dumps(line), flush=True)


def emit_error(bench, param, unit, exc):
    """Prints why a measurement failed, with the traceback on stderr."""
    traceback.print_exception(exc, file=sys.stderr)
    line = {"bench": bench, "param": param, "unit": unit,
            "error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(line), flush=True)


def emit_unavailable(bench, param, unit, why):
    """Prints that a measurement has no Python counterpart, and why."""
    line = {"bench": bench, "param": param, "unit": unit, "error": why}
    print(json.dumps(line), flush=True)


def measure(bench, param, unit, fn, *args):
    """Runs fn(*args) -> samples and prints them, or the error it raised."""
    try:
        samples = fn(*args)
    except Exception as exc:  # reported, and the script goes on
        emit_error(bench, param, unit, exc)
    else:
        emit(bench, param, unit, samples)


def plan_parser(doc):
    """A parser for the options of a script of timed runs, which the Rust
    side passes (rig::Plan::python_args): --reps, --target-ms and
    --start-method. Add a script's own options to it."""
    parser = argparse.ArgumentParser(description=doc)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--target-ms", type=int, default=300)
    parser.add_argument("--start-method", default="forkserver")
    parser.add_argument("--interleave", action="store_true",
                        help="wait for the Rust side at every round (see turn())")
    return parser


def parse_plan(parser):
    """Parses the command line with a plan_parser: returns the options,
    the multiprocessing context of --start-method, and --target-ms in
    seconds."""
    args = parser.parse_args()
    set_interleave(args.interleave)
    return args, multiprocessing.get_context(args.start_method), args.target_ms / 1e3


def calibrate(run, target):
    """How many operations make run(count) (which performs count of them
    and returns the seconds it took) last about target seconds. As
    measure::calibrate on the Rust side: counts grow fourfold from 16 until
    a run lasts target/8, then scale linearly; the runs warm up."""
    count = 16
    while True:
        took = run(count)
        if took >= target / 8 or count >= 1 << 40:
            return max(1, math.ceil(count * target / max(took, 1e-9)))
        count *= 4


def timed_runs(runs, reps, target):
    """As measure_rigs on the Rust side (src/rig.rs): warms up each run
    with a calibration whose result is thrown away (its first run waits for
    the children to come up, and the first runs are slower than the steady
    state), calibrates each run, then reps rounds run each once. Returns
    per run a list of (count, seconds) or the exception that stopped it."""
    counts = []
    for run in runs:
        try:
            calibrate(run, target)
            counts.append(calibrate(run, target))
        except Exception as exc:
            counts.append(exc)
    results = [c if isinstance(c, Exception) else [] for c in counts]
    for _ in range(reps):
        turn()
        for i, run in enumerate(runs):
            if isinstance(results[i], Exception):
                continue
            try:
                results[i].append((counts[i], run(counts[i])))
            except Exception as exc:
                results[i] = exc
    return results


@contextlib.contextmanager
def children(ctx, specs):
    """Starts a daemon child per (target, args) in specs, each given its own
    command pipe as first argument; yields our ends. Afterwards closes
    them, so the children return, and joins them (or kills them if they do
    not exit, or if the block failed)."""
    started = []
    ok = False
    try:
        for target, args in specs:
            ours, theirs = ctx.Pipe()
            p = ctx.Process(target=target, args=(theirs, *args), daemon=True)
            p.start()
            theirs.close()
            started.append((ours, p))
        yield [ours for ours, _ in started]
        ok = True
    finally:
        for ours, _ in started:
            ours.close()
        deadline = time.monotonic() + EXIT_TIMEOUT
        stuck = False
        for _, p in started:
            p.join(max(0.0, deadline - time.monotonic()) if ok else 0.1)
            if p.is_alive():
                p.kill()
                p.join()
                stuck = True
        if ok and stuck:
            raise RuntimeError("a child did not exit at the end of its input")
        if ok and any(p.exitcode != 0 for _, p in started):
            codes = [p.exitcode for _, p in started]
            raise RuntimeError(f"a child failed (exit codes {codes})")


def private_kib(pid):
    """Private_Clean + Private_Dirty of a process, in KiB."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            text = f.read()
    except OSError:
        with open(f"/proc/{pid}/smaps") as f:
            text = f.read()
    total = 0
    seen = False
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("Private_Clean", "Private_Dirty"):
            total += int(rest.split()[0])
            seen = True
    if not seen:
        raise RuntimeError(f"no Private_* lines in smaps of {pid}")
    return float(total)


def wait_for_file(path, process, timeout):
    """Polls every millisecond until `path` exists; fails if `process` dies
    first or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if not process.is_alive():
            raise RuntimeError(f"the child exited before creating {path}")
        if time.monotonic() >= deadline:
            raise TimeoutError(f"the child did not create {path} within {timeout} s")
        time.sleep(0.001)
