"""Placement alone: the cost of one scheduling round's choices, with no store and no socket.

A round as the dispatcher runs it: ``MostFree().round(peers)`` over R ready
runners (capacity C, a few label sets), then ``take(job)`` for each queued
job until no slot is left, each slot reserved on its link. Reported per
round and per job placed, best of ``--repeat``, for 50 and 500 runners
(the cost must grow with log(runners) per job, not with runners).

Run: ``python -m bench.placement_rounds`` (a few seconds). The last line reads
``placement: N ns/job`` (500 runners).
"""

from __future__ import annotations

import argparse
import time

from narwhal.dispatcher.links import Link
from narwhal.dispatcher.mesh import LinkState
from narwhal.dispatcher.placement import MostFree
from narwhal.dispatcher.records import JobRecord

LABELS = ({}, {"os": "linux"}, {"gpu": "a100"}, {"os": "linux", "arch": "arm64"})


def runners(count: int, capacity: int) -> list[Link]:
    links = []
    for i in range(count):
        link = Link(endpoint=f"tcp://10.0.{i // 250}.{i % 250}:7000", alias=b"%d" % i)
        link.state, link.runner_id, link.capacity = LinkState.READY, f"r{i}", capacity
        link.labels = {"os": "linux", "arch": "arm64"} if i % 3 else {"gpu": "a100"}
        links.append(link)
    return links


def queue(count: int) -> list[JobRecord]:
    return [
        JobRecord(
            id=i,
            repo="/r",
            ref="refs/heads/main",
            sha=None,
            event="push",
            labels=dict(LABELS[i % len(LABELS)]),
            matrix=None,
            parent_id=None,
            pipeline=None,
            state="queued",
            reason="submitted",
            attempt=1,
            runner_id=None,
            cancel_requested=False,
            created_at=0.0,
            updated_at=0.0,
            started_at=None,
            finished_at=None,
        )
        for i in range(count)
    ]


def one_round(links: list[Link], jobs: list[JobRecord]) -> tuple[float, int]:
    """Seconds for one round, and how many jobs it placed (reservations undone after)."""
    placement = MostFree()
    started = time.perf_counter()
    slots = placement.round(links)
    placed = 0
    for job in jobs:
        if not slots:
            break
        link = slots.take(job)
        if link is None:
            continue
        link.held.add((job.id, job.attempt))  # as ``Mesh.reserve`` does
        placed += 1
    elapsed = time.perf_counter() - started
    for link in links:
        link.jobs.clear()
    return elapsed, placed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--capacity", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=20_000, help="queued jobs per round")
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args(argv)
    jobs = queue(args.jobs)
    per_job = 0.0
    for count in (50, 500):
        links = runners(count, args.capacity)
        best, placed = min(one_round(links, jobs) for _ in range(args.repeat))
        per_job = best / placed * 1e9
        print(
            f"{count} runners x {args.capacity} slots: {best * 1e3:.3f} ms/round"
            f" ({placed} jobs placed, {per_job:.0f} ns/job)"
        )
    print(f"placement: {per_job:.0f} ns/job")


if __name__ == "__main__":
    main()
