"""One batch of runner frames as the store calls that record it.

The dispatcher drains up to a few hundred frames at a time and records them
in one transaction (group commit). This module turns the frames into those
calls, in frame order, and predicts the records the state moves produce.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from narwhal.dispatcher.links import Link
from narwhal.dispatcher.records import TERMINAL, JobRecord
from narwhal.dispatcher.store.sqlite import SqliteStore
from narwhal.errors import NarwhalError
from narwhal.mesh import protocol as p

#: Moves the hot path makes from records in memory (a requeue changes the
#: attempt and goes through ``SqliteStore.transition``).
_FAST_MOVES = frozenset({"assigned", "running"} | TERMINAL)

StoreCall = tuple[Callable[..., Any], dict[str, Any]]


class FrameBatch:
    """The store calls that record one batch of runner frames, in frame order.

    State moves of jobs whose record the dispatcher holds go into
    ``SqliteStore.move`` groups, with the records they produce kept in
    ``moved`` (by call index); other moves (a job adopted after a restart,
    one whose row changed since) go through ``SqliteStore.transition``,
    which reads the row back.
    """

    def __init__(self, records: dict[int, JobRecord]) -> None:
        self.calls: list[StoreCall] = []
        self.moved: dict[int, list[JobRecord]] = {}
        self._records = records
        #: Each job's record as this batch's moves so far leave it (None:
        #: read it back from the store).
        self._planned: dict[int, JobRecord | None] = {}
        self._now = time.time()

    def add(self, link: Link, message: p.Message) -> None:
        if isinstance(message, p.Accept):
            reason = f"accepted by {link.runner_id}"
            self._move(link, message.job_id, message.attempt, "running", reason)
        elif isinstance(message, p.Done):
            reason = message.reason or message.status
            self._move(link, message.job_id, message.attempt, message.status, reason)
        else:
            if isinstance(message, p.CheckedOut):
                self._planned[message.job_id] = None  # its row changes here
            self.calls.append(store_call(message))

    def _move(self, link: Link, job_id: int, attempt: int, to: str, reason: str) -> None:
        record = self._planned.get(job_id, self._records.get(job_id))
        if record is None or record.attempt != attempt or to not in _FAST_MOVES:
            key = {"job_id": job_id, "attempt": attempt, "runner_id": link.runner_id}
            self.calls.append((SqliteStore.transition, key | {"to": to, "reason": reason}))
            return
        moved = record.moved(to, reason, link.runner_id, self._now)
        self._planned[job_id] = moved
        if not self.calls or self.calls[-1][0] is not SqliteStore.move:
            self.moved[len(self.calls)] = []
            self.calls.append((SqliteStore.move, {"moves": [], "at": self._now}))
        self.calls[-1][1]["moves"].append((job_id, attempt, to, reason, link.runner_id))
        self.moved[len(self.calls) - 1].append(moved)


def store_call(message: p.Message) -> StoreCall:
    """The store call that records a runner's frame other than a state move."""
    key = {"job_id": message.job_id, "attempt": message.attempt}  # type: ignore[attr-defined]
    if isinstance(message, p.Log):
        return SqliteStore.append_log, key | {"seq": message.seq, "data": message.data}
    if isinstance(message, p.StepStarted):
        return SqliteStore.step_started, key | {"index": message.index, "name": message.name}
    if isinstance(message, p.StepFinished):
        return SqliteStore.step_finished, key | {
            "index": message.index,
            "name": message.name,
            "status": message.status,
            "exit_code": message.exit_code,
            "duration": message.duration,
        }
    if isinstance(message, p.CheckedOut):
        return SqliteStore.set_checkout, key | {
            "sha": message.sha,
            "pipeline": message.pipeline,
            "variants": message.variants,
        }
    raise NarwhalError(f"unexpected {message.KIND} frame")
