"""The job store's interface: typed reads, and writes grouped in units of work.

Every store (SQLite, the in-memory one of ``store.memory``, PostgreSQL
later) implements ``JobStore``. Writes are never made one call at a time:
the dispatcher records the writes of one scheduling round or one batch of
runner frames in a ``UnitOfWork`` (each a typed ``Write`` below), and
``UnitOfWork.commit`` hands them to the store, which makes them in one
transaction (group commit) and returns one result per write. Only then do
the unit's after-commit hooks run: whatever must wait until the data is
durable (memory updates, listeners, ACKs, JOB frames).

The state rules are enforced by the store itself, in the fenced UPDATE of
``Move`` and ``Transition`` (``records.ALLOWED``, the attempt and the
holder): a late frame of an old attempt changes nothing, whichever store it
meets.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, Protocol, TypeVar

from narwhal.dispatcher.records import (
    ACTIVE,
    TERMINAL,
    JobRecord,
    Move,
    StepRecord,
    TransitionRecord,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

#: What the store says of a job a runner's READY lists (``JobStore.holders``).
Holding = Literal["held", "stale"]

#: Most CPU and memory samples kept per step; more are thinned evenly.
MAX_STEP_SAMPLES = 600
#: ``(seconds since the step started, CPU cores in use, memory bytes)``.
UsageSample = tuple[float, float, int]


# what writes carry


@dataclass(frozen=True, slots=True, kw_only=True)
class NewJob:
    """A job to create, queued, at attempt 1."""

    repo: str
    ref: str
    sha: str | None
    event: str
    labels: Mapping[str, str] = field(default_factory=dict)
    matrix: Mapping[str, str] | None = None
    parent_id: int | None = None
    reason: str = "submitted"
    #: Makes a redelivered commit event idempotent: a second job with the
    #: same key is not created (``CreateJob`` returns the first).
    source_key: str | None = None
    fork_of: str | None = None
    priority: int = 0
    cpus: float | None = None
    memory: int | None = None

    @classmethod
    def again(cls, old: JobRecord) -> NewJob:
        """A new job of ``old``'s very commit and needs (what a resubmit queues)."""
        return cls(
            repo=old.repo,
            ref=old.ref,
            sha=old.sha,
            event=old.event,
            labels=old.labels,
            matrix=old.matrix,
            reason=f"resubmitted from job {old.id}",
            fork_of=old.fork_of,
            priority=old.priority,
            cpus=old.cpus,
            memory=old.memory,
        )

    def record(self, job_id: int, at: float) -> JobRecord:
        """The job as created with id ``job_id`` at ``at`` (what reading its row back gives)."""
        return JobRecord(
            id=job_id,
            repo=self.repo,
            ref=self.ref,
            sha=self.sha,
            event=self.event,
            labels=dict(self.labels),
            matrix=dict(self.matrix) if self.matrix is not None else None,
            parent_id=self.parent_id,
            pipeline=None,
            state="queued",
            reason=self.reason,
            attempt=1,
            runner_id=None,
            cancel_requested=False,
            created_at=at,
            updated_at=at,
            started_at=None,
            finished_at=None,
            fork_of=self.fork_of,
            priority=self.priority,
            cpus=self.cpus,
            memory=self.memory,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class JobQuery:
    """Which jobs ``JobStore.list_jobs`` returns: by id, newest first unless ``ascending``."""

    states: tuple[str, ...] = ()
    repo: str | None = None
    #: Jobs of any of these refs (``refs/heads/main``, ``main``); empty: all.
    refs: tuple[str, ...] = ()
    #: Jobs this runner holds or last held.
    runner: str | None = None
    #: The matrix jobs this job spawned.
    parent: int | None = None
    before: int | None = None
    #: None: all of them.
    limit: int | None = 50
    ascending: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenRow:
    """One API token as stored: its SHA-256 digest, never the token."""

    name: str
    digest: str
    scope: str
    created_at: float
    last_used: float | None = None

    @staticmethod
    def of(row: Sequence[Any]) -> TokenRow:
        """From ``name, digest, scope, created_at, last_used``, as every store selects them."""
        return TokenRow(
            name=row[0], digest=row[1], scope=row[2], created_at=row[3], last_used=row[4]
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class SecretRow:
    """One sealed secret as stored (``dispatcher.vault`` seals and opens it)."""

    repo: str
    name: str
    key_version: int
    nonce: bytes
    ciphertext: bytes
    created_at: float
    updated_at: float

    @staticmethod
    def of(row: Sequence[Any]) -> SecretRow:
        """From ``repo, name, key_version, nonce, ciphertext, created_at, updated_at``."""
        return SecretRow(
            repo=row[0],
            name=row[1],
            key_version=row[2],
            nonce=bytes(row[3]),
            ciphertext=bytes(row[4]),
            created_at=row[5],
            updated_at=row[6],
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class UsageRecord:
    """A step's CPU and memory samples as stored, and the peaks of all ever sent.

    The peaks are kept apart from the samples: thinning may drop the sample
    that held one. ``seq`` is the job stream's last USAGE frame taken, so a
    frame resent after a reconnect adds nothing twice.
    """

    samples: tuple[UsageSample, ...]
    peak_memory: int
    peak_cpu: float
    memory_limit: int | None
    seq: int

    def to_json(self) -> dict[str, Any]:
        """``docs/backend.md``, "Steps' resources"."""
        return {
            "samples": [list(sample) for sample in self.samples],
            "peak_memory": self.peak_memory,
            "peak_cpu": self.peak_cpu,
            "memory_limit": self.memory_limit,
        }

    @staticmethod
    def appended(old: UsageRecord | None, write: AppendUsage) -> UsageRecord | None:
        """The record with ``write``'s samples; None when ``write`` was taken already."""
        if old is not None and write.seq <= old.seq:
            return None
        samples = thinned((*(old.samples if old else ()), *write.samples))
        peak_memory = max((s[2] for s in write.samples), default=0)
        peak_cpu = max((s[1] for s in write.samples), default=0.0)
        limit = write.memory_limit
        if old is not None:
            peak_memory, peak_cpu = max(peak_memory, old.peak_memory), max(peak_cpu, old.peak_cpu)
            limit = limit if limit is not None else old.memory_limit
        return UsageRecord(
            samples=samples,
            peak_memory=peak_memory,
            peak_cpu=peak_cpu,
            memory_limit=limit,
            seq=write.seq,
        )


def thinned(samples: tuple[UsageSample, ...]) -> tuple[UsageSample, ...]:
    """At most ``MAX_STEP_SAMPLES``, spread evenly over the step's time.

    Over the bound, about half stay: the first, the last, and between them
    one per stretch of twice the mean spacing. For samples taken at a
    steady interval that is every other one, as the runner thins its own
    (and then doubles its interval); by time rather than by position, the
    stored samples stay even also where the two sides thinned at other
    moments.
    """
    while len(samples) > MAX_STEP_SAMPLES:
        gap = (samples[-1][0] - samples[0][0]) / (MAX_STEP_SAMPLES // 2)
        kept = [samples[0]]
        for sample in samples[1:-1]:
            # Three quarters of the gap: timer jitter must not skip two in a row.
            if sample[0] - kept[-1][0] >= 0.75 * gap:
                kept.append(sample)
        kept.append(samples[-1])
        # All at one time (no spacing to go by): by position instead.
        samples = tuple(kept) if len(kept) < len(samples) else samples[::2]
    return samples


# the writes: one frozen dataclass each, so a misspelt field fails mypy


@dataclass(frozen=True, slots=True, kw_only=True)
class CreateJob:
    """Result: ``(job, created)``; ``created`` False when ``source_key`` was seen."""

    job: NewJob


@dataclass(frozen=True, slots=True, kw_only=True)
class CreateJobs:
    """Many jobs without ``source_key`` (the bulk path). Result: their records."""

    jobs: Sequence[NewJob]


@dataclass(frozen=True, slots=True, kw_only=True)
class Moves:
    """State moves made from records the caller holds. Result: which were allowed.

    No row is read back: the caller predicts each record with
    ``JobRecord.moved``. One job's consecutive moves (``records.chains``)
    cost one UPDATE, with a history row each. Not for requeues.
    """

    moves: Sequence[Move]
    at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Transition:
    """One state move, the row read back. Result: the job, or None if fenced off.

    With ``runner_id`` (a move a runner's frame asks for) only if that
    runner holds the job. A move to ``queued`` starts the next attempt.
    """

    job_id: int
    attempt: int
    to: str
    reason: str
    runner_id: str | None = None
    at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class SetCheckout:
    """What a runner checked out; the job takes ``variants[0]``.

    Result: True only the first time a job is checked out (any attempt)
    with more than one matrix combination. A stale attempt changes nothing.
    """

    job_id: int
    attempt: int
    sha: str
    #: Empty: the commit is known but its narwhal.yml did not parse.
    pipeline: str
    variants: tuple[Mapping[str, str], ...] = ()
    #: What the checkout cost (seconds; None: not said), whether it was cold,
    #: the bytes the mirror fetched.
    checkout: float | None = None
    cold: bool | None = None
    fetched: int | None = None
    #: The pipeline's needs (``protocol.Needs``: priority, cpus, memory); None:
    #: not read. Its priority applies only to a job the API gave none (0),
    #: its cpus and memory only where it sets them.
    needs: tuple[int, float | None, int | None] | None = None


def checkout_applied(job: JobRecord, write: SetCheckout) -> JobRecord:
    """``job`` with what ``write`` says of its checkout's cost and its pipeline's needs
    (the one description of the rule, for the memory store and the job table)."""
    if write.checkout is not None:
        job = job._replace(checkout=write.checkout, cold=write.cold, fetched=write.fetched)
    if write.needs is not None:
        # What the API asked for stays unless the pipeline says otherwise.
        priority, cpus, memory = write.needs
        job = job._replace(
            priority=job.priority or priority,
            cpus=job.cpus if cpus is None else cpus,
            memory=job.memory if memory is None else memory,
        )
    return job


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestCancel:
    job_id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SetReasons:
    """Why queued jobs wait: ``(job id, attempt, reason)``; only a job still
    queued at that attempt takes it. Not a transition, so not in history."""

    reasons: Sequence[tuple[int, int, str]]


@dataclass(frozen=True, slots=True, kw_only=True)
class AppendLog:
    """A log chunk; one resent after a reconnect (same ``seq``) is ignored."""

    job_id: int
    attempt: int
    seq: int
    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class StepStarted:
    job_id: int
    attempt: int
    index: int
    name: str
    at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class StepFinished:
    job_id: int
    attempt: int
    index: int
    name: str
    status: str
    exit_code: int | None
    duration: float


@dataclass(frozen=True, slots=True, kw_only=True)
class AppendUsage:
    """CPU and memory samples of step ``index`` (a USAGE frame, ``seq`` its number).

    Appended to the step's; at most ``MAX_STEP_SAMPLES`` are kept (thinned
    evenly); a frame resent after a reconnect (``seq`` not above the last
    one taken) is ignored. ``memory_limit`` None keeps the one known.
    """

    job_id: int
    attempt: int
    seq: int
    index: int
    samples: tuple[UsageSample, ...]
    memory_limit: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class DropLogs:
    """Delete every log chunk of these jobs (all attempts): the retention
    policy's write (``dispatcher.retention``). The job rows, their history,
    steps and usage stay; the log of each job's last attempt then reads as
    one line saying so (``logcodec.retention_marker``, chunk 0, codec
    ``MARKER``, not counted in ``log_footprints``). Result: the stored bytes
    freed."""

    job_ids: Sequence[int]
    #: When (epoch seconds): the marker line gives the day.
    at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class LogFootprint:
    """An ended job that still has its log: what retention weighs."""

    job_id: int
    repo: str
    finished_at: float
    #: Bytes as stored (compressed), all attempts.
    stored: int


@dataclass(frozen=True, slots=True, kw_only=True)
class AddEndpoint:
    """A runner endpoint added at run time, connected again after a restart."""

    url: str
    at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class PutToken:
    token: TokenRow


@dataclass(frozen=True, slots=True, kw_only=True)
class DeleteToken:
    name: str


@dataclass(frozen=True, slots=True, kw_only=True)
class TouchToken:
    name: str
    at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class PutSecret:
    """Insert or replace; a replaced secret keeps its ``created_at``."""

    secret: SecretRow


@dataclass(frozen=True, slots=True, kw_only=True)
class DeleteSecret:
    repo: str
    name: str


@dataclass(frozen=True, slots=True, kw_only=True)
class SetForks:
    """Whether pull requests from forks of ``repo`` get its secrets."""

    repo: str
    allowed: bool
    at: float


#: The writes of the side tables (endpoints, tokens, secrets, fork policies).
SideWrite = AddEndpoint | PutToken | DeleteToken | TouchToken | PutSecret | DeleteSecret | SetForks

Write = (
    CreateJob
    | CreateJobs
    | Moves
    | Transition
    | SetCheckout
    | RequestCancel
    | SetReasons
    | AppendLog
    | StepStarted
    | StepFinished
    | AppendUsage
    | DropLogs
    | AddEndpoint
    | PutToken
    | DeleteToken
    | TouchToken
    | PutSecret
    | DeleteSecret
    | SetForks
)


def holding(
    runner_id: str,
    keys: Sequence[tuple[int, int]],
    jobs: Mapping[int, tuple[int, str, str | None]],
    held_once: set[tuple[int, int]],
) -> dict[tuple[int, int], Holding]:
    """``JobStore.holders``' verdicts, the one statement of the rule for every store.

    ``jobs``: each listed job's current ``(attempt, state, runner_id)``;
    ``held_once``: the ``(job id, attempt)`` pairs ``runner_id`` ever held.
    """
    verdicts: dict[tuple[int, int], Holding] = {}
    for key in keys:
        if key[0] not in jobs:
            continue
        attempt, state, holder = jobs[key[0]]
        if attempt == key[1] and state in ACTIVE and holder == runner_id:
            verdicts[key] = "held"
        elif key in held_once and (attempt != key[1] or state in TERMINAL):
            verdicts[key] = "stale"
    return verdicts


class JobStore(Protocol):
    """Where the dispatcher keeps jobs, their history, steps and logs, and its
    side tables (runner endpoints, API tokens, sealed secrets).

    Reads may run off the event loop (SQLite: on a reader thread) and see
    every write committed before the call. ``apply`` makes writes in one
    transaction; on failure it raises ``StoreError`` and none were made.
    """

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def maintain(self) -> None:
        """Run until cancelled: the store's housekeeping (SQLite: WAL checkpoints)."""
        ...

    async def apply(self, writes: Sequence[Write]) -> list[Any]:
        """Make ``writes`` in one transaction; one result each, in order."""
        ...

    async def get_job(self, job_id: int) -> JobRecord:
        """The job, or ``NotFound``."""
        ...

    async def list_jobs(self, query: JobQuery) -> list[JobRecord]: ...

    async def steps(self, job_id: int, attempt: int) -> list[StepRecord]: ...

    async def usage(self, job_id: int, attempt: int) -> dict[int, UsageRecord]:
        """The steps' samples of one attempt, by step index (steps without any are absent)."""
        ...

    async def transitions(self, job_id: int) -> list[TransitionRecord]: ...

    async def read_log(self, job_id: int, attempt: int, after: int = -1) -> list[tuple[int, bytes]]:
        """The chunks after ``seq`` ``after``, in order."""
        ...

    async def find_active(self, *, repo: str, sha: str, event: str) -> JobRecord | None:
        """A queued, assigned or running job for this commit and event."""
        ...

    async def log_footprints(self) -> list[LogFootprint]:
        """Every ended job (a terminal state) with log chunks left, oldest
        ``finished_at`` first (ties: by id)."""
        ...

    async def holders(
        self, runner_id: str, keys: Sequence[tuple[int, int]]
    ) -> dict[tuple[int, int], Holding]:
        """What the store says of the ``(job id, attempt)`` pairs a READY lists.

        "held": the job's current attempt, assigned or running, held by
        ``runner_id``; "stale": an attempt ``runner_id`` held that is over;
        absent: anything else (no such job, another runner's).
        """
        ...

    async def endpoints(self) -> list[str]: ...

    async def tokens(self) -> list[TokenRow]: ...

    async def secrets(self) -> list[SecretRow]: ...

    async def fork_repos(self) -> set[str]:
        """The repositories whose forks' pull requests get their secrets."""
        ...


class Pending(Generic[T]):
    """The result of one write of a unit, known once the unit is committed."""

    __slots__ = ("_value", "_done")

    def __init__(self) -> None:
        self._done = False
        self._value: Any = None

    @property
    def value(self) -> T:
        if not self._done:
            raise RuntimeError("the unit of work is not committed yet")
        return self._value  # type: ignore[no-any-return]

    def _resolve(self, value: Any) -> None:
        self._value, self._done = value, True


class UnitOfWork:
    """Writes recorded now and made together by ``commit``; hooks for after.

    A unit is used once. If the store refuses the commit (``StoreError``)
    nothing was written and no hook runs: the caller's memory is unchanged
    because hooks are where it changes.
    """

    __slots__ = ("writes", "_pending", "_hooks")

    def __init__(self) -> None:
        self.writes: list[Write] = []
        self._pending: list[Pending[Any]] = []
        self._hooks: list[Callable[[], object]] = []

    def __bool__(self) -> bool:
        return bool(self.writes or self._hooks)

    def add(self, write: Write) -> Pending[Any]:
        pending: Pending[Any] = Pending()
        self.writes.append(write)
        self._pending.append(pending)
        return pending

    def create_job(self, job: NewJob) -> Pending[tuple[JobRecord, bool]]:
        return self.add(CreateJob(job=job))

    def create_jobs(self, jobs: Sequence[NewJob]) -> Pending[list[JobRecord]]:
        return self.add(CreateJobs(jobs=jobs))

    def moves(self, moves: Sequence[Move], at: float) -> Pending[list[bool]]:
        return self.add(Moves(moves=moves, at=at))

    def transition(self, write: Transition) -> Pending[JobRecord | None]:
        return self.add(write)

    def set_checkout(self, write: SetCheckout) -> Pending[bool]:
        return self.add(write)

    def after_commit(self, hook: Callable[[], object]) -> None:
        """Run ``hook()`` once the writes are durable (in the order added)."""
        self._hooks.append(hook)

    async def commit(self, store: JobStore) -> None:
        """Make the writes in one transaction, then run the hooks.

        A hook that raises is logged and the others still run: the data is
        committed by then, and one broken listener must not stop dispatching.
        """
        if self.writes:
            results = await store.apply(self.writes)
            for pending, result in zip(self._pending, results, strict=True):
                pending._resolve(result)
        for hook in self._hooks:
            try:
                hook()
            except Exception:
                log.exception("after-commit hook %r failed", hook)
