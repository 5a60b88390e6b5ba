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
0.9). Then what the feed did in the last round with subscribers: messages
published, snapshots served, and the subscribers' gaps and whether they
ended in sync with the publisher.

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
from statistics import median
from typing import Any

import zmq
import zmq.asyncio

from bench.common import ROOT, all_ready, dispatcher, exit_on_sigterm, machine, standins
from bench.dispatch_throughput import run_noop_jobs
from narwhal.dispatcher.publisher import Publisher
from narwhal.mesh.feed import Snapshot
from narwhal.mesh.subscriber import Replica, Subscriber


async def plain(endpoints: list[str], jobs: int) -> float:
    async with dispatcher(endpoints, heartbeat=2.0) as running:
        await all_ready(running, len(endpoints))
        return await run_noop_jobs(running, jobs)


async def with_feed(
    endpoints: list[str], jobs: int, args: argparse.Namespace
) -> tuple[float, dict[str, Any]]:
    """Jobs/s with the publisher and its subscribers; what the feed did."""
    async with (
        dispatcher(endpoints, heartbeat=2.0) as running,
        Publisher("tcp://127.0.0.1:0", running.feed) as publisher,
    ):
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
            rate = await run_noop_jobs(running, jobs)
            await asyncio.sleep(1.0)  # the last flushes, and time to read them
            target = publisher.seq  # beats may follow: in sync is at least this
            child.stdin.write(b"stop\n")
            await child.stdin.drain()
            line = await asyncio.wait_for(child.stdout.readline(), 60)
            feed = json.loads(line)
        finally:
            if child.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    child.kill()
            await child.wait()
        feed.update(
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
    """``count`` subscribers into Replicas, one stuck SUB; stats as JSON on "stop"."""
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
        await asyncio.to_thread(sys.stdin.readline)
        stats = {
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
    bare, fed = [], []
    feed: dict[str, Any] = {}
    for _ in range(args.rounds):
        with standins(args.runners, args.capacity) as endpoints:
            bare.append(asyncio.run(plain(endpoints, args.jobs)))
        with standins(args.runners, args.capacity) as endpoints:
            rate, feed = asyncio.run(with_feed(endpoints, args.jobs, args))
            fed.append(rate)
    print(f"# rounds without: {', '.join(f'{r:.0f}' for r in bare)} jobs/s")
    print(f"# rounds with: {', '.join(f'{r:.0f}' for r in fed)} jobs/s")
    middle = median(fed) / median(bare)
    print(f"# medians: {median(bare):.0f} / {median(fed):.0f} jobs/s = {middle:.2f}")
    print(f"# last round's feed: {json.dumps(feed)}")
    if not args.raw:
        print(f"feed_subscribers_in_sync: {feed['in_sync']} of {args.subscribers}")
    print(f"feed_without: {max(bare):.0f} jobs/s")
    print(f"feed_with_subscribers: {max(fed):.0f} jobs/s")
    print(f"feed_ratio: {max(fed) / max(bare):.2f} (target >= 0.90)")


if __name__ == "__main__":
    main()
