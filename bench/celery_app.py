"""The Celery peer for bench/dispatch_throughput.py: one no-op task, rpc results."""

from __future__ import annotations

import os

from celery import Celery

app = Celery(
    "narwhal_bench",
    broker=os.environ.get("NARWHAL_BENCH_AMQP", "amqp://guest:guest@127.0.0.1:5672//"),
    backend="rpc://",
)
app.conf.update(worker_prefetch_multiplier=64, task_acks_late=False, result_expires=60)


@app.task
def noop() -> None:
    """The same work as a Narwhal no-op job: nothing."""
