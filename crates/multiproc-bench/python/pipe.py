"""Group `pipe` for CPython's multiprocessing (see ../src/groups/pipe.rs).

* roundtrip_bytes: ping-pong of an 8-byte message over Pipe() with a child
  echoing via recv_bytes/send_bytes; per-batch mean round trip in us.
* roundtrip_typed: the same with send/recv (pickle) of an int. Both
  children run side by side and their batches alternate.
* oneway_bytes: a child sends messages of 8 B, 64 KiB and 1 MiB with
  send_bytes, the parent receives them with recv_bytes; payload MB/s
  (10^6 bytes). oneway_bytes_msgs: messages/s of the 8-byte runs.

One-way runs: the parent sends a count (8 bytes, little-endian), the child
sends that many messages; timed from the command to the last message. The
count is calibrated first so that a run lasts about --target-ms.
"""

import time

import benchutil

SIZES = (("8B", 8), ("64KiB", 64 << 10), ("1MiB", 1 << 20))
SMALL = "8B"
PING = b"ping-pon"
PING_VALUE = 0x0123_4567_89AB_CDEF


def echo_bytes(conn):
    while True:
        try:
            msg = conn.recv_bytes()
        except EOFError:
            return
        conn.send_bytes(msg)


def echo_objects(conn):
    while True:
        try:
            value = conn.recv()
        except EOFError:
            return
        conn.send(value)


def sender(conn, size):
    payload = b"\xa5" * size
    while True:
        try:
            cmd = conn.recv_bytes()
        except EOFError:
            return
        for _ in range(int.from_bytes(cmd, "little")):
            conn.send_bytes(payload)


def roundtrips(ctx, warmup, batches, batch):
    """Per-batch mean round trips (us) of bytes and typed messages, their
    batches interleaved as on the Rust side. Returns one entry per bench:
    a list of samples or the exception that stopped it."""
    specs = [(echo_bytes, ()), (echo_objects, ())]
    with benchutil.children(ctx, specs) as (conn_bytes, conn_typed):
        ops = [(conn_bytes.send_bytes, conn_bytes.recv_bytes, PING),
               (conn_typed.send, conn_typed.recv, PING_VALUE)]
        results = []
        for send, recv, msg in ops:
            try:
                for _ in range(warmup):
                    send(msg)
                    recv()
                send(msg)
                if recv() != msg:
                    raise RuntimeError("the echo came back changed")
                results.append([])
            except Exception as exc:
                results.append(exc)
        for _ in range(batches):
            benchutil.turn()
            for i, (send, recv, msg) in enumerate(ops):
                if isinstance(results[i], Exception):
                    continue
                try:
                    t0 = time.perf_counter()
                    for _ in range(batch):
                        send(msg)
                        recv()
                    results[i].append((time.perf_counter() - t0) * 1e6 / batch)
                except Exception as exc:
                    results[i] = exc
        return results


def oneway(ctx, size, reps, target):
    """Returns (messages, seconds) of each timed run."""
    with benchutil.children(ctx, [(sender, (size,))]) as (conn,):
        def run(count):
            t0 = time.perf_counter()
            conn.send_bytes(count.to_bytes(8, "little"))
            for _ in range(count - 1):
                conn.recv_bytes()
            last = conn.recv_bytes()
            took = time.perf_counter() - t0
            if len(last) != size:
                raise RuntimeError(f"got a message of {len(last)} bytes, not {size}")
            return took

        count = benchutil.calibrate(run, target)
        runs = []
        for _ in range(reps):
            benchutil.turn()
            runs.append((count, run(count)))
        return runs


def main():
    parser = benchutil.plan_parser(__doc__)
    parser.add_argument("--warmup", type=int, default=2000)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--batch", type=int, default=1000)
    args, ctx, target = benchutil.parse_plan(parser)

    benches = ("roundtrip_bytes", "roundtrip_typed")
    try:
        results = roundtrips(ctx, args.warmup, args.batches, args.batch)
    except Exception as exc:  # reported, and the script goes on
        results = [exc] * len(benches)
    for bench, result in zip(benches, results):
        if isinstance(result, Exception):
            benchutil.emit_error(bench, SMALL, "us", result)
        else:
            benchutil.emit(bench, SMALL, "us", result)
    for param, size in SIZES:
        outputs = [("oneway_bytes", "MB/s", lambda n, s: n * size / s / 1e6)]
        if param == SMALL:
            outputs.append(("oneway_bytes_msgs", "msg/s", lambda n, s: n / s))
        try:
            runs = oneway(ctx, size, args.reps, target)
        except Exception as exc:  # reported, and the script goes on
            for bench, unit, _ in outputs:
                benchutil.emit_error(bench, param, unit, exc)
            continue
        for bench, unit, rate in outputs:
            benchutil.emit(bench, param, unit, [rate(n, s) for n, s in runs])


if __name__ == "__main__":
    main()
