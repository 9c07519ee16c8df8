"""Group `pickle` for CPython (see ../src/groups/pickle.rs).

* pickle_roundtrip (us), param dict_small: this process, a
  multiprocessing.connection Client, sends a small dict (3 keys, one a list
  of 8 floats) with conn.send and receives it back with conn.recv, to two
  echo servers in turn, batch after batch: multiproc's PickleConnection
  server (--rust-address, run by the Rust side) and a Python server doing
  the same with conn.recv()/conn.send() (a child of this script). Printed
  as `pickle_roundtrip` (the Python server) and `pickle_roundtrip_rust`
  (multiproc's), per-batch mean round-trip times. A third server
  (--floor-address, run by the Rust side) echoes the bytes without
  decoding them: `pickle_roundtrip_floor`, what any server costs this
  client at least (its own pickling, and the socket).
* pickle_decode (MB/s), param list_1k_floats: pickle.loads of a protocol 4
  pickle of a list of 1000 floats, which is also written to --pickle-out
  for the Rust side to decode the same bytes (with --prepare-only, the
  script only writes it).
"""

import multiprocessing
import pickle
import time
from multiprocessing.connection import Client, Listener

import benchutil

PARAM_RT = "dict_small"
PARAM_DECODE = "list_1k_floats"
MESSAGE = {"id": 7, "name": "job", "data": [0.5 * i for i in range(8)]}


def python_server(address, key, ready):
    with Listener(address, authkey=key) as listener:
        ready.set()
        with listener.accept() as conn:
            while True:
                try:
                    conn.send(conn.recv())
                except EOFError:
                    return


def batch(conn, n):
    t0 = time.perf_counter()
    for _ in range(n):
        conn.send(MESSAGE)
        if conn.recv() != MESSAGE:
            raise RuntimeError("the echo differs")
    return (time.perf_counter() - t0) * 1e6 / n


def roundtrips(rust_address, key, py_address, floor_address, batches, per_batch):
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    server = ctx.Process(target=python_server, args=(py_address, key, ready), daemon=True)
    server.start()
    try:
        if not ready.wait(10):
            raise RuntimeError("the Python server did not start")
        rust = Client(rust_address, authkey=key)
        py = Client(py_address, authkey=key)
        floor = Client(floor_address, authkey=key)
        for conn in (rust, py, floor):
            batch(conn, per_batch)
        rust_samples, py_samples, floor_samples = [], [], []
        for _ in range(batches):
            rust_samples.append(batch(rust, per_batch))
            py_samples.append(batch(py, per_batch))
            floor_samples.append(batch(floor, per_batch))
        for conn in (rust, py, floor):
            conn.close()
    finally:
        server.join(10)
        if server.is_alive():
            server.kill()
    return rust_samples, py_samples, floor_samples


def decode_rate(data, reps, target_ms):
    n = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            pickle.loads(data)
        if time.perf_counter() - t0 > target_ms / 4000:
            break
        n *= 2
    samples = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(n):
            pickle.loads(data)
        samples.append(len(data) * n / (time.perf_counter() - t0) / 1e6)
    return samples


def main():
    parser = benchutil.plan_parser(__doc__)
    parser.add_argument("--rust-address", required=True)
    parser.add_argument("--python-address", required=True)
    parser.add_argument("--floor-address", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--pickle-out", required=True)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--prepare-only", action="store_true",
                        help="only write the list_1k_floats pickle")
    args = parser.parse_args()
    key = args.key.encode()

    data = pickle.dumps([i * 1.000001 for i in range(1000)], 4)
    with open(args.pickle_out, "wb") as f:
        f.write(data)
    if args.prepare_only:
        return
    benchutil.measure("pickle_decode", PARAM_DECODE, "MB/s", decode_rate,
                      data, args.reps, args.target_ms)

    try:
        rust, py, floor = roundtrips(args.rust_address, key, args.python_address,
                                     args.floor_address, args.batches, args.batch)
    except Exception as exc:
        benchutil.emit_error("pickle_roundtrip", PARAM_RT, "us", exc)
        benchutil.emit_error("pickle_roundtrip_rust", PARAM_RT, "us", exc)
        benchutil.emit_error("pickle_roundtrip_floor", PARAM_RT, "us", exc)
    else:
        benchutil.emit("pickle_roundtrip", PARAM_RT, "us", py)
        benchutil.emit("pickle_roundtrip_rust", PARAM_RT, "us", rust)
        benchutil.emit("pickle_roundtrip_floor", PARAM_RT, "us", floor)


if __name__ == "__main__":
    main()
