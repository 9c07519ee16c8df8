"""Group `manager` for CPython's multiprocessing (see ../src/groups/manager.rs).

* dict_set (ops/s), params 1client and 2clients: client processes set
  d[i % 1000] = i on a manager dict, half of a run's operations each when
  there are two; the rate is the total over the wall time.
* dict_get (ops/s): the same with d.get(i % 1000) on a dict holding those
  1000 keys; each must find its key.
* list_append (1client, ops/s): one client appends i to a manager list.
* manager_queue (8B, msg/s): a client puts ints into a manager Queue, this
  process gets them.
* manager_start (-, ms): ctx.Manager() and a first m.dict(); the shutdown
  is not timed. One untimed start-up warms up first.

Every client waits for commands on its own pipe; a run is timed from the
first command to the last client's report (or this process's last get).
The runs are interleaved, one of each in turn, after a warm-up, with the
counts calibrated so that a run lasts about --target-ms.
"""

import time

import benchutil

KEYS = 1000
REPORT_TIMEOUT = 60.0


def client(cmd, job, proxy):
    """For every command n, does its job n times, then reports."""
    while True:
        try:
            n = cmd.recv()
        except EOFError:
            return
        if job == "set":
            for i in range(n):
                proxy[i % KEYS] = i
        elif job == "get":
            for i in range(n):
                if proxy.get(i % KEYS) is None:
                    raise RuntimeError(f"key {i % KEYS} is missing")
        elif job == "append":
            for i in range(n):
                proxy.append(i)
        elif job == "put":
            for i in range(n):
                proxy.put(i)
        cmd.send(None)


def make_run(cmds, queue=None):
    """The parent's side of a run over these clients' command pipes."""
    def run(count):
        share = count // len(cmds)
        t0 = time.perf_counter()
        for i, cmd in enumerate(cmds):
            cmd.send(count - share * (len(cmds) - 1) if i == 0 else share)
        if queue is not None:
            for _ in range(count):
                queue.get(timeout=REPORT_TIMEOUT)
        for cmd in cmds:
            if not cmd.poll(REPORT_TIMEOUT):
                raise TimeoutError("no report from a client")
            cmd.recv()
        return time.perf_counter() - t0
    return run


RIGS = [
    ("dict_set", "1client", "ops/s"),
    ("dict_set", "2clients", "ops/s"),
    ("dict_get", "1client", "ops/s"),
    ("dict_get", "2clients", "ops/s"),
    ("list_append", "1client", "ops/s"),
    ("manager_queue", "8B", "msg/s"),
]


def rates(ctx, args, target):
    with ctx.Manager() as m:
        d_set = m.dict()
        d_get = m.dict()
        d_get.update({k: k for k in range(KEYS)})
        lst = m.list()
        q = m.Queue()
        specs = [
            [("set", d_set)],
            [("set", d_set), ("set", d_set)],
            [("get", d_get)],
            [("get", d_get), ("get", d_get)],
            [("append", lst)],
            [("put", q)],
        ]
        flat = [(client, (job, proxy)) for spec in specs for job, proxy in spec]
        with benchutil.children(ctx, flat) as cmds:
            runs = []
            at = 0
            for i, spec in enumerate(specs):
                mine = cmds[at:at + len(spec)]
                at += len(spec)
                runs.append(make_run(mine, q if RIGS[i][0] == "manager_queue" else None))
            results = benchutil.timed_runs(runs, args.reps, target)
        for (bench, param, unit), result in zip(RIGS, results):
            if isinstance(result, Exception):
                benchutil.emit_error(bench, param, unit, result)
            else:
                benchutil.emit(bench, param, unit, [n / max(s, 1e-12) for n, s in result])


def start_times(ctx, reps):
    def one():
        t0 = time.perf_counter()
        m = ctx.Manager()
        m.dict()
        took = time.perf_counter() - t0
        m.shutdown()
        return took
    one()
    return [one() * 1e3 for _ in range(reps)]


def main():
    parser = benchutil.plan_parser(__doc__)
    args, ctx, target = benchutil.parse_plan(parser)
    try:
        rates(ctx, args, target)
    except Exception as exc:
        for bench, param, unit in RIGS:
            benchutil.emit_error(bench, param, unit, exc)
    benchutil.measure("manager_start", "-", "ms", start_times, ctx, args.reps)


if __name__ == "__main__":
    main()
