"""What the metrics publisher holds: the state a snapshot needs, and the changes since a flush.

Fed with the dispatcher's ``Feed`` events, on the event loop and
synchronously, so each event costs a dict write or two and nothing is
built: a job's record is kept as the job table made it (the same object,
no copy), and turned into its wire map (redacted as the API redacts it)
only when a flush or a snapshot needs it. Changes are kept by key (a job,
a step, a runner), so a job that moved four times between two flushes is
published once, in its latest state. Where a job stands (live, ended,
counted) is settled when it is taken for a flush, once per flush rather
than once per move: the dispatcher's hot path publishes four events per
job.

Held for a snapshot: runners by endpoint (gone ones dropped), the live
jobs (queued and active; the snapshot takes the active ones and the oldest
``SNAPSHOT_QUEUED`` queued), the last ``SNAPSHOT_ENDED`` ended jobs, the
current step of each live job, the queue, and the counters (jobs ended by
state, and per minute for the last hour).
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from narwhal.dispatcher.feed import (
    Event,
    JobChanged,
    JobUpdated,
    LogAppended,
    QueueDepth,
    RunnerChanged,
    RunnerLeft,
    StepChanged,
    UsageSampled,
)
from narwhal.dispatcher.records import TERMINAL, JobRecord, JobState
from narwhal.mesh.feed import (
    SNAPSHOT_ENDED,
    SNAPSHOT_QUEUED,
    JobView,
    LogView,
    QueueView,
    RunnerView,
    Snapshot,
    StatsView,
    StepView,
    UsageView,
    fields_of,
)
from narwhal.redact import redacted

JOB_FIELDS = fields_of(JobView)
RUNNER_FIELDS = fields_of(RunnerView)
#: Usage samples of one step kept between two flushes at most.
MAX_SAMPLES = 600
MINUTES = 60
#: New queued jobs one flush shows at most (the newest; see ``FeedState._settle``).
QUEUED_BURST = 100

Map = dict[str, Any]


#: The job record's fields on the wire: its first ones (all but ``fork_of``, the
#: last; every ``JobView`` field is one of the record's: tests say so). A view is
#: then one ``dict(zip(...))``, without ``to_json``'s copy of ``fork_of`` to delete
#: and its two calls to ``redacted``: once per job per flush, on the loop.
_SHOWN = JobRecord._fields[: len(JOB_FIELDS)]


def job_map(job: JobRecord) -> Map:
    """A job's wire map: ``JobRecord.to_json`` (repo and reason redacted), feed fields only."""
    shown = dict(zip(_SHOWN, job, strict=False))  # stops at the last field shown
    if "@" in job.repo:  # ``redacted``'s own short cut, without two calls per job
        shown["repo"] = redacted(job.repo)
    if "@" in job.reason:
        shown["reason"] = redacted(job.reason)
    return shown


def runner_map(runner: Mapping[str, Any], *, gone: str | None = None) -> Map:
    """A runner's wire map from its API view (``links.runner_json``); ``gone``: why it left."""
    view = {name: runner.get(name) for name in RUNNER_FIELDS}
    view["labels"] = dict(view["labels"] or {})
    view["jobs"] = list(view["jobs"] or ())
    view["reason"] = gone or ""
    if gone is not None:
        view["state"] = "gone"
    return view


class FeedState:
    """The publisher's state; ``apply`` takes events, ``take`` and ``snapshot`` read it."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self.started_at = clock()
        self.runners: dict[str, Map] = {}
        #: Queued and active jobs, in the order they were first seen.
        self.live: dict[int, JobRecord] = {}
        self.ended: dict[int, JobRecord] = {}
        self.steps: dict[int, Map] = {}
        self.jobs_total: dict[str, int] = {}
        self._minutes: deque[list[int]] = deque(maxlen=MINUTES)
        self._depth: QueueDepth | None = None
        # What changed since the last ``take``.
        self._jobs: dict[int, JobRecord] = {}
        self._runners: dict[str, Map] = {}
        self._steps: dict[tuple[int, int, int], Map] = {}
        self._logs: dict[int, Map] = {}
        self._usage: dict[tuple[int, int, int], Map] = {}
        self._queue_changed = False
        self._stats_changed = False
        self._minute = self._minute_of(self.started_at)
        self._handlers: dict[type[Any], Callable[[Any], None]] = {
            JobChanged: self._job_changed,
            JobUpdated: self._job_updated,
            StepChanged: self._step_changed,
            LogAppended: self._log_appended,
            UsageSampled: self._usage_sampled,
            RunnerChanged: self._runner_changed,
            RunnerLeft: self._runner_left,
            QueueDepth: self._queue_depth,
        }

    # events

    def apply(self, event: Event) -> None:
        handler = self._handlers.get(type(event))
        if handler is not None:  # an event kind added later: not on the wire yet
            handler(event)

    def seed(self, jobs: Iterable[JobRecord], runners: Iterable[Mapping[str, Any]]) -> None:
        """What the dispatcher held before the publisher started (no change published)."""
        for job in jobs:
            if job.state not in TERMINAL:
                self.live[job.id] = job
        for runner in runners:
            self.runners[runner["endpoint"]] = runner_map(runner)

    def _job_changed(self, event: JobChanged) -> None:
        self._jobs[event.job.id] = event.job

    def _settle(self, jobs: list[JobRecord]) -> list[Map]:
        """The views of ``jobs`` (taken for a flush), each settled where it stands now:
        live, or ended and counted once. One loop for the lot: it runs per job per flush.

        A burst of new jobs still queued is shown by its newest ``QUEUED_BURST``
        only: nobody reads thousands of waiting jobs off a wall screen, the
        queue's depth and oldest job say the rest (``QueueView``), and each job
        is shown anyway once it moves. In a burst of submissions this halves
        what every subscriber decodes per job."""
        live, views = self.live, []
        queued = sum(1 for job in jobs if job.state == JobState.QUEUED)
        skip = queued - QUEUED_BURST
        for job in jobs:
            if job.state in TERMINAL:
                self._ended(job)
            else:
                live[job.id] = job
                if skip > 0 and job.state == JobState.QUEUED:
                    skip -= 1
                    continue
            views.append(job_map(job))
        return views

    def _ended(self, job: JobRecord) -> None:
        self.live.pop(job.id, None)
        self.steps.pop(job.id, None)
        if self.ended.pop(job.id, None) is None:
            self._count(job.state)
        self.ended[job.id] = job
        if len(self.ended) > SNAPSHOT_ENDED:
            del self.ended[next(iter(self.ended))]

    def _count(self, state: str) -> None:
        self.jobs_total[state] = self.jobs_total.get(state, 0) + 1
        start = self._minute_of(self._clock())
        if not self._minutes or self._minutes[-1][0] != start:
            self._minutes.append([start, 0, 0])
        bucket = self._minutes[-1]
        bucket[1] += 1
        if state == JobState.SUCCESS:
            bucket[2] += 1
        self._stats_changed = True

    def _job_updated(self, event: JobUpdated) -> None:
        # None: not in the dispatcher's memory (it ended); nothing new to show.
        if event.job is not None:
            self._jobs[event.job.id] = event.job

    def _step_changed(self, event: StepChanged) -> None:
        step = {
            "job_id": event.job_id,
            "attempt": event.attempt,
            "index": event.index,
            "name": event.name,
            "status": event.status,
            "exit_code": event.exit_code,
            "duration": event.duration,
            "at": event.at,
        }
        self._steps[event.job_id, event.attempt, event.index] = step
        if event.job_id not in self.ended:  # a live job's (the snapshot checks)
            self.steps[event.job_id] = step

    def _log_appended(self, event: LogAppended) -> None:
        known = self._logs.get(event.job_id)
        if known is not None and known["attempt"] == event.attempt:
            known["seq"] = max(known["seq"], event.seq)
            known["size"] += event.size
            return
        self._logs[event.job_id] = {
            "job_id": event.job_id,
            "attempt": event.attempt,
            "seq": event.seq,
            "size": event.size,
        }

    def _usage_sampled(self, event: UsageSampled) -> None:
        key = (event.job_id, event.attempt, event.index)
        known = self._usage.get(key)
        if known is None:
            known = self._usage[key] = {
                "job_id": event.job_id,
                "attempt": event.attempt,
                "index": event.index,
                "samples": [],
                "memory_limit": None,
            }
        known["samples"].extend(list(s) for s in event.samples)
        del known["samples"][:-MAX_SAMPLES]
        known["memory_limit"] = event.memory_limit

    def _runner_changed(self, event: RunnerChanged) -> None:
        view = runner_map(event.runner)
        self.runners[view["endpoint"]] = self._runners[view["endpoint"]] = view

    def _runner_left(self, event: RunnerLeft) -> None:
        view = runner_map(event.runner, gone=event.reason)
        self.runners.pop(view["endpoint"], None)
        self._runners[view["endpoint"]] = view

    def _queue_depth(self, event: QueueDepth) -> None:
        self._depth = event
        self._queue_changed = True

    # reading

    @property
    def pending(self) -> bool:
        """Whether anything changed since the last ``take`` (a new minute too)."""
        return bool(
            self._jobs
            or self._runners
            or self._steps
            or self._logs
            or self._usage
            or self._queue_changed
            or self._stats_changed
            or self._minute != self._minute_of(self._clock())
        )

    def take(self, limit: int) -> list[tuple[bytes, list[Map]]]:
        """The changes since the last take, by topic, as wire maps; ``limit`` items in all
        at most (the rest stays for the next take, so a burst is spread over flushes)."""
        taken: list[tuple[bytes, list[Map]]] = []
        left = limit
        for topic, changes, build in (
            (RunnerView.TOPIC, self._runners, _same),
            (JobView.TOPIC, self._jobs, self._settle),
            (StepView.TOPIC, self._steps, _same),
            (LogView.TOPIC, self._logs, _same),
            (UsageView.TOPIC, self._usage, _same),
        ):
            if changes and left > 0:
                items = build(_pop_front(changes, left))
                taken.append((topic, items))
                left -= len(items)
        if self._queue_changed:
            self._queue_changed = False
            taken.append((QueueView.TOPIC, [self._queue_map()]))
        minute = self._minute_of(self._clock())
        if self._stats_changed or minute != self._minute:
            self._stats_changed, self._minute = False, minute
            taken.append((StatsView.TOPIC, [self._stats_map()]))
        return taken

    def _queue_map(self) -> Map:
        depth = self._depth
        if depth is not None:
            oldest = None if depth.oldest is None else job_map(depth.oldest)
            return {"queued": depth.queued, "active": depth.active, "oldest": oldest}
        queued = [job for job in self.live.values() if job.state == JobState.QUEUED]
        return {
            "queued": len(queued),
            "active": len(self.live) - len(queued),
            "oldest": job_map(queued[0]) if queued else None,
        }

    def _stats_map(self) -> Map:
        now = self._minute_of(self._clock())
        counted = {start: (ended, ok) for start, ended, ok in self._minutes}
        minutes = []
        for start in range(now - (MINUTES - 1) * 60, now + 1, 60):
            ended, ok = counted.get(start, (0, 0))
            minutes.append([start, ended, ok])
        return {
            "started_at": self.started_at,
            "jobs_total": dict(self.jobs_total),
            "minutes": minutes,
        }

    def snapshot(self) -> Snapshot:
        """The whole state; the caller published every change first (``take``)."""
        active = [job for job in self.live.values() if job.state != JobState.QUEUED]
        queued = itertools.islice(
            (job for job in self.live.values() if job.state == JobState.QUEUED), SNAPSHOT_QUEUED
        )
        jobs = [*active, *queued, *self.ended.values()]
        queue = self._queue_map()
        oldest = queue["oldest"]
        stats = self._stats_map()
        return Snapshot(
            runners=tuple(_runner_view(v) for v in self.runners.values()),
            jobs=tuple(JobView(**job_map(job)) for job in jobs),
            queue=QueueView(
                queued=queue["queued"],
                active=queue["active"],
                oldest=None if oldest is None else JobView(**oldest),
            ),
            stats=StatsView(
                started_at=stats["started_at"],
                jobs_total=stats["jobs_total"],
                minutes=tuple(tuple(m) for m in stats["minutes"]),
            ),
            steps=tuple(
                StepView(**step) for job_id, step in self.steps.items() if job_id in self.live
            ),
        )

    @staticmethod
    def _minute_of(t: float) -> int:
        return int(t // 60) * 60


def _same(values: list[Map]) -> list[Map]:
    return values


def _pop_front(changes: dict[Any, Any], count: int) -> list[Any]:
    """The first ``count`` values of ``changes``, removed from it (all of them, usually)."""
    if count >= len(changes):
        values = list(changes.values())
        changes.clear()
        return values
    keys = list(itertools.islice(changes, count))
    return [changes.pop(key) for key in keys]


def _runner_view(view: Map) -> RunnerView:
    return RunnerView(**{**view, "jobs": tuple(view["jobs"])})
