"""Helpers shared by the group scripts: output lines, memory, readiness.

Every script prints one JSON line per measurement on stdout:

    {"bench": "start_join", "param": "fork", "unit": "ms", "samples": [...]}
    {"bench": "start_join", "param": "fork", "unit": "ms", "error": "why"}

The Rust side (src/python.rs) takes the medians.
"""

import json
import math
import os
import sys
import time
import traceback


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


def measure(bench, param, unit, fn, *args):
    """Runs fn(*args) -> samples and prints them, or the error it raised."""
    try:
        samples = fn(*args)
    except Exception as exc:  # reported, and the script goes on
        emit_error(bench, param, unit, exc)
    else:
        emit(bench, param, unit, samples)


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
