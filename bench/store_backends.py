"""The store backends compared: dispatch throughput and latency on SQLite and PostgreSQL.

The same in-process dispatcher and runner stand-ins (bench/standin.py) as
``bench.dispatch_throughput`` and ``bench.dispatch_latency``, once on a
throw-away SQLite file and once on a fresh schema of the local PostgreSQL
(the test server's, as tests/support/postgres.py makes them), alternating for ``--rounds`` rounds so
both see the same machine; the best throughput and the median latencies of
each are printed with their ratio.

- throughput: ``--jobs`` no-op jobs submitted in batches of 500, jobs/s until
  every one succeeded (create, assign, accept, done: four commits a job's
  life takes part in);
- latency: jobs submitted one at a time at ``--rate`` a second; the time from
  the job's commit to its JOB frame reaching a stand-in.

Run: ``python -m bench.store_backends`` (about a minute on 2 cores).
"""

from __future__ import annotations

import argparse
import asyncio

from bench.common import all_ready, dispatcher, exit_on_sigterm, machine, percentile, standins
from bench.dispatch_latency import submitted_latencies
from bench.dispatch_throughput import run_noop_jobs
from narwhal.storeurl import StoreUrl
from tests.support.postgres import fresh_schema


async def throughput(endpoints: list[str], jobs: int, db: StoreUrl | None) -> float:
    async with dispatcher(endpoints, heartbeat=2.0, db=db) as running:
        await all_ready(running, len(endpoints))
        return await run_noop_jobs(running, jobs)


async def latency(
    endpoints: list[str], rate: float, seconds: float, db: StoreUrl | None
) -> list[float]:
    async with dispatcher(endpoints, heartbeat=1.0, db=db) as running:
        await all_ready(running, len(endpoints))
        return await submitted_latencies(running, rate, seconds)


def one_round(
    endpoints: list[str], args: argparse.Namespace, db: StoreUrl | None
) -> tuple[float, float, float]:
    rate = asyncio.run(throughput(endpoints, args.jobs, db))
    ms = [x * 1000 for x in asyncio.run(latency(endpoints, args.rate, args.seconds, db))]
    return rate, percentile(ms, 50), percentile(ms, 99)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=200.0, help="jobs/s for latency")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--runners", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    exit_on_sigterm()
    print(f"# {machine()}")
    print(
        f"# throughput: {args.jobs} no-op jobs;"
        f" latency: {args.rate:.0f} jobs/s for {args.seconds:.0f} s"
    )
    results: dict[str, list[tuple[float, float, float]]] = {"sqlite": [], "postgresql": []}
    with standins(args.runners, 64) as endpoints:
        for n in range(args.rounds):
            results["sqlite"].append(one_round(endpoints, args, None))
            with fresh_schema() as url:
                results["postgresql"].append(one_round(endpoints, args, url))
            for kind, runs in results.items():
                rate, p50, p99 = runs[-1]
                print(
                    f"# round {n + 1} {kind}: {rate:,.0f} jobs/s,"
                    f" latency p50 {p50:.2f} ms p99 {p99:.2f} ms"
                )
    best = {kind: max(r[0] for r in runs) for kind, runs in results.items()}
    p50 = {kind: sorted(r[1] for r in runs)[len(runs) // 2] for kind, runs in results.items()}
    p99 = {kind: sorted(r[2] for r in runs)[len(runs) // 2] for kind, runs in results.items()}
    for kind in results:
        print(f"store_{kind}_throughput: {best[kind]:,.0f} jobs/s")
        print(f"store_{kind}_latency: p50 {p50[kind]:.2f} ms, p99 {p99[kind]:.2f} ms")
    print(f"store_postgresql_vs_sqlite_throughput: {best['postgresql'] / best['sqlite']:.2f}x")


if __name__ == "__main__":
    main()
