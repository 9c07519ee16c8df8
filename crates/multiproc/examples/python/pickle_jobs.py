"""The Python side of `cargo run --example pickle_pool`: standard library only.

    python3 pickle_jobs.py client ADDRESS KEY   # send jobs to a Rust server
    python3 pickle_jobs.py server ADDRESS KEY   # answer a Rust client

ADDRESS is a Unix socket path or HOST:PORT.
"""

import os
import sys
from multiprocessing.connection import Client, Listener


def parse(address):
    if ":" in address and not address.startswith("/"):
        host, port = address.rsplit(":", 1)
        return (host, int(port))
    return address


def client(address, key):
    with Client(parse(address), authkey=key) as conn:
        jobs = [
            {"id": 1, "op": "sum", "numbers": [1.0, 2.0, 3.5]},
            {"id": 2, "op": "max", "numbers": [4.0, -1.0]},
            {"id": 3, "op": "mean", "numbers": [2.0, 4.0]},
            {"id": 4, "op": "median", "numbers": [1.0]},
        ]
        for job in jobs:
            conn.send(job)
            answer = conn.recv()
            if answer["error"] is None:
                print(f"job {answer['id']}: {job['op']} = {answer['value']} (rust worker {answer['worker']})")
            else:
                print(f"job {answer['id']}: {job['op']} failed: {answer['error']}")


def server(address, key):
    with Listener(parse(address), authkey=key) as listener:
        print("listening on", listener.address, flush=True)
        with listener.accept() as conn:
            while True:
                try:
                    job = conn.recv()
                except EOFError:
                    return
                numbers = job["numbers"]
                ops = {"sum": sum, "max": max, "mean": lambda n: sum(n) / len(n)}
                op = ops.get(job["op"])
                conn.send({
                    "id": job["id"],
                    "value": op(numbers) if op else None,
                    "error": None if op else f"cannot {job['op']} these numbers",
                    "worker": os.getpid(),
                })


if __name__ == "__main__":
    mode, address, key = sys.argv[1], sys.argv[2], sys.argv[3].encode()
    {"client": client, "server": server}[mode](address, key)
