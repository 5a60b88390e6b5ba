"""What the Prometheus metrics cost the dispatcher: per feed event, and per scrape.

In process, no daemons: a ``DispatcherMetrics`` on an unstarted dispatcher
(in-memory store, fake mesh) is handed the ``JobChanged`` events of many
jobs' lives (queued, assigned, running, ended: success or failed), as the
job table publishes them. Printed: the consumer's cost per ``JobChanged``
(called directly, and through ``Feed.publish`` against a feed with no
consumer), per event it ignores (a ``LogAppended``), the same with
per-repository labels, and one scrape's render time with a long queue and
many runners. Then the whole path: no-op jobs through a dispatcher and
runner stand-in processes (``bench.dispatch_throughput``'s run), with and
without the metrics consumer attached, alternating rounds, best of each.

Run: ``python -m bench.metrics_cost`` (under a minute on 2 cores).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from bench.common import all_ready, dispatcher, exit_on_sigterm, machine, standins
from bench.dispatch_throughput import run_noop_jobs
from narwhal.config import DispatcherConfig
from narwhal.dispatcher.core import Dispatcher
from narwhal.dispatcher.feed import Event, JobChanged, LogAppended
from narwhal.dispatcher.mesh import LinkState
from narwhal.dispatcher.metrics import DispatcherMetrics
from narwhal.dispatcher.records import JobRecord
from narwhal.dispatcher.store.base import NewJob
from narwhal.dispatcher.store.memory import MemoryStore
from narwhal.testing import FakeMesh, FakePeer


def _record(job_id: int, repo: str) -> JobRecord:
    return NewJob(repo=repo, ref="main", sha=None, event="push").record(job_id, 1000.0 + job_id)


def lives(jobs: int, repos: int) -> list[Event]:
    """Four moves per job, in the order the feed says them."""
    events: list[Event] = []
    for n in range(1, jobs + 1):
        job = _record(n, f"https://git.example.com/team/repo{n % repos}.git")
        t = job.created_at
        assigned = job._replace(state="assigned", updated_at=t + 0.3, runner_id="r1")
        running = assigned._replace(state="running", updated_at=t + 0.31, started_at=t + 0.31)
        end = "failed" if n % 10 == 0 else "success"
        ended = running._replace(state=end, updated_at=t + 2.5, finished_at=t + 2.5)
        events += [
            JobChanged(job, None),
            JobChanged(assigned, "queued"),
            JobChanged(running, "assigned"),
            JobChanged(ended, "running"),
        ]
    return events


def best_ns_per_call(call: Callable[[Event], None], events: Sequence[Event], rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter_ns()
        for event in events:
            call(event)
        best = min(best, (time.perf_counter_ns() - start) / len(events))
    return best


def consumer_costs(data_dir: Path, jobs: int, rounds: int, per_repo: bool) -> tuple[float, float]:
    """(ns per JobChanged called directly, ns added per JobChanged to a Feed.publish)."""
    dispatcher = Dispatcher(
        DispatcherConfig(data_dir=data_dir), store=MemoryStore(), mesh=FakeMesh()
    )
    events = lives(jobs, repos=50)
    bare = best_ns_per_call(dispatcher.feed.publish, events, rounds)
    metrics = DispatcherMetrics(dispatcher, per_repo=per_repo)
    direct = best_ns_per_call(metrics.on_event, events, rounds)
    through_feed = best_ns_per_call(dispatcher.feed.publish, events, rounds)
    metrics.close()
    return direct, through_feed - bare


def ignored_cost(data_dir: Path, rounds: int) -> float:
    dispatcher = Dispatcher(
        DispatcherConfig(data_dir=data_dir), store=MemoryStore(), mesh=FakeMesh()
    )
    metrics = DispatcherMetrics(dispatcher, per_repo=False)
    logs: list[Event] = [LogAppended(n, 1, n, 4096) for n in range(100_000)]
    return best_ns_per_call(metrics.on_event, logs, rounds)


def scrape_ms(data_dir: Path, queued: int, runners: int) -> float:
    mesh = FakeMesh()
    dispatcher = Dispatcher(DispatcherConfig(data_dir=data_dir), store=MemoryStore(), mesh=mesh)
    metrics = DispatcherMetrics(dispatcher, per_repo=False)
    for event in lives(10_000, repos=50):
        metrics.on_event(event)
    for n in range(queued):
        reason = "waiting: 0 of 1 runner can take it: 1 full (4/4 slots)" if n % 2 else "submitted"
        dispatcher.jobs.queue[n] = _record(n, "https://git.example.com/a.git")._replace(
            reason=reason
        )
    for n in range(runners):
        peer = mesh.connect(f"tcp://runner{n}.example:9000")
        assert isinstance(peer, FakePeer)
        peer.runner_id, peer.capacity, peer.state = f"runner-{n}", 4, LinkState.READY
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        text = metrics.registry.render()
        best = min(best, time.perf_counter() - start)
    assert f'narwhal_runner_slots{{runner="runner-{runners - 1}"}} 4' in text
    return best * 1000


async def throughput(endpoints: list[str], jobs: int, *, metrics: bool) -> float:
    async with dispatcher(endpoints, heartbeat=2.0) as running:
        await all_ready(running, len(endpoints))
        if metrics:
            DispatcherMetrics(running, per_repo=False)
        return await run_noop_jobs(running, jobs)


def throughputs(jobs: int, rounds: int) -> tuple[float, float]:
    """(best jobs/s without, best jobs/s with the metrics consumer)."""
    without, with_metrics = [], []
    for _ in range(rounds):
        with standins(4, 64) as endpoints:
            without.append(asyncio.run(throughput(endpoints, jobs, metrics=False)))
        with standins(4, 64) as endpoints:
            with_metrics.append(asyncio.run(throughput(endpoints, jobs, metrics=True)))
    return max(without), max(with_metrics)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=50_000, help="job lives (4 events each)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--queued", type=int, default=100_000, help="queued jobs at the scrape")
    parser.add_argument("--runners", type=int, default=500, help="ready runners at the scrape")
    parser.add_argument(
        "--throughput-jobs", type=int, default=10_000, help="no-op jobs per round (0: skip)"
    )
    parser.add_argument("--throughput-rounds", type=int, default=3)
    args = parser.parse_args()
    exit_on_sigterm()
    print(f"# {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        direct, added = consumer_costs(data, args.jobs, args.rounds, per_repo=False)
        repo_direct, repo_added = consumer_costs(data, args.jobs, args.rounds, per_repo=True)
        ignored = ignored_cost(data, args.rounds)
        scrape = scrape_ms(data, args.queued, args.runners)
    print(f"# {args.jobs} job lives, {4 * args.jobs} JobChanged events, best of {args.rounds}")
    print(f"metrics_cost_per_job_changed_us: {direct / 1000:.3f}")
    print(f"metrics_cost_per_job_changed_through_feed_us: {added / 1000:.3f}")
    print(f"metrics_cost_per_job_changed_per_repo_us: {repo_direct / 1000:.3f}")
    print(f"metrics_cost_per_job_changed_per_repo_through_feed_us: {repo_added / 1000:.3f}")
    print(f"metrics_cost_per_ignored_event_us: {ignored / 1000:.3f}")
    print(f"# scrape with {args.queued} queued jobs and {args.runners} ready runners")
    print(f"metrics_scrape_ms: {scrape:.2f}")
    if args.throughput_jobs:
        without, with_metrics = throughputs(args.throughput_jobs, args.throughput_rounds)
        rounds = args.throughput_rounds
        print(f"# {args.throughput_jobs} no-op jobs, 4 stand-ins x 64 slots, best of {rounds}")
        print(f"dispatch throughput without metrics: {without:.0f} jobs/s")
        print(f"dispatch throughput with metrics: {with_metrics:.0f} jobs/s")
        print(f"metrics_throughput_ratio: {with_metrics / without:.2f}")


if __name__ == "__main__":
    main()
