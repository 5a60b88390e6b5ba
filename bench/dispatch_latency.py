"""Dispatch latency: job queued (committed to the store) -> the runner has its JOB frame.

Jobs are submitted one at a time at a steady rate to a dispatcher with K
runner stand-ins (bench/standin.py), which note the wall-clock time each JOB
arrives. Both ends run on this machine, so one clock serves both.

Run: ``python -m bench.dispatch_latency`` (about 15 s). Prints p50/p95/p99.
Targets (DESIGN.md): p50 under 2 ms, p99 under 10 ms on loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from bench.common import all_ready, dispatcher, exit_on_sigterm, machine, percentile, standins
from narwhal.dispatcher.core import Dispatcher
from narwhal.dispatcher.feed import on_jobs
from narwhal.dispatcher.records import JobRecord


async def measure(endpoints: list[str], rate: float, seconds: float) -> list[float]:
    async with dispatcher(endpoints, heartbeat=1.0) as running:
        await all_ready(running, len(endpoints))
        return await submitted_latencies(running, rate, seconds)


async def submitted_latencies(running: Dispatcher, rate: float, seconds: float) -> list[float]:
    """Submit ``rate * seconds`` jobs at a steady rate; each one's commit-to-JOB time."""
    latencies: list[float] = []
    total = int(rate * seconds)
    finished = asyncio.Event()

    def on_change(job: JobRecord) -> None:
        if job.state == "success" and job.reason.startswith("recv="):
            latencies.append(float(job.reason[5:]) - job.created_at)
            if len(latencies) == total:
                finished.set()

    running.feed.subscribe(on_jobs(on_change))
    start = time.monotonic()
    for i in range(total):
        # A steady rate: wait for this job's slot in the schedule.
        await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
        await running.submit(repo="/r", ref="refs/heads/main", sha=None, event="push", labels={})
    await asyncio.wait_for(finished.wait(), 60)
    return latencies


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=500.0, help="jobs per second")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--runners", type=int, default=4)
    args = parser.parse_args(argv)
    exit_on_sigterm()
    print(f"# {machine()}")
    print(f"# steady load: {args.rate:.0f} jobs/s for {args.seconds:.0f} s, {args.runners} runners")
    with standins(args.runners, 16) as endpoints:
        latencies = asyncio.run(measure(endpoints, args.rate, args.seconds))
    ms = [x * 1000 for x in latencies]
    print(f"dispatch_latency_p50: {percentile(ms, 50):.2f} ms (target < 2)")
    print(f"dispatch_latency_p95: {percentile(ms, 95):.2f} ms")
    print(f"dispatch_latency_p99: {percentile(ms, 99):.2f} ms (target < 10)")


if __name__ == "__main__":
    main()
