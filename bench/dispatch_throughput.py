"""Dispatch throughput: no-op jobs through the whole dispatcher path.

Each job is created in the store, scheduled, sent as a JOB frame to one of K
runner stand-in processes (bench/standin.py), accepted, finished, and its
final state committed, once over a plain mesh and once with CurveZMQ (the
stand-ins are CURVE clients trusted in the allow-list, every frame's key is
checked), alternating for ``--rounds`` rounds; the best of each is reported
with their ratio. In the same run:

- the ceiling: a bare pyzmq ROUTER loop sending the same JOB frames to the
  same stand-ins (same window) and decoding their ACCEPT/DONE frames, with
  no store and no scheduler;
- the peer: Celery on the local RabbitMQ doing the same no-op work with
  results collected (prefork, 2 worker processes, rpc backend).

Run: ``python -m bench.dispatch_throughput`` (defaults finish in well under a
minute on 2 cores). The last line reads ``dispatch_throughput: N jobs/s``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
import uuid

import zmq

from bench.common import (
    ROOT,
    all_ready,
    curve_standins,
    dispatcher,
    exit_on_sigterm,
    machine,
    standins,
)
from narwhal.config import ServerCurve
from narwhal.dispatcher.core import Dispatcher
from narwhal.dispatcher.feed import on_jobs
from narwhal.dispatcher.records import JobRecord
from narwhal.dispatcher.store.base import NewJob
from narwhal.mesh import protocol as p


def ceiling(endpoints: list[str], jobs: int, window: int) -> float:
    """Bare ROUTER loop: pipelined JOB frames, window per runner, no store."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    aliases = []
    for i, endpoint in enumerate(endpoints):
        alias = f"c{i}".encode()
        sock.setsockopt(zmq.CONNECT_ROUTING_ID, alias)
        sock.connect(endpoint)
        sock.send_multipart([alias, p.encode(p.Hello(session="ceiling"))])
        aliases.append(alias)
    sessions = {}
    while len(sessions) < len(aliases):
        alias, frame = sock.recv_multipart()
        message = p.decode(frame)
        if isinstance(message, p.Ready):
            sessions[alias] = message.session
    started = time.perf_counter()
    sent = done = 0
    credit = dict.fromkeys(aliases, window)
    while done < jobs:
        for alias in aliases:
            while credit[alias] and sent < jobs:
                sent += 1
                credit[alias] -= 1
                job = p.Job(
                    job_id=sent,
                    attempt=1,
                    runner_session=sessions[alias],
                    repo="/r",
                    ref="refs/heads/main",
                    sha=None,
                    event="push",
                )
                sock.send_multipart([alias, p.encode(job)])
        alias, frame = sock.recv_multipart()
        if isinstance(p.decode(frame), p.Done):
            done += 1
            credit[alias] += 1
    elapsed = time.perf_counter() - started
    sock.close(0)
    ctx.term()
    return jobs / elapsed


async def narwhal(endpoints: list[str], jobs: int, curve: ServerCurve | None = None) -> float:
    """The whole dispatcher path, store included."""
    async with dispatcher(endpoints, heartbeat=2.0, curve=curve) as running:
        await all_ready(running, len(endpoints))
        return await run_noop_jobs(running, jobs)


async def run_noop_jobs(dispatcher: Dispatcher, jobs: int) -> float:
    """Submit ``jobs`` no-op jobs in batches; jobs/s until every one has succeeded."""
    finished = asyncio.Event()
    done = 0

    def on_change(job: JobRecord) -> None:
        nonlocal done
        if job.state == "success":
            done += 1
            if done == jobs:
                finished.set()

    dispatcher.feed.subscribe(on_jobs(on_change))
    started = time.perf_counter()
    job = NewJob(repo="/r", ref="refs/heads/main", sha=None, event="push")
    for first in range(0, jobs, 500):
        await dispatcher.submit_many([job] * min(500, jobs - first))
    await asyncio.wait_for(finished.wait(), 300)
    return jobs / (time.perf_counter() - started)


def celery(jobs: int) -> float:
    """Celery 5 on the local RabbitMQ: the same no-op work, results collected."""
    from bench.celery_app import app, noop

    queue = f"narwhal-bench-{uuid.uuid4().hex[:8]}"
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "bench.celery_app",
            "worker",
            "-c",
            "2",
            "-P",
            "prefork",
            "-Q",
            queue,
            "--without-heartbeat",
            "--without-gossip",
            "--without-mingle",
            "-l",
            "warning",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        noop.apply_async(queue=queue).get(timeout=60)  # the worker is up
        started = time.perf_counter()
        results = [noop.apply_async(queue=queue) for _ in range(jobs)]
        for result in results:
            result.get(timeout=120)
        rate = jobs / (time.perf_counter() - started)
    finally:
        worker.terminate()
        worker.wait(30)
        with app.connection_for_write() as conn:
            conn.default_channel.queue_delete(queue)
    return rate


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--runners", type=int, default=4)
    parser.add_argument("--capacity", type=int, default=64, help="slots per stand-in")
    parser.add_argument("--celery-jobs", type=int, default=2_000)
    parser.add_argument("--no-celery", action="store_true")
    parser.add_argument("--rounds", type=int, default=3, help="plain and CURVE runs, alternating")
    args = parser.parse_args(argv)
    exit_on_sigterm()
    print(f"# {machine()}")
    print(f"# {args.jobs} no-op jobs, {args.runners} runner stand-ins x {args.capacity} slots")
    with standins(args.runners, args.capacity) as endpoints:
        bare = ceiling(endpoints, args.jobs, args.capacity)
        print(f"ceiling (bare pyzmq ROUTER/DEALER, same frames): {bare:.0f} jobs/s")
    plain, curved = [], []
    for _ in range(args.rounds):
        with standins(args.runners, args.capacity) as endpoints:
            plain.append(asyncio.run(narwhal(endpoints, args.jobs)))
        with curve_standins(args.runners, args.capacity) as (endpoints, curve):
            curved.append(asyncio.run(narwhal(endpoints, args.jobs, curve)))
    rate, secure = max(plain), max(curved)
    print(f"narwhal without CURVE (--insecure): {rate:.0f} jobs/s")
    print(f"narwhal with CURVE: {secure:.0f} jobs/s")
    print(f"curve/plain ratio: {secure / rate:.2f} (target >= 0.90)")
    print(f"narwhal/ceiling ratio: {rate / bare:.2f} (target >= 0.5)")
    if not args.no_celery:
        peer = celery(args.celery_jobs)
        print(f"celery (prefork x2, RabbitMQ, rpc results): {peer:.0f} jobs/s")
        print(f"narwhal/celery ratio: {rate / peer:.1f}x (target >= 20x)")
    print(f"dispatch_throughput_curve: {secure:.0f} jobs/s")
    print(f"dispatch_throughput: {rate:.0f} jobs/s")


if __name__ == "__main__":
    main()
