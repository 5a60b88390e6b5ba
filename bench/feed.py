"""Dispatch throughput with the metrics feed: no publisher, against 10 subscribers and a stuck one.

The whole dispatcher path of ``bench.dispatch_throughput`` (store,
scheduler, JOB frames to runner stand-in processes, ACCEPT, DONE, the
final state committed), run alternately:

- without a publisher;
- with a ``Publisher`` on the dispatcher's ``Feed`` (every job's moves,
  the runner and queue gauges), ``--subscribers`` real ``Subscriber``s
  each rebuilding a ``Replica`` in one other process, and one stuck
  subscriber there too: a raw SUB socket with RCVHWM 10 that never reads.

The best of each over ``--rounds`` rounds, and their ratio (target >=
0.9); and, as the cores are shared, the dispatcher process's CPU time per
job (median of the rounds), whose ratio says what the publisher costs the
dispatcher whatever else runs. Then what the feed did in the last round with subscribers: messages
published, snapshots served, and the subscribers' gaps and whether they
ended in sync with the publisher, and how long after the last job they
all had its last message (ten subscribers decoding in one Python thread
lag when the dispatcher runs flat out).

The subscriber process shares the machine's cores with the dispatcher and
the stand-ins, and ten subscribers decoding every message cost more CPU
than the dispatcher itself: on 2 cores that is measured too. ``--idle``
runs the subscriber process under SCHED_IDLE (it gets only what nothing
else wants, as a backend on another machine would take nothing);
``--raw`` makes the ten subscribers raw SUB sockets that read and drop
every message (what attaching costs the dispatcher, without decoding).

Run: ``python -m bench.feed``. The last line reads ``feed_ratio: R``.
``python -m bench.feed --follow ENDPOINT`` is the subscriber process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from statistics import median
from typing import Any

import zmq
import zmq.asyncio

from bench.common import ROOT, all_ready, dispatcher, exit_on_sigterm, machine, standins
from bench.dispatch_throughput import run_noop_jobs
from narwhal.dispatcher.core import Dispatcher
from narwhal.dispatcher.feedstate import FeedState
from narwhal.dispatcher.publisher import Publisher
from narwhal.mesh.feed import Snapshot
from narwhal.mesh.subscriber import Replica, Subscriber
from tests.support.feeds import job_life


async def timed(running: Dispatcher, jobs: int) -> tuple[float, float]:
    """Jobs/s, and this process's CPU time per job in microseconds (every thread:
    the loop and libzmq's I/O threads)."""
    cpu = time.process_time()
    rate = await run_noop_jobs(running, jobs)
    return rate, (time.process_time() - cpu) / jobs * 1e6


def event_cost() -> float:
    """Microseconds a feed event costs the publisher (``FeedState.apply``), measured
    on the events of a job's life, apart: timing each event in the run would cost more
    than the event."""
    state = FeedState()
    events = [event for job_id in range(1, 2001) for event in job_life(job_id)]
    started = time.perf_counter()
    for event in events:
        state.apply(event)
    return (time.perf_counter() - started) / len(events) * 1e6


async def plain(endpoints: list[str], jobs: int) -> tuple[float, float]:
    async with dispatcher(endpoints, heartbeat=2.0) as running:
        await all_ready(running, len(endpoints))
        return await timed(running, jobs)


async def with_feed(
    endpoints: list[str], jobs: int, args: argparse.Namespace
) -> tuple[tuple[float, float], dict[str, Any]]:
    """Jobs/s with the publisher and its subscribers; what the feed did."""
    async with (
        dispatcher(endpoints, heartbeat=2.0) as running,
        Publisher("tcp://127.0.0.1:0", running.feed) as publisher,
    ):
        events = 0

        def count(event: object) -> None:
            nonlocal events
            events += 1

        running.feed.subscribe(count)
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.feed",
            "--follow",
            publisher.endpoint,
            "--subscribers",
            str(args.subscribers),
            *(["--idle"] if args.idle else []),
            *(["--raw"] if args.raw else []),
            cwd=ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            assert child.stdout is not None and child.stdin is not None
            if (await asyncio.wait_for(child.stdout.readline(), 60)).strip() != b"ready":
                raise RuntimeError("the subscriber process did not start")
            await all_ready(running, len(endpoints))
            flushing, counted = publisher.flush_seconds, events
            rate = await timed(running, jobs)
            flushing, counted = publisher.flush_seconds - flushing, events - counted
            await asyncio.sleep(0.2)  # the last flushes
            target = publisher.seq  # beats may follow: in sync is at least this
            child.stdin.write(f"{target}\n".encode())
            await child.stdin.drain()
            line = await asyncio.wait_for(child.stdout.readline(), 90)
            feed = json.loads(line)
        finally:
            if child.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    child.kill()
            await child.wait()
        feed.update(
            flush_us_per_job=round(flushing / jobs * 1e6, 2),
            events_per_job=round(counted / jobs, 2),
            published=publisher.published,
            snapshots_served=publisher.snapshots,
            seq=publisher.seq,
            in_sync=sum(seq >= target for seq in feed.pop("seqs")),
        )
        return rate, feed


# the subscriber process


def raw_sub(ctx: zmq.asyncio.Context, endpoint: str, hwm: int = 1000) -> zmq.asyncio.Socket:
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, hwm)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.connect(endpoint)
    return sock


async def drop_all(sock: zmq.asyncio.Socket, ready: asyncio.Event) -> None:
    while True:
        await sock.recv_multipart()
        ready.set()


async def follow(endpoint: str, count: int, raw: bool) -> None:
    """``count`` subscribers into Replicas, one stuck SUB. Given a ``seq`` on stdin,
    waits (60 s at most) until every subscriber has it, then prints stats as JSON."""
    ctx = zmq.asyncio.Context()
    stuck = raw_sub(ctx, endpoint, hwm=10)  # never read
    readers = [raw_sub(ctx, endpoint) for _ in range(count if raw else 0)]
    subs = [Subscriber(endpoint, context=ctx, timeout=5.0) for _ in range(0 if raw else count)]
    synced = [asyncio.Event() for _ in range(count)]

    async def run(sub: Subscriber, ready: asyncio.Event) -> None:
        replica = Replica()
        async with contextlib.aclosing(sub.updates()) as updates:
            async for event in updates:
                replica.apply(event)
                if isinstance(event, Snapshot):
                    ready.set()

    tasks = [asyncio.create_task(run(s, e)) for s, e in zip(subs, synced, strict=False)]
    tasks += [asyncio.create_task(drop_all(r, e)) for r, e in zip(readers, synced, strict=False)]
    try:
        for event in synced:
            await event.wait()
        print("ready", flush=True)
        target = int(await asyncio.to_thread(sys.stdin.readline))
        started = time.monotonic()
        while min((s.seq for s in subs), default=target) < target:
            if time.monotonic() - started > 60:
                break
            await asyncio.sleep(0.05)
        stats: dict[str, Any] = {
            "catch_up_s": round(time.monotonic() - started, 2),
        }
        stats |= {
            name: sum(getattr(s, name) for s in subs)
            for name in ("gaps", "missed", "malformed", "snapshots")
        }
        print(json.dumps({**stats, "seqs": [s.seq for s in subs]}), flush=True)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for sock in (stuck, *readers):
            sock.close(0)
        ctx.term()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--runners", type=int, default=4)
    parser.add_argument("--capacity", type=int, default=64, help="slots per stand-in")
    parser.add_argument("--subscribers", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3, help="without and with, alternating")
    parser.add_argument(
        "--idle", action="store_true", help="the subscriber process under SCHED_IDLE"
    )
    parser.add_argument("--raw", action="store_true", help="raw SUB readers, no decoding")
    parser.add_argument("--follow", metavar="ENDPOINT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    exit_on_sigterm()
    if args.follow:
        if args.idle:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        asyncio.run(follow(args.follow, args.subscribers, args.raw))
        return
    print(f"# {machine()}")
    print(
        f"# {args.jobs} no-op jobs, {args.runners} runner stand-ins x {args.capacity} slots;"
        f" {args.subscribers} {'raw SUB readers' if args.raw else 'subscribers'} + 1 stuck"
        f"{', subscriber process SCHED_IDLE' if args.idle else ''}"
    )
    bare, fed, bare_cpu, fed_cpu = [], [], [], []
    feed: dict[str, Any] = {}
    for _ in range(args.rounds):
        with standins(args.runners, args.capacity) as endpoints:
            rate, cpu = asyncio.run(plain(endpoints, args.jobs))
            bare.append(rate)
            bare_cpu.append(cpu)
        with standins(args.runners, args.capacity) as endpoints:
            (rate, cpu), feed = asyncio.run(with_feed(endpoints, args.jobs, args))
            fed.append(rate)
            fed_cpu.append(cpu)
    print(f"# rounds without: {', '.join(f'{r:.0f}' for r in bare)} jobs/s")
    print(f"# rounds with: {', '.join(f'{r:.0f}' for r in fed)} jobs/s")
    middle = median(fed) / median(bare)
    print(f"# medians: {median(bare):.0f} / {median(fed):.0f} jobs/s = {middle:.2f}")
    print(f"# last round's feed: {json.dumps(feed)}")
    per_job = feed["flush_us_per_job"] + feed["events_per_job"] * event_cost()
    share = per_job / (1e6 / max(fed))
    print(f"feed_publisher_us_per_job: {per_job:.1f} us (flushes, and events at their cost apart)")
    print(f"feed_publisher_share: {share:.3f} of the dispatcher's time per job")
    if not args.raw:
        print(f"feed_subscribers_in_sync: {feed['in_sync']} of {args.subscribers}")
        print(f"feed_catch_up: {feed['catch_up_s']} s after the last job (all {args.subscribers})")
    print(f"# CPU per job, rounds without: {', '.join(f'{c:.0f}' for c in bare_cpu)} us")
    print(f"# CPU per job, rounds with: {', '.join(f'{c:.0f}' for c in fed_cpu)} us")
    cpu_ratio = median(bare_cpu) / median(fed_cpu)
    print(f"feed_cpu_per_job_without: {median(bare_cpu):.1f} us (median)")
    print(f"feed_cpu_per_job_with: {median(fed_cpu):.1f} us (median)")
    print(f"feed_cpu_ratio: {cpu_ratio:.2f} (jobs per CPU second, with / without)")
    print(f"feed_without: {max(bare):.0f} jobs/s")
    print(f"feed_with_subscribers: {max(fed):.0f} jobs/s")
    print(f"feed_ratio: {max(fed) / max(bare):.2f} (target >= 0.90)")


if __name__ == "__main__":
    main()
