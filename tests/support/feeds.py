"""Dispatcher feed events for tests of the metrics publisher: job records, runner views, a mix."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from narwhal.dispatcher.feed import (
    Event,
    JobChanged,
    LogAppended,
    QueueDepth,
    RunnerChanged,
    StepChanged,
)
from narwhal.dispatcher.records import JobRecord


def record(job_id: int, state: str = "queued", **changes: Any) -> JobRecord:
    """A job record as the job table holds one."""
    now = time.time()
    fields: dict[str, Any] = {
        "id": job_id,
        "repo": "https://forge.example/team/app.git",
        "ref": "refs/heads/main",
        "sha": None,
        "event": "push",
        "labels": {},
        "matrix": None,
        "parent_id": None,
        "pipeline": None,
        "state": state,
        "reason": "",
        "attempt": 1,
        "runner_id": None,
        "cancel_requested": False,
        "created_at": now,
        "updated_at": now,
        "started_at": None,
        "finished_at": None,
    }
    return JobRecord(**{**fields, **changes})


def runner_json(endpoint: str, *, free: int = 2, jobs: tuple[int, ...] = ()) -> dict[str, Any]:
    """A runner's API view, as ``links.runner_json`` builds it."""
    return {
        "id": f"runner-{endpoint.rpartition(':')[2]}",
        "endpoint": endpoint,
        "source": "named",
        "state": "ready",
        "capacity": 2,
        "free": free,
        "labels": {"os": "linux"},
        "version": "0.1.0",
        "jobs": sorted(jobs),
        "last_seen": time.time(),
    }


def job_life(job_id: int, runner: str = "runner-1") -> Iterator[Event]:
    """What the feed says of one job, from queued to success, with a step and a log chunk."""
    queued = record(job_id)
    yield JobChanged(queued, None)
    assigned = queued._replace(state="assigned", runner_id=runner)
    yield JobChanged(assigned, "queued")
    running = assigned._replace(state="running", started_at=time.time())
    yield JobChanged(running, "assigned")
    yield StepChanged(job_id, 1, 0, "test", "running", None, None, time.time())
    yield LogAppended(job_id, 1, 1, 120)
    yield StepChanged(job_id, 1, 0, "test", "success", 0, 0.01, time.time())
    yield JobChanged(running._replace(state="success", finished_at=time.time()), "running")


def event_mix(jobs: int, *, first: int = 1) -> Iterator[Event]:
    """``jobs`` job lives, a runner load change and a queue depth every 10 jobs."""
    for job_id in range(first, first + jobs):
        yield from job_life(job_id)
        if job_id % 10 == 0:
            yield RunnerChanged(runner_json("tcp://127.0.0.1:1", free=job_id % 3), joined=False)
            yield QueueDepth(job_id % 7, 1, None)
