"""Scale: one dispatcher with 50, 200 and 500 connected runner stand-ins.

For each size: the dispatcher's CPU spent on heartbeats while idle (1 s
interval), its memory per connected runner, and no-op job throughput, to
see whether throughput stays flat as runners grow.

Run: ``python -m bench.scale`` (about a minute). ``--sizes 10,20`` for less.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

from bench.common import all_ready, dispatcher, exit_on_sigterm, machine, standins
from bench.dispatch_throughput import run_noop_jobs


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


async def measure(endpoints: list[str], jobs: int, idle: float) -> tuple[float, float, float]:
    async with dispatcher(heartbeat=1.0) as running:
        before = _rss()
        for endpoint in endpoints:
            running.mesh.connect(endpoint)
        await all_ready(running, len(endpoints))
        per_runner = (_rss() - before) / len(endpoints)
        cpu, wall = time.process_time(), time.monotonic()
        await asyncio.sleep(idle)
        heartbeat_cpu = (time.process_time() - cpu) / (time.monotonic() - wall)
        rate = await run_noop_jobs(running, jobs)
    return heartbeat_cpu, per_runner, rate


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="50,200,500")
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--idle", type=float, default=3.0, help="seconds of idle heartbeats")
    args = parser.parse_args(argv)
    exit_on_sigterm()
    print(f"# {machine()}")
    for size in (int(s) for s in args.sizes.split(",")):
        with standins(size, 2, processes=4) as endpoints:
            cpu, memory, rate = asyncio.run(measure(endpoints, args.jobs, args.idle))
        print(f"scale_{size}_heartbeat_cpu: {cpu * 100:.1f} % of a core")
        print(f"scale_{size}_memory_per_runner: {memory / 1024:.1f} KiB")
        print(f"scale_{size}_throughput: {rate:.0f} jobs/s")


if __name__ == "__main__":
    main()
