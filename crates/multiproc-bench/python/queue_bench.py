"""Group `queue` for CPython's multiprocessing (see ../src/groups/queue.rs).

Named queue_bench.py, not queue.py: a script's directory comes first on
sys.path, and a queue.py there would shadow the standard library's `queue`
module, which multiprocessing imports.

* queue_1p1c: one producer child puts, the parent gets, on a
  multiprocessing.Queue; payloads of 8 B (an int), 1 KiB, 64 KiB and 1 MiB
  (bytes); payload MB/s (10^6 bytes). queue_1p1c_msgs: messages/s of the
  8-byte runs. queue_1p1c_ring16MiB 1MiB has no Python measurement
  (Python's queue has no ring size): the script says so instead of
  passing its 1MiB samples off as another measurement.
* simplequeue_1p1c: the 8-byte runs on a SimpleQueue, interleaved with
  queue_1p1c 8B.
* queue_2p2c: two producer children put ints, two consumer children get
  them until a None sentinel (one per producer) and report their count and
  sum; the parent checks that every message arrived once.

Every child waits for commands on its own pipe. A run is timed from the
first command to the last message (1p1c) or the last consumer report
(2p2c). The count is calibrated first so that a run lasts about
--target-ms.
"""

import multiprocessing.connection
import time

import benchutil

SIZES = (("8B", 8), ("1KiB", 1 << 10), ("64KiB", 64 << 10), ("1MiB", 1 << 20))
SMALL = "8B"
BIG_RING_BENCH = "queue_1p1c_ring16MiB"
FILL = b"\xa5"
REPORT_TIMEOUT = 60.0


def produce_ints(cmd, q):
    """For every command count, puts 0..count."""
    put = q.put
    while True:
        try:
            count = cmd.recv()
        except EOFError:
            return
        for i in range(count):
            put(i)


def produce_bytes(cmd, q, size):
    """For every command count, puts that many size-byte payloads."""
    payload = FILL * size
    put = q.put
    while True:
        try:
            count = cmd.recv()
        except EOFError:
            return
        for _ in range(count):
            put(payload)


def produce_range(cmd, q):
    """For every command (first, count), puts first..first+count and then
    the None sentinel."""
    put = q.put
    while True:
        try:
            first, count = cmd.recv()
        except EOFError:
            return
        for v in range(first, first + count):
            put(v)
        put(None)


def consume_until_sentinel(cmd, q):
    """For every command, gets until a None and reports (count, sum)."""
    get = q.get
    while True:
        try:
            cmd.recv()
        except EOFError:
            return
        count = total = 0
        while True:
            v = get()
            if v is None:
                break
            count += 1
            total += v
        cmd.send((count, total))


def one_to_one(cmd, q, check_order):
    """The parent's side of a 1p1c run: command the producer, get count
    values; with check_order they must be 0..count in order."""
    get = q.get

    def run(count):
        t0 = time.perf_counter()
        cmd.send(count)
        if check_order:
            for i in range(count):
                v = get()
                if v != i:
                    raise RuntimeError(f"got {v} where {i} was due")
        else:
            for _ in range(count - 1):
                get()
            last = get()
            return time.perf_counter() - t0, last
        return time.perf_counter() - t0, None

    return run


def small(ctx, reps, target):
    """queue_1p1c and simplequeue_1p1c 8B, interleaved."""
    queues = [ctx.Queue(), ctx.SimpleQueue()]
    specs = [(produce_ints, (q,)) for q in queues]
    with benchutil.children(ctx, specs) as cmds:
        runs = []
        for cmd, q in zip(cmds, queues):
            inner = one_to_one(cmd, q, True)
            runs.append(lambda count, inner=inner: inner(count)[0])
        return benchutil.timed_runs(runs, reps, target)


def sized(ctx, size, reps, target):
    """queue_1p1c of size-byte payloads."""
    q = ctx.Queue()
    with benchutil.children(ctx, [(produce_bytes, (q, size))]) as (cmd,):
        inner = one_to_one(cmd, q, False)

        def run(count):
            took, last = inner(count)
            if len(last) != size:
                raise RuntimeError(f"got a payload of {len(last)} bytes, not {size}")
            return took

        return benchutil.timed_runs([run], reps, target)[0]


def two_by_two(ctx, reps, target):
    """queue_2p2c: 2 producers, 2 consumers, every message checked."""
    q = ctx.Queue()
    specs = [(consume_until_sentinel, (q,))] * 2 + [(produce_range, (q,))] * 2
    with benchutil.children(ctx, specs) as cmds:
        consumers, producers = cmds[:2], cmds[2:]

        def run(count):
            t0 = time.perf_counter()
            for c in consumers:
                c.send(count)
            half = count // 2
            for p, command in zip(producers, [(0, half), (half, count - half)]):
                p.send(command)
            got, total = collect_reports(consumers, producers)
            took = time.perf_counter() - t0
            want = count * (count - 1) // 2
            if got != count or total != want:
                raise RuntimeError(f"the consumers got {got} messages summing to "
                                   f"{total}, not {count} summing to {want}")
            return took

        return benchutil.timed_runs([run], reps, target)[0]


def collect_reports(consumers, producers):
    """Waits for one (count, sum) report from each consumer and adds them
    up. A producer's pipe becomes readable only when the producer is gone
    (producers never send): then the run fails at once."""
    deadline = time.monotonic() + REPORT_TIMEOUT
    pending = list(consumers)
    got = total = 0
    while pending:
        left = max(0.0, deadline - time.monotonic())
        ready = multiprocessing.connection.wait(pending + list(producers), left)
        if not ready:
            raise TimeoutError("no report from a consumer in time")
        if any(r in producers for r in ready):
            raise RuntimeError("a producer exited during a run")
        for c in ready:
            n, s = c.recv()
            got += n
            total += s
            pending.remove(c)
    return got, total


def emit(bench, param, size, result):
    """Prints the MB/s samples of a result (plus msg/s for 8 bytes), or
    its error."""
    outputs = [(bench, "MB/s", lambda n, s: n * size / s / 1e6)]
    if param == SMALL:
        outputs.append((f"{bench}_msgs", "msg/s", lambda n, s: n / s))
    for name, unit, rate in outputs:
        if isinstance(result, Exception):
            benchutil.emit_error(name, param, unit, result)
        else:
            benchutil.emit(name, param, unit, [rate(n, s) for n, s in result])


def guarded(fn, count, *args):
    """fn(*args), or its exception repeated count times (one per result)."""
    try:
        return fn(*args)
    except Exception as exc:  # reported, and the script goes on
        return [exc] * count if count > 1 else exc


def main():
    args, ctx, target = benchutil.parse_plan(benchutil.plan_parser(__doc__))

    queue_runs, simple_runs = guarded(small, 2, ctx, args.reps, target)
    emit("queue_1p1c", SMALL, 8, queue_runs)
    # Python has no acknowledged get: the baseline of multiproc's
    # queue_1p1c_ack is Python's plain Queue, the same runs.
    if isinstance(queue_runs, Exception):
        benchutil.emit_error("queue_1p1c_ack", SMALL, "msg/s", queue_runs)
    else:
        benchutil.emit("queue_1p1c_ack", SMALL, "msg/s", [n / s for n, s in queue_runs])
    # Nor an async get on another runtime: multiproc's queue_1p1c_async
    # (awaited on tokio's current_thread runtime) is compared with the
    # same runs.
    if isinstance(queue_runs, Exception):
        benchutil.emit_error("queue_1p1c_async", SMALL, "msg/s", queue_runs)
    else:
        benchutil.emit("queue_1p1c_async", SMALL, "msg/s", [n / s for n, s in queue_runs])
    emit("simplequeue_1p1c", SMALL, 8, simple_runs)
    for param, size in SIZES[1:]:
        result = guarded(sized, 1, ctx, size, args.reps, target)
        emit("queue_1p1c", param, size, result)
        if param == "1MiB":
            benchutil.emit_unavailable(
                BIG_RING_BENCH, param, "MB/s",
                "multiprocessing.Queue has no ring size: compare queue_1p1c 1MiB")
    emit("queue_2p2c", SMALL, 8, guarded(two_by_two, 1, ctx, args.reps, target))


if __name__ == "__main__":
    main()
