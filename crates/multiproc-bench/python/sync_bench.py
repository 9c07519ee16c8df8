"""Group `sync` for CPython's multiprocessing (see ../src/groups/sync.rs).

Named sync_bench.py rather than sync.py, like queue_bench.py: a script's
directory comes first on sys.path, and a *_bench name cannot shadow a
module that multiprocessing (or anything else) imports.

* lock_uncontended (ops/s): acquire() and release() of a Lock in this
  process alone.
* value_incr_locked_2p (ops/s): two children each do
  `with v.get_lock(): v.value += 1` on a Value('q', 0), half of a run's
  increments each; the value must end at the total.
* event_pingpong_2p (roundtrips/s): this process (A) and a child (B)
  ping-pong with two Events: A sets ping, waits for pong and clears it;
  B waits for ping, clears it, sets pong. Each event is cleared by its
  waiter before the waiter answers, so no set is lost or seen twice.
* barrier_2p (cycles/s): this process and a child each wait on a
  Barrier(2) once per cycle; index 0 must be handed out once per cycle.

Every child waits for commands on its own pipe. A run is timed from the
first command to this process's last operation (ping-pong, barrier) or
the last child's report (value). The count is calibrated first so that a
run lasts about --target-ms. Every bench has the param "-".
"""

import time

import benchutil

PARAM = "-"
# How long this process waits for the other side in one round trip or
# barrier cycle before it takes the child for dead.
WAIT_TIMEOUT = 10.0
# How long it waits for a child's report at the end of a run.
REPORT_TIMEOUT = 60.0


def incrementer(cmd, v):
    """For every command n, increments v n times under its lock, then
    reports."""
    while True:
        try:
            n = cmd.recv()
        except EOFError:
            return
        for _ in range(n):
            with v.get_lock():
                v.value += 1
        cmd.send(None)


def ponger(cmd, ping, pong):
    """B: for every command n, n times waits for ping, clears it, sets
    pong; then reports."""
    while True:
        try:
            n = cmd.recv()
        except EOFError:
            return
        for _ in range(n):
            ping.wait()
            ping.clear()
            pong.set()
        cmd.send(None)


def party(cmd, barrier):
    """For every command n, waits on the barrier n times, then reports how
    many waits returned index 0."""
    while True:
        try:
            n = cmd.recv()
        except EOFError:
            return
        zeros = 0
        for _ in range(n):
            if barrier.wait() == 0:
                zeros += 1
        cmd.send(zeros)


def report(cmd, who):
    """The child's report at the end of a run."""
    if not cmd.poll(REPORT_TIMEOUT):
        raise TimeoutError(f"no report from the {who} within {REPORT_TIMEOUT} s")
    return cmd.recv()


def timed(run, reps, target):
    """The (count, seconds) runs of one bench (benchutil.timed_runs), or
    raises what stopped them: inside a `children` block, so that the
    children are killed at once rather than waited for."""
    result = benchutil.timed_runs([run], reps, target)[0]
    if isinstance(result, Exception):
        raise result
    return result


def lock_uncontended(ctx, reps, target):
    lock = ctx.Lock()
    acquire, release = lock.acquire, lock.release

    def run(count):
        t0 = time.perf_counter()
        for _ in range(count):
            acquire()
            release()
        return time.perf_counter() - t0

    return timed(run, reps, target)


def value_incr_locked_2p(ctx, reps, target):
    v = ctx.Value("q", 0)
    with benchutil.children(ctx, [(incrementer, (v,))] * 2) as cmds:

        def run(count):
            v.value = 0
            half = count // 2
            t0 = time.perf_counter()
            for cmd, n in zip(cmds, (half, count - half)):
                cmd.send(n)
            for cmd in cmds:
                report(cmd, "incrementer")
            took = time.perf_counter() - t0
            if v.value != count:
                raise RuntimeError(f"the value is {v.value} after {count} increments")
            return took

        return timed(run, reps, target)


def event_pingpong_2p(ctx, reps, target):
    ping, pong = ctx.Event(), ctx.Event()
    with benchutil.children(ctx, [(ponger, (ping, pong))]) as (cmd,):

        def run(count):
            t0 = time.perf_counter()
            cmd.send(count)
            for i in range(count):
                ping.set()
                if not pong.wait(WAIT_TIMEOUT):
                    raise TimeoutError(f"no pong within {WAIT_TIMEOUT} s in round trip {i}")
                pong.clear()
            took = time.perf_counter() - t0
            report(cmd, "ponger")
            if ping.is_set() or pong.is_set():
                raise RuntimeError("an event was left set after the run")
            return took

        return timed(run, reps, target)


def barrier_2p(ctx, reps, target):
    barrier = ctx.Barrier(2)
    with benchutil.children(ctx, [(party, (barrier,))]) as (cmd,):

        def run(count):
            t0 = time.perf_counter()
            cmd.send(count)
            zeros = 0
            for _ in range(count):
                if barrier.wait(WAIT_TIMEOUT) == 0:
                    zeros += 1
            took = time.perf_counter() - t0
            zeros += report(cmd, "child party")
            if zeros != count:
                raise RuntimeError(f"index 0 was handed out {zeros} times in {count} cycles")
            return took

        return timed(run, reps, target)


BENCHES = (
    ("lock_uncontended", "ops/s", lock_uncontended),
    ("value_incr_locked_2p", "ops/s", value_incr_locked_2p),
    ("event_pingpong_2p", "roundtrips/s", event_pingpong_2p),
    ("barrier_2p", "cycles/s", barrier_2p),
)


def main():
    args, ctx, target = benchutil.parse_plan(benchutil.plan_parser(__doc__))

    for bench, unit, fn in BENCHES:
        try:
            result = fn(ctx, args.reps, target)
        except Exception as exc:  # reported, and the script goes on
            benchutil.emit_error(bench, PARAM, unit, exc)
        else:
            benchutil.emit(bench, PARAM, unit, [n / max(s, 1e-12) for n, s in result])


if __name__ == "__main__":
    main()
