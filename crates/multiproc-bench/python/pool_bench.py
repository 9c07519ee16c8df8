"""Group `pool` for CPython's multiprocessing.Pool (see ../src/groups/pool.rs).

* map_trivial_1m/default: Pool.map(incr, range(1_000_000)) on a warm pool,
  default chunking; seconds per map.
* map_trivial_1m/chunksize1: the same with chunksize=1, over --c1-items
  items (far fewer than 1M: at about 40 us per item a full run would take
  some 40 s); each sample is the time per item x 1,000,000, in seconds.
* cpu_bound_speedup/all_cores: counting primes by trial division, split
  into --cpu-items items of equal cost (item k counts the primes p < --cpu-n
  with p % items == k); the speed-up is the serial time (map in this
  process) over the time of Pool.map on the warm pool, one sample per
  repetition.
* pool_startup/<method>: ms from calling Pool(workers, initializer=ready,
  initargs=(q,)) until every worker has run its initializer (each puts
  one token on a SimpleQueue; the parent takes `workers` tokens). The pool
  is then terminated and joined, untimed.
"""

import argparse
import multiprocessing
import time

import benchutil

METHODS = ("fork", "forkserver", "spawn")


def incr(x):
    return x + 1


def count_primes(args):
    """Item k of stride items of the prime count below n: the odd numbers
    p = 2j + 1 < n with j % stride == k, by trial division, plus the prime
    2 in item 0; every item costs about the same (as the Rust side's
    count_primes)."""
    k, stride, n = args
    count = 1 if k == 0 and n > 2 else 0
    for p in range(2 * k + 1, n, 2 * stride):
        if p < 3:
            continue
        d = 3
        prime = True
        while d * d <= p:
            if p % d == 0:
                prime = False
                break
            d += 2
        count += prime
    return count


def ready(q):
    q.put(None)


def map_default(pool, items, reps):
    expected_last = items
    pool.map(incr, range(items))  # warm-up
    samples = []
    for _ in range(reps):
        t0 = time.perf_counter()
        out = pool.map(incr, range(items))
        samples.append(time.perf_counter() - t0)
        if len(out) != items or out[-1] != expected_last:
            raise RuntimeError("wrong results")
    return samples


def map_chunksize1(pool, items, reps):
    pool.map(incr, range(min(items, 1000)), chunksize=1)  # warm-up
    samples = []
    for _ in range(reps):
        t0 = time.perf_counter()
        out = pool.map(incr, range(items), chunksize=1)
        took = time.perf_counter() - t0
        if len(out) != items or out[-1] != items:
            raise RuntimeError("wrong results")
        samples.append(took / items * 1_000_000)
    return samples


def cpu_speedup(pool, n, items, reps):
    jobs = [(k, items, n) for k in range(items)]
    expected = sum(map(count_primes, jobs))  # warm-up, and the answer
    pool.map(count_primes, jobs)
    samples = []
    for _ in range(reps):
        t0 = time.perf_counter()
        serial = sum(map(count_primes, jobs))
        t1 = time.perf_counter()
        parallel = sum(pool.map(count_primes, jobs))
        t2 = time.perf_counter()
        if serial != expected or parallel != expected:
            raise RuntimeError("wrong prime counts")
        samples.append((t1 - t0) / (t2 - t1))
    return samples


def startup_once(ctx, workers):
    q = ctx.SimpleQueue()
    t0 = time.perf_counter()
    pool = ctx.Pool(workers, initializer=ready, initargs=(q,))
    try:
        for _ in range(workers):
            q.get()
        took = time.perf_counter() - t0
    finally:
        pool.terminate()
        pool.join()
        q.close()
    return took * 1e3


def startup(method, workers, reps):
    ctx = multiprocessing.get_context(method)
    startup_once(ctx, workers)  # warm-up; starts the forkserver
    return [startup_once(ctx, workers) for _ in range(reps)]


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--start-method", default="forkserver",
                        help="start method of the map and cpu pools")
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--map-reps", type=int, default=3)
    parser.add_argument("--c1-items", type=int, default=5_000)
    parser.add_argument("--c1-reps", type=int, default=3)
    parser.add_argument("--cpu-n", type=int, default=100_000)
    parser.add_argument("--cpu-items", type=int, default=256)
    parser.add_argument("--cpu-reps", type=int, default=3)
    parser.add_argument("--startup-reps", type=int, default=5)
    parser.add_argument("--startup-reps-spawn", type=int, default=3)
    args = parser.parse_args()

    ctx = multiprocessing.get_context(args.start_method)
    with ctx.Pool(args.workers) as pool:
        benchutil.measure("map_trivial_1m", "default", "s",
                          map_default, pool, args.items, args.map_reps)
        benchutil.measure("map_trivial_1m", "chunksize1", "s",
                          map_chunksize1, pool, args.c1_items, args.c1_reps)
        benchutil.measure("cpu_bound_speedup", "all_cores", "x",
                          cpu_speedup, pool, args.cpu_n, args.cpu_items,
                          args.cpu_reps)
    for method in METHODS:
        reps = args.startup_reps_spawn if method == "spawn" else args.startup_reps
        benchutil.measure("pool_startup", method, "ms",
                          startup, method, args.workers, reps)


if __name__ == "__main__":
    main()
