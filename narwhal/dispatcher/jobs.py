"""The job table: the one owner of job state, in memory and in the store.

Queued and active (assigned, running) jobs are held here as records, in
submission order for the queue; memory is the truth for them and the store
their journal. Nothing else changes a job: each operation (create, assign,
accept, checked out, cancel, requeue, finish) records its write in the
current ``Changes`` (a unit of work) and the record it predicts; once the
unit is committed, memory takes the records the store accepted and the
dispatcher's ``Feed`` hears of them (``JobChanged``, ``JobUpdated``). A
unit the store refuses changes nothing, in the store or here.

The store still has the last word on every move (its fenced UPDATE checks
the attempt, the holder and the allowed moves): a move it fences off that
memory predicted means memory was wrong about that job, which is then
dropped from memory and read back from the store when next needed.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from narwhal.dispatcher.feed import Feed, JobChanged, JobUpdated
from narwhal.dispatcher.order import QueueIndex
from narwhal.dispatcher.records import ACTIVE, TERMINAL, JobRecord, JobState, Move
from narwhal.dispatcher.store.base import (
    CreateJob,
    CreateJobs,
    JobQuery,
    JobStore,
    NewJob,
    Pending,
    RequestCancel,
    SetCheckout,
    SetReasons,
    Transition,
    UnitOfWork,
    Write,
    checkout_applied,
)
from narwhal.errors import NotFound

log = logging.getLogger(__name__)

#: Moves made from records in memory without reading the row back (a
#: requeue changes the attempt: it goes through ``Transition``).
_FAST_MOVES = frozenset({JobState.ASSIGNED, JobState.RUNNING} | TERMINAL)

Key = tuple[int, int]


class Changes:
    """One unit of work on the job table: its writes, and the records they leave.

    ``planned`` holds each job's record as this unit's moves so far leave it
    (None: unknown until the store answers), so a job accepted and finished
    in one batch of frames is predicted right. It lives as long as the unit.
    """

    def __init__(self, table: JobTable) -> None:
        self.unit = UnitOfWork()
        self.at = time.time()
        self._table = table
        self.planned: dict[int, JobRecord | None] = {}
        #: The current ``Moves`` write being filled, with its predicted records.
        self._moves: list[Move] | None = None
        self._moved: list[JobRecord] = []

    def record(self, job_id: int) -> JobRecord | None:
        """The job's record as this unit leaves it so far (None: not known in memory)."""
        if job_id in self.planned:
            return self.planned[job_id]
        return self._table.get(job_id)

    def add(self, write: Write) -> Pending[Any]:
        """A write that is not a fast move (it ends the current group of moves)."""
        self._moves = None
        return self.unit.add(write)

    def move(self, record: JobRecord, to: str, reason: str, runner_id: str | None) -> None:
        """A fast move of a job whose record is known; grouped with the moves before it."""
        moved = record.moved(to, reason, runner_id, self.at)
        self.planned[record.id] = moved
        if self._moves is None:
            self._moves, self._moved = [], []
            applied = self.unit.moves(self._moves, self.at)
            self.unit.after_commit(self._settle_moves(applied, self._moved))
        self._moves.append((record.id, record.attempt, to, reason, runner_id))
        self._moved.append(moved)

    def _settle_moves(
        self, applied: Pending[list[bool]], moved: list[JobRecord]
    ) -> Callable[[], None]:
        def settle() -> None:
            for record, ok in zip(moved, applied.value, strict=True):
                if ok:
                    self._table.changed(record)
                else:  # memory and store disagree: read the row when next needed
                    self._table.forget(record.id)

        return settle

    def after_commit(self, hook: Callable[[], object]) -> None:
        self.unit.after_commit(hook)

    async def commit(self) -> None:
        """Make the unit's writes, then update memory and tell listeners."""
        await self.unit.commit(self._table.store)
        if self._table.unsure:
            await self._table.resync()


class JobTable:
    """Queued and active jobs, and every change made to any job."""

    def __init__(self, store: JobStore, *, feed: Feed, max_attempts: int) -> None:
        self.store = store
        self.feed = feed
        self.max_attempts = max_attempts
        #: Queued jobs in submission order (dicts keep insertion order); change
        #: them only through ``_queue_put``/``_queue_drop``, which keep ``order``.
        self.queue: dict[int, JobRecord] = {}
        #: The same jobs in the order the scheduler looks at them (``order``).
        self.order = QueueIndex()
        #: Assigned and running jobs; changed only through ``_active_put``/``_active_drop``.
        self.active: dict[int, JobRecord] = {}
        #: How many of them each repository has (fair share, ``order``).
        self.running: Counter[str] = Counter()
        #: Jobs memory was wrong about: read back after the commit that showed it.
        self.unsure: set[int] = set()
        #: Called when a job joins the queue (the scheduler looks again).
        self.on_queued: Callable[[], None] = lambda: None

    def begin(self) -> Changes:
        return Changes(self)

    async def load(self) -> list[JobRecord]:
        """Take the queued and active jobs from the store (at start); return the active."""
        queued = await self.store.list_jobs(
            JobQuery(states=(JobState.QUEUED,), limit=None, ascending=True)
        )
        self.queue, self.active = {}, {}
        self.order.clear()
        self.running.clear()
        for job in queued:
            self._queue_put(job)
        active = await self.store.list_jobs(JobQuery(states=tuple(ACTIVE), limit=None))
        for job in active:
            self._active_put(job)
        return active

    def _queue_put(self, job: JobRecord) -> None:
        self.queue[job.id] = job
        self.order.add(job)

    def _queue_drop(self, job_id: int) -> None:
        if self.queue.pop(job_id, None) is not None:
            self.order.discard(job_id)

    def _active_put(self, job: JobRecord) -> None:
        old = self.active.get(job.id)
        if old is not None:
            self.running[old.repo] -= 1
        self.active[job.id] = job
        self.running[job.repo] += 1

    def _active_drop(self, job_id: int) -> None:
        old = self.active.pop(job_id, None)
        if old is not None:
            self.running[old.repo] -= 1
            if not self.running[old.repo]:
                del self.running[old.repo]

    # reading

    def get(self, job_id: int) -> JobRecord | None:
        """The job if it is queued or active (memory only)."""
        return self.active.get(job_id) or self.queue.get(job_id)

    async def fetch(self, job_id: int) -> JobRecord:
        """The job from memory, else from the store (``NotFound``)."""
        return self.get(job_id) or await self.store.get_job(job_id)

    # telling others

    def touched(self, job_id: int) -> None:
        """A committed change of a job's row that is not a state change."""
        self.feed.publish(JobUpdated(job_id, self.get(job_id)))

    def changed(self, job: JobRecord, *, new: bool = False) -> None:
        """A committed change of ``job``: memory takes it, then the feed hears of it."""
        held = None if new else self.get(job.id)
        # A job memory did not hold (read back from the store): its old state is not known.
        before = None if new else (held.state if held is not None else "")
        if job.state in ACTIVE:
            self._queue_drop(job.id)
            self._active_put(job)
        elif job.state == JobState.QUEUED:
            self._active_drop(job.id)
            self._queue_put(job)
            self.on_queued()
        else:
            self._queue_drop(job.id)
            self._active_drop(job.id)
        self.feed.publish(JobChanged(job, before))

    def forget(self, job_id: int) -> None:
        """Memory was wrong about this job: drop it (it is read back when needed)."""
        log.warning("job %d: the store fenced off a move memory expected; reading it back", job_id)
        self._queue_drop(job_id)
        self._active_drop(job_id)
        self.unsure.add(job_id)
        self.touched(job_id)

    async def resync(self) -> None:
        """Read back the jobs memory was wrong about; keep those still queued or active."""
        unsure, self.unsure = self.unsure, set()
        for job_id in sorted(unsure):
            try:
                job = await self.store.get_job(job_id)
            except NotFound:
                continue
            if job.state == JobState.QUEUED:
                self._queue_put(job)
                self.on_queued()
            elif job.state in ACTIVE:
                self._active_put(job)

    # operations

    def create(self, changes: Changes, job: NewJob) -> Pending[tuple[JobRecord, bool]]:
        """Queue a job; one whose ``source_key`` was seen is not created again."""
        created: Pending[tuple[JobRecord, bool]] = changes.add(CreateJob(job=job))

        def settle() -> None:
            record, new = created.value
            if new:
                self.changed(record, new=True)

        changes.after_commit(settle)
        return created

    def create_many(self, changes: Changes, jobs: Sequence[NewJob]) -> Pending[list[JobRecord]]:
        created: Pending[list[JobRecord]] = changes.add(CreateJobs(jobs=jobs))

        def settle() -> None:
            for record in created.value:
                self.changed(record, new=True)

        changes.after_commit(settle)
        return created

    def transition(
        self,
        changes: Changes,
        job_id: int,
        attempt: int,
        to: str,
        reason: str,
        runner_id: str | None = None,
    ) -> Pending[JobRecord | None]:
        """A move whose row is read back (a requeue, or a job memory does not know)."""
        changes.planned[job_id] = None
        write = Transition(
            job_id=job_id, attempt=attempt, to=to, reason=reason, runner_id=runner_id, at=changes.at
        )
        result: Pending[JobRecord | None] = changes.add(write)

        def settle() -> None:
            if result.value is not None:
                self.changed(result.value)

        changes.after_commit(settle)
        return result

    def move(
        self, changes: Changes, job_id: int, attempt: int, to: str, reason: str, runner_id: str
    ) -> None:
        """A move a runner's frame asks for (ACCEPT: ``running``; DONE: its status)."""
        record = changes.record(job_id)
        if record is None or record.attempt != attempt or to not in _FAST_MOVES:
            self.transition(changes, job_id, attempt, to, reason, runner_id)
        else:
            changes.move(record, to, reason, runner_id)

    def assign(self, changes: Changes, job: JobRecord, runner_id: str, why: str = "") -> None:
        """``why``: the placement's words (``placed on runner-b: mirror warm``), kept in history."""
        changes.move(job, JobState.ASSIGNED, why or f"assigned to {runner_id}", runner_id)

    def requeue(self, changes: Changes, job: JobRecord, reason: str) -> None:
        """A job no runner holds any more: queued again, unless it should end."""
        if job.cancel_requested:
            to, why = JobState.CANCELLED, f"cancelled; {reason}"
        elif job.attempt >= self.max_attempts:
            to, why = JobState.ERROR, f"{reason}; gave up after {job.attempt} attempts"
        else:
            to, why = JobState.QUEUED, f"{reason}; requeued"
        self.transition(changes, job.id, job.attempt, to, why)

    def request_cancel(self, changes: Changes, job: JobRecord) -> None:
        """Ask for an active job's end; its runner is told (by the caller)."""
        changes.add(RequestCancel(job_id=job.id))

        def settle() -> None:
            held = self.active.get(job.id)
            if held is not None:
                self.active[job.id] = held._replace(cancel_requested=True)
            self.touched(job.id)

        changes.after_commit(settle)

    def checked_out(self, changes: Changes, write: SetCheckout) -> None:
        """Record what a runner checked out; a first checkout of a matrix queues
        a job for each combination after the first, in the same unit, so whoever
        sees the parent's checkout (or its end) sees its siblings too (with the
        pipeline's priority and resource needs)."""
        job_id, attempt, sha, variants = write.job_id, write.attempt, write.sha, write.variants
        record = changes.record(job_id)
        changes.add(write)
        if record is None or record.attempt != attempt:
            return  # a stale attempt: the store changes nothing either
        first = record.pipeline is None and len(variants) > 1
        updated = checkout_applied(
            record._replace(
                sha=sha,
                pipeline=write.pipeline or record.pipeline,
                matrix=record.matrix or (dict(variants[0]) if variants else None),
            ),
            write,
        )
        changes.planned[job_id] = updated
        changes.after_commit(lambda: self._took_checkout(updated, write))
        if first and not record.cancel_requested:
            for variant in variants[1:]:
                self.create(
                    changes,
                    NewJob(
                        repo=record.repo,
                        ref=record.ref,
                        sha=sha,
                        event=record.event,
                        labels=record.labels,
                        matrix=variant,
                        parent_id=record.id,
                        reason=f"matrix of job {record.id}",
                        fork_of=record.fork_of,
                        priority=updated.priority,
                        cpus=updated.cpus,
                        memory=updated.memory,
                    ),
                )

    def _took_checkout(self, updated: JobRecord, write: SetCheckout) -> None:
        held = self.active.get(updated.id)
        if held is not None and held.attempt == updated.attempt:
            checked = held._replace(
                sha=updated.sha, pipeline=updated.pipeline, matrix=updated.matrix
            )
            self._active_put(checkout_applied(checked, write))
        self.touched(updated.id)

    def set_reasons(self, changes: Changes, reasons: Sequence[tuple[int, int, str]]) -> None:
        """Say why queued jobs wait (not a state change: a ``JobUpdated`` each)."""
        changes.add(SetReasons(reasons=reasons))

        def settle() -> None:
            for job_id, attempt, reason in reasons:
                queued = self.queue.get(job_id)
                if queued is not None and queued.attempt == attempt:
                    self._queue_put(queued._replace(reason=reason))
                    self.touched(job_id)

        changes.after_commit(settle)
