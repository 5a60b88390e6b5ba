"""The metrics feed's present, rebuilt from a snapshot and the updates after it.

Pure: no socket and no clock. A subscriber (``narwhal.mesh.subscriber``)
hands it what ``Subscriber.updates`` yields; ``render`` gives the maps of
the backend's ``GET /api/state`` (docs/backend.md): runners, jobs, the
queue, the counters, and the current step of each live job.

Memory is bounded whatever the feed says: live jobs (``max_live``, the
oldest dropped first), ended jobs (``max_ended``, the latest kept) and
runners (``max_runners``). Log and usage notices are not state: a backend
forwards them as they come.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from narwhal.mesh.feed import (
    LIVE_STATES,
    SNAPSHOT_ENDED,
    JobView,
    QueueView,
    RunnerView,
    Snapshot,
    StatsView,
    StepView,
    Update,
    to_map,
)

#: A runner whose view says this has left.
GONE = "gone"


class Replica:
    """Runners by endpoint, jobs by id, the queue and the counters, as the feed last said."""

    def __init__(
        self, *, max_ended: int = SNAPSHOT_ENDED, max_live: int = 10_000, max_runners: int = 10_000
    ) -> None:
        self.max_ended = max_ended
        self.max_live = max_live
        self.max_runners = max_runners
        self.runners: dict[str, RunnerView] = {}
        #: Queued and active jobs, in the order they came.
        self.live: dict[int, JobView] = {}
        #: Ended jobs, the latest last.
        self.ended: dict[int, JobView] = {}
        self.steps: dict[int, StepView] = {}
        self.queue = QueueView(queued=0, active=0, oldest=None)
        self.stats = StatsView(started_at=0.0, jobs_total={}, minutes=())
        #: Whether a snapshot was applied (the state means something).
        self.synced = False
        self._apply: dict[bytes, Callable[[Any], None]] = {
            JobView.TOPIC: self._job,
            RunnerView.TOPIC: self._runner,
            StepView.TOPIC: self._step,
            QueueView.TOPIC: self._queue,
            StatsView.TOPIC: self._stats,
        }

    def apply(self, event: Snapshot | Update) -> None:
        """Start again from a ``Snapshot``, or apply one ``Update`` (in feed order)."""
        if isinstance(event, Snapshot):
            self._reset(event)
            return
        apply = self._apply.get(event.topic)
        if apply is not None:
            for item in event.items:
                apply(item)

    def _reset(self, snapshot: Snapshot) -> None:
        self.runners.clear()
        self.live.clear()
        self.ended.clear()
        self.steps.clear()
        for runner in snapshot.runners:
            self._runner(runner)
        for job in snapshot.jobs:
            self._job(job)
        for step in snapshot.steps:
            self._step(step)
        self.queue = snapshot.queue
        self.stats = snapshot.stats
        self.synced = True

    def _job(self, job: JobView) -> None:
        if job.state in LIVE_STATES:
            self.live[job.id] = job
            self.ended.pop(job.id, None)
            _trim(self.live, self.max_live)
            return
        self.live.pop(job.id, None)
        self.steps.pop(job.id, None)
        self.ended.pop(job.id, None)  # re-inserted: the latest to end comes last
        self.ended[job.id] = job
        _trim(self.ended, self.max_ended)

    def _runner(self, runner: RunnerView) -> None:
        if runner.state == GONE:
            self.runners.pop(runner.endpoint, None)
            return
        self.runners[runner.endpoint] = runner
        _trim(self.runners, self.max_runners)

    def _step(self, step: StepView) -> None:
        if step.job_id in self.live:
            self.steps[step.job_id] = step

    def _queue(self, queue: QueueView) -> None:
        self.queue = queue

    def _stats(self, stats: StatsView) -> None:
        self.stats = stats

    def job(self, job_id: int) -> JobView | None:
        return self.live.get(job_id) or self.ended.get(job_id)

    def render(self) -> dict[str, Any]:
        """JSON-able maps: ``runners`` (by endpoint), ``jobs`` (newest first), ``queue``,
        ``stats`` and ``steps`` (the current step of each live job)."""
        jobs = sorted([*self.live.values(), *self.ended.values()], key=lambda j: -j.id)
        return {
            "runners": [to_map(r) for r in sorted(self.runners.values(), key=_runner_order)],
            "jobs": [to_map(j) for j in jobs],
            "queue": to_map(self.queue),
            "stats": to_map(self.stats),
            "steps": [to_map(s) for s in self.steps.values()],
        }


def _runner_order(runner: RunnerView) -> tuple[str, str]:
    return (runner.id or "", runner.endpoint)


def _trim(items: dict[Any, Any], limit: int) -> None:
    while len(items) > limit:
        del items[next(iter(items))]
