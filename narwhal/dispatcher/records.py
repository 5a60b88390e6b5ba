"""Jobs as the dispatcher sees them: states, the moves between them, records.

The rules live here once; the store enforces them in SQL (``store.py``) and
the dispatcher's hot path predicts their outcome in memory
(``JobRecord.moved``, ``chains``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple

from narwhal.redact import redacted


class JobState(StrEnum):
    """A job's state: the one home of these names (members are their strings)."""

    QUEUED = "queued"
    ASSIGNED = "assigned"
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    ERROR = "error"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"
    #: The pipeline's ``when`` did not match; nothing ran.
    SKIPPED = "skipped"


S = JobState
STATES: tuple[str, ...] = tuple(JobState)
TERMINAL: frozenset[str] = frozenset(
    {S.SUCCESS, S.FAILED, S.ERROR, S.CANCELLED, S.TIMED_OUT, S.SKIPPED}
)
ACTIVE: frozenset[str] = frozenset({S.ASSIGNED, S.RUNNING})

#: Which states each state may move to.
ALLOWED: dict[str, frozenset[str]] = {
    S.QUEUED: frozenset({S.ASSIGNED, S.CANCELLED, S.ERROR}),
    S.ASSIGNED: frozenset({S.RUNNING, S.QUEUED} | TERMINAL),
    S.RUNNING: frozenset({S.QUEUED} | TERMINAL),
}

#: One state move of a ``store.base.Moves`` write: job id, attempt, target state,
#: reason, and the runner that holds the job (recorded in its history).
Move = tuple[int, int, str, str, str | None]


class JobRecord(NamedTuple):
    """One job as stored.

    A named tuple rather than a frozen dataclass: the dispatcher builds one
    per state change on its hot path, and a tuple is built four times faster.
    """

    id: int
    repo: str
    ref: str
    sha: str | None
    event: str
    labels: dict[str, str]
    matrix: dict[str, str] | None
    parent_id: int | None
    pipeline: str | None
    state: str
    reason: str
    attempt: int
    runner_id: str | None
    cancel_requested: bool
    created_at: float
    updated_at: float
    started_at: float | None
    finished_at: float | None
    #: A pull request from a fork: the key (``secret_rules.repo_key``) of the
    #: repository it targets, whose fork policy decides its secrets. None
    #: for every other job.
    fork_of: str | None = None
    #: Higher runs first (API, narwhal.yml's ``priority``; ``protocol.MIN_PRIORITY``..MAX).
    priority: int = 0
    #: What its pipeline asks of a runner (the largest ``resources:`` of its
    #: steps), once a checkout read it, or as the API asked; None: nothing.
    cpus: float | None = None
    memory: int | None = None
    #: Seconds the last checkout took, whether it cloned the repository cold,
    #: and the bytes the runner's mirror fetched for it.
    checkout: float | None = None
    cold: bool | None = None
    fetched: int | None = None

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    def moved(self, to: str, reason: str, runner_id: str | None, at: float) -> JobRecord:
        """This job as a ``Moves`` write leaves it after a move to ``to`` at ``at``.

        Not for requeues (``to == "queued"`` changes the attempt): those go
        through a ``Transition`` write, which reads the row back.
        """
        return JobRecord(
            id=self.id,
            repo=self.repo,
            ref=self.ref,
            sha=self.sha,
            event=self.event,
            labels=self.labels,
            matrix=self.matrix,
            parent_id=self.parent_id,
            pipeline=self.pipeline,
            state=to,
            reason=reason,
            attempt=self.attempt,
            runner_id=runner_id or self.runner_id,
            cancel_requested=self.cancel_requested,
            created_at=self.created_at,
            updated_at=at,
            started_at=at if to == "running" else self.started_at,
            finished_at=at if to in TERMINAL else self.finished_at,
            fork_of=self.fork_of,
            priority=self.priority,
            cpus=self.cpus,
            memory=self.memory,
            checkout=self.checkout,
            cold=self.cold,
            fetched=self.fetched,
        )

    def to_json(self) -> dict[str, Any]:
        """The job for API answers: a repository URL's credentials never leave
        the dispatcher, in the URL or quoted in the reason (the runner gets the
        full URL in JOB)."""
        shown = self._asdict()
        shown["repo"], shown["reason"] = redacted(self.repo), redacted(self.reason)
        return shown


@dataclass(frozen=True, slots=True, kw_only=True)
class TransitionRecord:
    """One entry of a job's history."""

    attempt: int
    state: str
    reason: str
    runner_id: str | None
    at: float

    def to_json(self) -> dict[str, Any]:
        """For API answers: credentials quoted in the reason never leave."""
        shown = {name: getattr(self, name) for name in self.__slots__}
        shown["reason"] = redacted(self.reason)
        return shown


@dataclass(frozen=True, slots=True, kw_only=True)
class StepRecord:
    """One step of one attempt of a job."""

    index: int
    name: str
    status: str
    exit_code: int | None
    started_at: float | None
    duration: float | None

    def to_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}


def chains(moves: Sequence[Move]) -> list[list[int]]:
    """Indices of ``moves`` in runs that one UPDATE can make: one job's moves in
    order, each allowed after the one before (a job accepted and finished in
    the same batch: assigned -> running -> success). A requeue stands alone
    (it starts a new attempt)."""
    chains: list[list[int]] = []
    last: dict[int, list[int]] = {}
    for i, (job_id, attempt, to, _, _) in enumerate(moves):
        chain = last.get(job_id)
        if chain is not None:
            prev = moves[chain[-1]]
            if prev[1] == attempt and to != "queued" and to in ALLOWED.get(prev[2], ()):
                chain.append(i)
                continue
        last[job_id] = [i]
        chains.append(last[job_id])
    return chains
