"""Group `cluster` for Celery (see ../src/groups/cluster.rs). Runs under a
venv with Celery (cluster-requirements.txt), against the redis-server on
--redis-socket that the Rust side started and measured on.

Starts one worker as a user would on this machine: `celery -A
cluster_celery worker --concurrency 2` (the prefork pool: a main process
and two worker processes), the broker and result backend both Redis on
the same socket. Then:

* cluster_map/trivial_100k and cluster_map/chunksize1 (items/s): a group
  of --group-items single-item tasks, group(incr.s(i) for i in
  range(n)).apply_async().get(): what a Celery user writes for a map. A
  group of 100,000 would take minutes (a few hundred tasks a second, and
  submitting slows down as the group grows), so n is smaller, which only
  flatters Celery. Both params get the same samples: each group task is
  one item, as with chunk size 1.
* cluster_map/trivial_100k_chunks (items/s): incr.chunks(zip(range(n)),
  size).group().apply_async().get() over --chunks-items items in chunks of
  --chunk-size (the Rust side passes its default chunk size).
* cluster_submit_latency/idle (ms): incr.delay(x).get(), one at a time.

The group and chunks runs alternate, after a warm-up of each.
"""

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time

import benchutil

HERE = os.path.dirname(os.path.abspath(__file__))
READY_TIMEOUT = 60.0
RESULT_TIMEOUT = 600.0


def parse():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--redis-socket", required=True)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--group-items", type=int, default=1000)
    parser.add_argument("--chunks-items", type=int, default=100_000)
    parser.add_argument("--chunk-size", type=int, default=1563)
    parser.add_argument("--latency-ops", type=int, default=50)
    return parser.parse_args()


def die_with_parent():
    """In the worker before exec: killed if this script dies (its pool
    processes follow their main process)."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    PR_SET_PDEATHSIG = 1
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class Worker:
    """`celery -A cluster_celery worker --concurrency 2`, its output in a
    temporary file (shown on stderr if it fails)."""

    def __init__(self, env):
        self.log = tempfile.NamedTemporaryFile(
            prefix="multiproc-bench-celery-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "cluster_celery", "worker",
             "--concurrency", "2", "--pool", "prefork", "--loglevel", "WARNING"],
            cwd=HERE, env=env, stdin=subprocess.DEVNULL, stdout=self.log,
            stderr=subprocess.STDOUT, preexec_fn=die_with_parent)

    def wait_ready(self, app):
        deadline = time.monotonic() + READY_TIMEOUT
        while not app.control.ping(timeout=0.5):
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"the celery worker exited ({self.proc.returncode}): {self.tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError("the celery worker did not answer within 60 s")

    def tail(self):
        try:
            with open(self.log.name) as f:
                return " | ".join(f.read().strip().splitlines()[-5:])
        except OSError:
            return ""

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()  # warm shutdown
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        os.unlink(self.log.name)


def main():
    args = parse()
    env = dict(os.environ, CLUSTER_BENCH_REDIS_SOCKET=args.redis_socket)
    os.environ["CLUSTER_BENCH_REDIS_SOCKET"] = args.redis_socket
    sys.path.insert(0, HERE)
    from celery import group
    from cluster_celery import app, incr

    worker = Worker(env)
    try:
        worker.wait_ready(app)

        def run_group(n):
            t0 = time.perf_counter()
            out = group(incr.s(i) for i in range(n)).apply_async().get(
                timeout=RESULT_TIMEOUT)
            took = time.perf_counter() - t0
            if out != list(range(1, n + 1)):
                raise RuntimeError("the group returned wrong results")
            return n / took

        def run_chunks(n, size):
            t0 = time.perf_counter()
            out = incr.chunks(zip(range(n)), size).group().apply_async().get(
                timeout=RESULT_TIMEOUT)
            took = time.perf_counter() - t0
            flat = [x for chunk in out for x in chunk]
            if flat != list(range(1, n + 1)):
                raise RuntimeError("the chunks returned wrong results")
            return n / took

        runs = {
            "group": lambda: run_group(args.group_items),
            "chunks": lambda: run_chunks(args.chunks_items, args.chunk_size),
        }
        samples = {}
        for name, run in runs.items():
            try:
                run()  # warm-up
                samples[name] = []
            except Exception as exc:
                samples[name] = exc
        for _ in range(args.reps):
            for name, run in runs.items():
                if isinstance(samples[name], Exception):
                    continue
                try:
                    samples[name].append(run())
                except Exception as exc:
                    samples[name] = exc

        def report(bench, param, result):
            if isinstance(result, Exception):
                benchutil.emit_error(bench, param, "items/s", result)
            else:
                benchutil.emit(bench, param, "items/s", result)

        report("cluster_map", "trivial_100k", samples["group"])
        report("cluster_map", "chunksize1", samples["group"])
        report("cluster_map", "trivial_100k_chunks", samples["chunks"])

        def latency(ops):
            for x in range(10):  # warm-up
                incr.delay(x).get(timeout=RESULT_TIMEOUT)
            out = []
            for x in range(ops):
                t0 = time.perf_counter()
                y = incr.delay(x).get(timeout=RESULT_TIMEOUT)
                out.append((time.perf_counter() - t0) * 1e3)
                if y != x + 1:
                    raise RuntimeError(f"incr({x}) gave {y}")
            return out

        benchutil.measure("cluster_submit_latency", "idle", "ms",
                          latency, args.latency_ops)
    except Exception as exc:
        print(f"celery worker log: {worker.tail()}", file=sys.stderr)
        raise exc
    finally:
        worker.stop()


if __name__ == "__main__":
    main()
