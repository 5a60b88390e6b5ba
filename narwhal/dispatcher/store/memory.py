"""A job store in memory, for fast tests: the SQLite store's semantics, no file.

It keeps the same rules as ``sqlite_jobs`` (the fence: attempt, allowed
moves from ``records.ALLOWED``, the holder; a requeue starts the next
attempt, unheld; history rows; ``source_key`` dedupe; the checkout rule; log
chunks kept by ``seq``; steps upserted; steps' samples appended, thinned and
deduplicated by ``seq``), and the contract suite
(tests/dispatcher/store/test_contract.py) checks both against the same
assertions. ``apply`` is all or nothing like a transaction: every change is
recorded in an undo list, played back if a write fails. ``refuse`` makes
it fail like a locked database, to test what a refused commit does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from narwhal.dispatcher.records import (
    ACTIVE,
    ALLOWED,
    TERMINAL,
    JobRecord,
    Move,
    StepRecord,
    TransitionRecord,
    chains,
)
from narwhal.dispatcher.store import logcodec
from narwhal.dispatcher.store.base import (
    AppendLog,
    AppendUsage,
    CreateJob,
    CreateJobs,
    DropLogs,
    Holding,
    JobQuery,
    LogFootprint,
    Moves,
    NewJob,
    RequestCancel,
    SecretRow,
    SetCheckout,
    SetReasons,
    SideWrite,
    StepFinished,
    StepStarted,
    TokenRow,
    Transition,
    UsageRecord,
    Write,
    checkout_applied,
    holding,
)
from narwhal.dispatcher.store.memory_tables import MemoryTables, Undo
from narwhal.errors import NotFound, StoreError

_QUEUED_OR_ACTIVE = frozenset({"queued"} | ACTIVE)

#: The writes ``_make`` leaves to ``_make_other``.
_OtherWrite = AppendLog | StepStarted | StepFinished | AppendUsage | SideWrite


class MemoryStore:
    """Implements ``JobStore`` in dictionaries (see the module docstring)."""

    def __init__(self) -> None:
        self._jobs: dict[int, JobRecord] = {}
        self._next_id = 1
        self._source_keys: dict[str, int] = {}
        #: job id -> its history; tuples, so an undo restores the old one.
        self._history: dict[int, tuple[TransitionRecord, ...]] = {}
        self._steps: dict[tuple[int, int, int], StepRecord] = {}
        self._logs: dict[tuple[int, int, int], bytes] = {}
        #: The chunks that are retention markers (``DropLogs``).
        self._markers: dict[tuple[int, int, int], bool] = {}
        self._usage: dict[tuple[int, int, int], UsageRecord] = {}
        self._undo = Undo()
        self._tables = MemoryTables(self._undo)
        self._refusal: str | None = None
        #: How many ``apply`` calls committed (tests count group commits).
        self.commits = 0

    def refuse(self, reason: str | None) -> None:
        """From now on every ``apply`` raises ``StoreError(reason)``; None: stop."""
        self._refusal = reason

    # lifecycle

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def maintain(self) -> None:
        """Nothing to keep up; waits to be cancelled like the others' housekeeping."""
        await asyncio.get_running_loop().create_future()

    # writes

    async def apply(self, writes: Sequence[Write]) -> list[Any]:
        if self._refusal is not None:
            raise StoreError(self._refusal)
        next_id = self._next_id
        try:
            results = [self._make(write) for write in writes]
        except BaseException:
            self._undo.roll_back()
            self._next_id = next_id
            raise
        finally:
            self._undo.forget()
        self.commits += 1
        return results

    def _set(self, table: dict[Any, Any], key: Any, value: Any) -> None:
        self._undo.set(table, key, value)

    def _make(self, write: Write) -> Any:
        match write:
            case Moves():
                return self._moves(write.moves, write.at)
            case Transition():
                return self._transition(write)
            case SetCheckout():
                return self._set_checkout(write)
            case CreateJobs():
                return [self._create(job)[0] for job in write.jobs]
            case CreateJob():
                return self._create(write.job)
            case RequestCancel():
                self._request_cancel(write.job_id)
            case SetReasons():
                self._set_reasons(write)
            case DropLogs():
                return self._drop_logs(write)
            case _:
                self._make_other(write)
        return None

    def _drop_logs(self, write: DropLogs) -> int:
        jobs = set(write.job_ids)
        freed = 0
        for key in [key for key in self._logs if key[0] in jobs]:
            if key not in self._markers:
                freed += len(self._logs[key])
            self._undo.delete(self._logs, key)
        marker = logcodec.retention_marker(write.at)
        for job_id in sorted(jobs):
            job = self._jobs.get(job_id)
            if job is not None:
                self._set(self._logs, (job_id, job.attempt, 0), marker)
                self._set(self._markers, (job_id, job.attempt, 0), True)
        return freed

    def _make_other(self, write: _OtherWrite) -> None:
        match write:
            case AppendLog():
                key = (write.job_id, write.attempt, write.seq)
                if key not in self._logs:  # a chunk resent after a reconnect: keep the first
                    self._set(self._logs, key, write.data)
            case StepStarted():
                step = StepRecord(
                    index=write.index,
                    name=write.name,
                    status="running",
                    exit_code=None,
                    started_at=write.at,
                    duration=None,
                )
                self._set(self._steps, (write.job_id, write.attempt, write.index), step)
            case StepFinished():
                self._step_finished(write)
            case AppendUsage():
                key = (write.job_id, write.attempt, write.index)
                record = UsageRecord.appended(self._usage.get(key), write)
                if record is not None:  # None: a frame resent after a reconnect
                    self._set(self._usage, key, record)
            case _:
                self._tables.make(write)

    # jobs

    def _create(self, new: NewJob) -> tuple[JobRecord, bool]:
        if new.source_key is not None and new.source_key in self._source_keys:
            return self._jobs[self._source_keys[new.source_key]], False
        now = time.time()
        job = new.record(self._next_id, now)
        self._next_id += 1
        self._set(self._jobs, job.id, job)
        if new.source_key is not None:
            self._set(self._source_keys, new.source_key, job.id)
        self._record(job.id, 1, "queued", new.reason, None, now)
        return job, True

    def _record(
        self, job_id: int, attempt: int, state: str, reason: str, runner: str | None, at: float
    ) -> None:
        entry = TransitionRecord(
            attempt=attempt, state=state, reason=reason, runner_id=runner, at=at
        )
        self._set(self._history, job_id, (*self._history.get(job_id, ()), entry))

    def _fenced_move(
        self, move: Move, to: str, reason: str, runner_id: str | None, at: float, *, started: bool
    ) -> JobRecord | None:
        """``sqlite_jobs._update``'s UPDATE: ``move`` names the job, attempt and the
        first state; the job ends in ``to``. The new record, or None if fenced off."""
        job_id, attempt, first, _, _ = move
        job = self._jobs.get(job_id)
        if job is None or job.attempt != attempt or first not in ALLOWED.get(job.state, ()):
            return None
        holder = runner_id is not None and to != "queued"
        if holder and first != "assigned" and job.runner_id != runner_id:
            return None
        changes: dict[str, Any] = {"state": to, "reason": reason, "updated_at": at}
        if to == "queued":  # a requeue starts the next attempt, held by nobody
            changes |= {"attempt": attempt + 1, "runner_id": None}
        elif holder:
            changes["runner_id"] = runner_id
        if started:
            changes["started_at"] = at
        if to in TERMINAL:
            changes["finished_at"] = at
        moved = job._replace(**changes)
        self._set(self._jobs, job_id, moved)
        return moved

    def _transition(self, write: Transition) -> JobRecord | None:
        move = (write.job_id, write.attempt, write.to, write.reason, write.runner_id)
        job = self._fenced_move(
            move, write.to, write.reason, write.runner_id, write.at, started=write.to == "running"
        )
        if job is not None:
            self._record(job.id, job.attempt, write.to, write.reason, job.runner_id, write.at)
        return job

    def _moves(self, moves: Sequence[Move], at: float) -> list[bool]:
        applied = [False] * len(moves)
        for chain in chains(moves):
            made = self._move_chain(moves, chain, at, applied)
            if not made and len(chain) > 1:  # fenced as a whole: try each alone
                for i in chain:
                    self._move_chain(moves, [i], at, applied)
        return applied

    def _move_chain(
        self, moves: Sequence[Move], chain: list[int], at: float, applied: list[bool]
    ) -> bool:
        _, _, to, reason, runner_id = moves[chain[-1]]
        started = any(moves[i][2] == "running" for i in chain)
        if self._fenced_move(moves[chain[0]], to, reason, runner_id, at, started=started) is None:
            return False
        for i in chain:
            applied[i] = True
            job_id, attempt, state, why, holder = moves[i]
            if state == "queued":  # a requeue starts the next attempt, unheld
                self._record(job_id, attempt + 1, state, why, None, at)
            else:
                self._record(job_id, attempt, state, why, holder, at)
        return True

    def _set_checkout(self, write: SetCheckout) -> bool:
        job = self._jobs.get(write.job_id)
        if job is None or job.attempt != write.attempt:
            return False
        first = write.variants[0] if write.variants else None
        matrix = job.matrix if job.matrix is not None else (dict(first) if first else None)
        checked = checkout_applied(
            job._replace(sha=write.sha, pipeline=write.pipeline or job.pipeline, matrix=matrix),
            write,
        )
        self._set(self._jobs, job.id, checked)
        return job.pipeline is None and len(write.variants) > 1

    def _request_cancel(self, job_id: int) -> None:
        job = self._jobs.get(job_id)
        if job is not None:
            self._set(self._jobs, job_id, job._replace(cancel_requested=True))

    def _set_reasons(self, write: SetReasons) -> None:
        for job_id, attempt, reason in write.reasons:
            job = self._jobs.get(job_id)
            if job is not None and job.attempt == attempt and job.state == "queued":
                self._set(self._jobs, job_id, job._replace(reason=reason))

    def _step_finished(self, write: StepFinished) -> None:
        key = (write.job_id, write.attempt, write.index)
        old = self._steps.get(key)
        step = StepRecord(
            index=write.index,
            name=old.name if old is not None else write.name,
            status=write.status,
            exit_code=write.exit_code,
            started_at=old.started_at if old is not None else None,
            duration=write.duration,
        )
        self._set(self._steps, key, step)

    # reads

    async def get_job(self, job_id: int) -> JobRecord:
        try:
            return self._jobs[job_id]
        except KeyError:
            raise NotFound(f"no job {job_id}") from None

    async def list_jobs(self, query: JobQuery) -> list[JobRecord]:
        ids = sorted(self._jobs, reverse=not query.ascending)
        found = []
        for job_id in ids:
            job = self._jobs[job_id]
            if (
                (query.parent is None or job.parent_id == query.parent)
                and (not query.states or job.state in query.states)
                and (query.repo is None or job.repo == query.repo)
                and (not query.refs or job.ref in query.refs)
                and (query.runner is None or job.runner_id == query.runner)
                and (query.before is None or job.id < query.before)
            ):
                found.append(job)
                if query.limit is not None and len(found) == query.limit:
                    break
        return found

    async def steps(self, job_id: int, attempt: int) -> list[StepRecord]:
        found = [s for (j, a, _), s in self._steps.items() if (j, a) == (job_id, attempt)]
        return sorted(found, key=lambda step: step.index)

    async def transitions(self, job_id: int) -> list[TransitionRecord]:
        return list(self._history.get(job_id, ()))

    async def usage(self, job_id: int, attempt: int) -> dict[int, UsageRecord]:
        return {i: u for (j, a, i), u in self._usage.items() if (j, a) == (job_id, attempt)}

    async def read_log(self, job_id: int, attempt: int, after: int = -1) -> list[tuple[int, bytes]]:
        chunks = [
            (seq, data)
            for (j, a, seq), data in self._logs.items()
            if (j, a) == (job_id, attempt) and seq > after
        ]
        return sorted(chunks, key=lambda chunk: chunk[0])

    async def log_footprints(self) -> list[LogFootprint]:
        stored: dict[int, int] = {}
        for key, data in self._logs.items():
            if key not in self._markers:
                stored[key[0]] = stored.get(key[0], 0) + len(data)
        ended = [
            (job.finished_at or 0.0, job.id, job.repo)
            for job_id in stored
            if (job := self._jobs.get(job_id)) is not None and job.state in TERMINAL
        ]
        return [
            LogFootprint(job_id=job_id, repo=repo, finished_at=at, stored=stored[job_id])
            for at, job_id, repo in sorted(ended)
        ]

    async def find_active(self, *, repo: str, sha: str, event: str) -> JobRecord | None:
        for job_id in sorted(self._jobs):
            job = self._jobs[job_id]
            if (job.repo, job.sha, job.event) == (repo, sha, event) and (
                job.state in _QUEUED_OR_ACTIVE
            ):
                return job
        return None

    async def holders(
        self, runner_id: str, keys: Sequence[tuple[int, int]]
    ) -> dict[tuple[int, int], Holding]:
        listed = {job_id for job_id, _ in keys}
        jobs = {
            job_id: (job.attempt, job.state, job.runner_id)
            for job_id in listed
            if (job := self._jobs.get(job_id)) is not None
        }
        held_once = {
            (job_id, t.attempt)
            for job_id in listed
            for t in self._history.get(job_id, ())
            if t.runner_id == runner_id
        }
        return holding(runner_id, keys, jobs, held_once)

    async def endpoints(self) -> list[str]:
        return self._tables.endpoints()

    async def tokens(self) -> list[TokenRow]:
        return self._tables.tokens()

    async def secrets(self) -> list[SecretRow]:
        return self._tables.secrets()

    async def fork_repos(self) -> set[str]:
        return self._tables.fork_repos()
