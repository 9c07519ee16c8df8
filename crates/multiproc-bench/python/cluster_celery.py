"""The Celery app of the cluster group's baseline (see cluster_bench.py):
the Redis broker and result backend on the redis-server socket named by
$CLUSTER_BENCH_REDIS_SOCKET, with Celery's defaults otherwise (JSON,
prefetch multiplier 4, acknowledgement before running)."""

import os

from celery import Celery

_socket = os.environ["CLUSTER_BENCH_REDIS_SOCKET"]

app = Celery(
    "cluster_celery",
    broker=f"redis+socket://{_socket}",
    backend=f"redis+socket://{_socket}",
)
app.conf.update(
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task
def incr(x):
    return x + 1
