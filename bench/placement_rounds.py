"""Placement alone: the cost of one scheduling round's choices, with no store and no socket.

A round as the dispatcher runs it, for each policy side by side:
``policy(name, signals).round(peers)`` over R ready runners (capacity C, a
few label sets and platforms, reports with CPUs, memory, disk and mirrors of
some of the repositories), then ``take(job)`` for each queued job (several
repositories and commits, some with resource needs) until no slot is left,
each slot reserved on its link. Reported per round and per job placed, best
of ``--repeat``, for 50 and 500 runners (the cost must grow with
log(runners) per job, not with runners), and for a round that places one
job (the usual one: a slot came free), which costs O(runners). Then the pending explanations of a
queue of ``--explain`` jobs none of which can start (``Explainer.look``
over the queue's order): once per second in the dispatcher.

Run: ``python -m bench.placement_rounds`` (a few seconds; ``--plain`` for the
runners and queue of before reports: labels and slots, one repository, no
needs). The last line reads ``placement: N ns/job`` (the default policy, 500
runners).
"""

from __future__ import annotations

import argparse
import random
import time
from collections import Counter

from narwhal.dispatcher.links import Link
from narwhal.dispatcher.mesh import LinkState
from narwhal.dispatcher.order import QueueIndex
from narwhal.dispatcher.placement import POLICIES, Placed, policy
from narwhal.dispatcher.records import JobRecord
from narwhal.dispatcher.signals import Signals
from narwhal.dispatcher.store.base import NewJob
from narwhal.dispatcher.waiting import Explainer
from narwhal.mesh import protocol as p

LABELS = ({}, {"os": "linux"}, {"gpu": "a100"}, {"os": "linux", "arch": "arm64"})
REPOS = tuple(f"https://forge.example/team/repo{i}.git" for i in range(16))
COMMITS = 20
GIB = 2**30


def _sha(repo: int, n: int) -> str:
    return f"{repo:04x}{n:036x}"


def signals() -> Signals:
    """Signals that know each repository's commits and what a checkout costs."""
    known = Signals()
    for r, repo in enumerate(REPOS):
        for n in range(COMMITS):
            known.checked_out("r0", repo, _sha(r, n), seconds=0.2, cold=False, now=0.0)
        known.checked_out("r0", repo, _sha(r, 0), seconds=3.0, cold=True, now=0.0)
    return known


def report(i: int) -> p.RunnerState:
    mirrors = tuple(
        p.WarmRepo(
            repo=REPOS[(i + k) % len(REPOS)],
            sha=_sha((i + k) % len(REPOS), i % COMMITS),
            used_at=0.0,
            size=30 * 2**20,
        )
        for k in range(4)
    )
    return p.RunnerState(
        cpus=8 if i % 4 else 2,
        load=(i % 7) / 2,
        memory_total=16 * GIB,
        memory_available=(4 + i % 8) * GIB,
        disk_free=(100 if i % 25 else 0) * 2**20 + 40 * GIB * (i % 25 != 0),
        os="linux",
        arch="arm64" if i % 3 else "amd64",
        docker=True,
        mirrors=mirrors,
        mirror_bytes=4 * 30 * 2**20,
        mirror_limit=5 * 30 * 2**20,
    )


def runners(count: int, capacity: int, *, plain: bool = False) -> list[Link]:
    """``plain``: no reports (the runners of before reports: labels and slots only)."""
    links = []
    for i in range(count):
        link = Link(endpoint=f"tcp://10.0.{i // 250}.{i % 250}:7000", alias=b"%d" % i)
        link.state, link.runner_id, link.capacity = LinkState.READY, f"r{i}", capacity
        link.labels = {"os": "linux", "arch": "arm64"} if i % 3 else {"gpu": "a100"}
        link.report = None if plain else report(i)
        links.append(link)
    return links


def queue(count: int, *, plain: bool = False) -> list[JobRecord]:
    """``plain``: one repository, no commit, no resource needs."""
    return [
        NewJob(
            repo=REPOS[0 if plain else i % len(REPOS)],
            ref="refs/heads/main",
            sha=_sha(i % len(REPOS), COMMITS - 1) if i % 2 and not plain else None,
            event="push",
            labels=dict(LABELS[i % len(LABELS)]),
            cpus=4.0 if i % 5 == 0 and not plain else None,
            memory=2 * GIB if i % 7 == 0 and not plain else None,
        ).record(i, 0.0)
        for i in range(count)
    ]


def one_round(name: str, links: list[Link], jobs: list[JobRecord]) -> tuple[float, int, int]:
    """Seconds for one round, jobs placed, and the most on one runner (reservations undone)."""
    placement = policy(name, signals(), rng=random.Random(1))
    started = time.perf_counter()
    slots = placement.round(links)
    placed = 0
    on: Counter[str] = Counter()
    for job in jobs:
        if not slots:
            break
        verdict = slots.take(job)
        if not isinstance(verdict, Placed):
            continue
        verdict.peer.held.add((job.id, job.attempt))  # as ``Mesh.reserve`` does
        on[verdict.peer.runner_id or ""] += 1
        placed += 1
    elapsed = time.perf_counter() - started
    for link in links:
        link.jobs.clear()
    return elapsed, placed, max(on.values(), default=0)


def small_round(name: str, links: list[Link], jobs: list[JobRecord]) -> float:
    """Seconds for a round that places one job (the usual round: a slot came free)."""
    placement = policy(name, signals(), rng=random.Random(1))
    started = time.perf_counter()
    placement.round(links).take(jobs[1])
    return time.perf_counter() - started


def explain(count: int) -> float:
    """Seconds ``Explainer.look`` takes over ``count`` queued jobs, 50 full runners."""
    links = runners(50, 2)
    for n, link in enumerate(links):
        link.jobs = {(10**9 + n * 10 + k, 1) for k in range(link.capacity)}
    index, jobs = QueueIndex(), {}
    for job in queue(count):
        index.add(job)
        jobs[job.id] = job
    placement = policy(POLICIES[0], Signals())
    explainer = Explainer(placement, Signals())
    started = time.perf_counter()
    explainer.look(jobs, index.walk({}), links)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--capacity", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=20_000, help="queued jobs per round")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--explain", type=int, default=100_000, help="queued jobs explained")
    parser.add_argument(
        "--plain", action="store_true", help="runners without reports, one repository, no needs"
    )
    args = parser.parse_args(argv)
    jobs = queue(args.jobs, plain=args.plain)
    last = 0.0
    for count in (50, 500):
        links = runners(count, args.capacity, plain=args.plain)
        for name in POLICIES:
            best, placed, most = min(one_round(name, links, jobs) for _ in range(args.repeat))
            small = min(small_round(name, links, jobs) for _ in range(args.repeat))
            per_job = best / placed * 1e9
            print(
                f"{name:>8}: {count} runners x {args.capacity} slots: {best * 1e3:.3f} ms/round"
                f" ({placed} jobs placed, at most {most} on one runner, {per_job:.0f} ns/job);"
                f" {small * 1e3:.3f} ms for a round that places one"
            )
            if name == POLICIES[0]:
                last = per_job
    took = min(explain(args.explain) for _ in range(3))
    per_job = took / args.explain * 1e9
    print(f"explain: {args.explain} queued jobs in {took * 1e3:.0f} ms ({per_job:.0f} ns/job)")
    print(f"placement: {last:.0f} ns/job")


if __name__ == "__main__":
    main()
