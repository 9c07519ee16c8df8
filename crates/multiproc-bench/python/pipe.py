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

import argparse
import contextlib
import multiprocessing
import time

import benchutil

SIZES = (("8B", 8), ("64KiB", 64 << 10), ("1MiB", 1 << 20))
SMALL = "8B"
PING = b"ping-pon"
PING_VALUE = 0x0123_4567_89AB_CDEF
EXIT_TIMEOUT = 10.0


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


@contextlib.contextmanager
def child(ctx, target, *args):
    """Starts target(theirs, *args) in a daemon child, yields our end of
    the pipe; closes it afterwards, so the child returns, and joins it (or
    kills it if it does not exit)."""
    ours, theirs = ctx.Pipe()
    p = ctx.Process(target=target, args=(theirs, *args), daemon=True)
    p.start()
    theirs.close()
    ok = False
    try:
        yield ours
        ok = True
    finally:
        ours.close()
        p.join(EXIT_TIMEOUT if ok else 0.1)
        if p.is_alive():
            p.kill()
            p.join()
            if ok:
                raise RuntimeError("the child did not exit at the end of its input")
    if p.exitcode != 0:
        raise RuntimeError(f"the child exited with {p.exitcode}")


def roundtrips(ctx, warmup, batches, batch):
    """Per-batch mean round trips (us) of bytes and typed messages, their
    batches interleaved as on the Rust side. Returns one entry per bench:
    a list of samples or the exception that stopped it."""
    with contextlib.ExitStack() as stack:
        ops = []
        for target, msg, typed in ((echo_bytes, PING, False),
                                   (echo_objects, PING_VALUE, True)):
            conn = stack.enter_context(child(ctx, target))
            send, recv = (conn.send, conn.recv) if typed else (conn.send_bytes, conn.recv_bytes)
            ops.append((send, recv, msg))
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
    with child(ctx, sender, size) as conn:
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
        return [(count, run(count)) for _ in range(reps)]


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--warmup", type=int, default=2000)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--target-ms", type=int, default=300)
    parser.add_argument("--start-method", default="forkserver")
    args = parser.parse_args()
    ctx = multiprocessing.get_context(args.start_method)

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
            runs = oneway(ctx, size, args.reps, args.target_ms / 1e3)
        except Exception as exc:  # reported, and the script goes on
            for bench, unit, _ in outputs:
                benchutil.emit_error(bench, param, unit, exc)
            continue
        for bench, unit, rate in outputs:
            benchutil.emit(bench, param, unit, [rate(n, s) for n, s in runs])


if __name__ == "__main__":
    main()
