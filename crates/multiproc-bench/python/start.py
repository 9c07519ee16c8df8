"""Group `start` for CPython's multiprocessing (see ../src/groups/start.rs).

* start_join: start a Process running a trivial function and join it, one
  at a time, per start method; milliseconds per child. The samples come in
  --rounds rounds, each a turn of the Rust side's (--interleave).
* worker_private_memory: Private_Clean + Private_Dirty (KiB) of an idle
  worker: it creates a marker file and sleeps; the parent waits for the
  file plus a settle delay, reads /proc/<pid>/smaps_rollup, kills it.
"""

import argparse
import multiprocessing
import os
import shutil
import tempfile
import time

import benchutil

METHODS = ("fork", "forkserver", "spawn")
READY_TIMEOUT = 20.0


def noop():
    pass


def idle(marker):
    with open(marker, "w"):
        pass
    time.sleep(60)


def start_join_once(ctx):
    p = ctx.Process(target=noop)
    p.start()
    p.join()
    if p.exitcode != 0:
        raise RuntimeError(f"child exited with {p.exitcode}")


def start_join_rounds(reps, reps_spawn, rounds):
    """Samples (ms) per method, taken in `rounds` rounds, each a turn
    (benchutil.turn) in which every method takes its share of the reps,
    after one warm-up start per method (which also starts the
    forkserver)."""
    ctxs = {m: multiprocessing.get_context(m) for m in METHODS}
    samples = {m: [] for m in METHODS}
    errors = {}
    for m in METHODS:
        try:
            start_join_once(ctxs[m])
        except Exception as exc:  # reported, and the others go on
            errors[m] = exc
    for r in range(rounds):
        benchutil.turn()
        for m in METHODS:
            if m in errors:
                continue
            total = reps_spawn if m == "spawn" else reps
            # This round's share: the rounds split `total` as evenly as
            # they can.
            share = total * (r + 1) // rounds - total * r // rounds
            try:
                for _ in range(share):
                    t0 = time.perf_counter()
                    start_join_once(ctxs[m])
                    samples[m].append((time.perf_counter() - t0) * 1e3)
            except Exception as exc:
                errors[m] = exc
    return samples, errors


def idle_worker_kib(ctx, marker, settle):
    p = ctx.Process(target=idle, args=(marker,), daemon=True)
    p.start()
    try:
        benchutil.wait_for_file(marker, p, READY_TIMEOUT)
        time.sleep(settle)
        return benchutil.private_kib(p.pid)
    finally:
        p.kill()
        p.join()
        try:
            os.unlink(marker)
        except FileNotFoundError:
            pass


def worker_private_memory(method, samples, settle, tmp):
    ctx = multiprocessing.get_context(method)
    if method == "forkserver":
        # Start the server first: the worker is measured, not the server.
        start_join_once(ctx)
    return [idle_worker_kib(ctx, os.path.join(tmp, f"{method}-{i}.ready"), settle)
            for i in range(samples)]


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--join-reps", type=int, default=100,
                        help="start_join repetitions for fork and forkserver")
    parser.add_argument("--join-reps-spawn", type=int, default=10,
                        help="start_join repetitions for spawn")
    parser.add_argument("--memory-samples", type=int, default=5)
    parser.add_argument("--settle-ms", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=1,
                        help="rounds of start_join samples (one turn each)")
    parser.add_argument("--interleave", action="store_true",
                        help="wait for the Rust side at every round (see "
                             "benchutil.turn())")
    args = parser.parse_args()
    benchutil.set_interleave(args.interleave)

    samples, errors = start_join_rounds(args.join_reps, args.join_reps_spawn,
                                        args.rounds)
    for method in METHODS:
        if method in errors:
            benchutil.emit_error("start_join", method, "ms", errors[method])
        else:
            benchutil.emit("start_join", method, "ms", samples[method])
    tmp = tempfile.mkdtemp(prefix="multiproc-bench-py-")
    try:
        for method in METHODS:
            benchutil.measure("worker_private_memory", method, "KiB",
                              worker_private_memory, method,
                              args.memory_samples, args.settle_ms / 1e3, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
