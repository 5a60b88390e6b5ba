"""The job store: jobs, their state transitions, steps and log chunks.

SQLite in WAL mode is the embedded default. Every state change goes through
``transition``, which checks the (job id, attempt) fence and the allowed
moves in one statement, so a late frame from an attempt the dispatcher
already gave up on cannot change anything.

The store is synchronous. The dispatcher writes through one connection on
its event loop (short group commits, no checkpoints) and reads through a
second, read-only one on a thread (see ``dispatcher.access``).
"""

from __future__ import annotations

import functools
import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from narwhal.dispatcher.records import (
    ACTIVE,
    ALLOWED,
    STATES,
    TERMINAL,
    JobRecord,
    Move,
    StepRecord,
    chains,
)
from narwhal.dispatcher.store.schema import JOB_COLUMNS, SCHEMA, job_record, json_text, migrate
from narwhal.errors import NotFound, StoreError

#: For each target state, the states it may be reached from (as SQL).
_SOURCES: dict[str, str] = {
    to: ", ".join(f"'{src}'" for src, targets in ALLOWED.items() if to in targets) for to in STATES
}

#: Bytes the WAL file is cut back to when it is reused after a checkpoint.
WAL_SIZE_LIMIT = 32 << 20

#: How long a write waits for another connection's lock before it fails.
WRITE_WAIT_MS = 250

#: One row of ``transitions``: job id, attempt, state, reason, runner id, time.
_History = tuple[int, int, str, str, str | None, float]

_INSERT_TRANSITIONS = (
    "INSERT INTO transitions (job_id, attempt, state, reason, runner_id, at)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)


@functools.cache
def _update_sql(first: str, to: str, *, started: bool, holder: bool) -> str | None:
    """The fenced UPDATE for moves into ``first`` and on to ``to`` (None: no such move).

    It checks the attempt, that a move into ``first`` is allowed and, for a
    move made on a runner's word (``holder`` given, the job already held:
    anything but a move into ``assigned``, which only the scheduler makes),
    that this runner holds the job, in the same statement that makes it.
    It sets only what the move changes: one statement per shape of move,
    each prepared once.
    """
    sources = _SOURCES.get(first)
    if not sources:
        return None
    columns = ["state = ?", "reason = ?", "updated_at = ?"]
    if to == "queued":  # a requeue starts the next attempt, held by nobody
        columns += ["attempt = attempt + 1", "runner_id = NULL"]
    elif holder:
        columns.append("runner_id = ?")
    if started:
        columns.append("started_at = ?")
    if to in TERMINAL:
        columns.append("finished_at = ?")
    fence = " AND runner_id = ?" if holder and first != "assigned" else ""
    return (
        f"UPDATE jobs SET {', '.join(columns)}"
        f" WHERE id = ? AND attempt = ? AND state IN ({sources}){fence}"
    )


def _update(
    job_id: int,
    attempt: int,
    first: str,
    to: str,
    reason: str,
    runner_id: str | None,
    at: float,
    *,
    started: bool,
) -> tuple[str | None, tuple[object, ...]]:
    """The statement and parameters that move a job into ``first`` and on to ``to``."""
    holder = runner_id is not None and to != "queued"
    params: list[object] = [to, reason, at]
    if holder:
        params.append(runner_id)
    if started:
        params.append(at)
    if to in TERMINAL:
        params.append(at)
    params += (job_id, attempt)
    if holder and first != "assigned":
        params.append(runner_id)
    return _update_sql(first, to, started=started, holder=holder), tuple(params)


class SqliteStore:
    """Jobs, transitions, steps and logs in one SQLite file (WAL).

    One connection per object. ``readonly`` opens a reader beside the
    writer (WAL lets it read while the writer commits); a writer opened with
    ``autocheckpoint=False`` leaves copying the WAL back into the database
    to whoever calls ``checkpoint``, so its commits never wait for that.
    """

    def __init__(self, path: Path, *, readonly: bool = False, autocheckpoint: bool = True) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.row_factory = sqlite3.Row
            # The dispatcher's writer runs on its event loop and is the only
            # writer by design: it must not sit out a stranger's lock for long
            # (its callers retry), while a reader may wait.
            self._db.execute(f"PRAGMA busy_timeout={5000 if readonly else WRITE_WAIT_MS}")
            if readonly:
                self._db.execute("PRAGMA query_only=1")
            else:
                self._db.execute("PRAGMA journal_mode=WAL")
                # NORMAL is durable across process crashes in WAL mode; only
                # a power loss can drop the last transactions.
                self._db.execute("PRAGMA synchronous=NORMAL")
                if not autocheckpoint:
                    self._db.execute("PRAGMA wal_autocheckpoint=0")
                # After a burst (a big log) the WAL file shrinks back to this
                # size once it is checkpointed, instead of keeping its peak.
                self._db.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
                self._db.executescript(SCHEMA)
                migrate(self._db)
        except sqlite3.Error as e:
            raise StoreError(f"cannot open job store {path}: {e}") from e
        self._in_tx = False

    def close(self) -> None:
        self._db.close()

    def checkpoint(self) -> None:
        """Copy what the WAL holds back into the database, without blocking writers."""
        try:
            self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as e:
            raise StoreError(f"checkpoint failed: {e}") from e

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One commit for everything inside; nested uses join the outer one."""
        if self._in_tx:
            yield
            return
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:  # busy past the timeout, read-only, disk gone
            raise StoreError(str(e)) from e
        self._in_tx = True
        try:
            yield
        except sqlite3.Error as e:
            self._db.execute("ROLLBACK")
            raise StoreError(str(e)) from e
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        else:
            self._db.execute("COMMIT")
        finally:
            self._in_tx = False

    def apply(self, calls: Iterable[tuple[Callable[..., Any], dict[str, Any]]]) -> list[Any]:
        """Run many store calls in one transaction (group commit); their results, in order.

        The dispatcher hands in everything one batch of frames asks for, so
        a burst costs one commit, not one per frame.
        """
        with self.transaction():
            return [method(self, **kwargs) for method, kwargs in calls]

    # jobs

    def create_job(self, **fields: Any) -> JobRecord:
        """Create a queued job (fields as ``create_job_once``)."""
        return self.create_job_once(**fields)[0]

    def create_job_once(
        self,
        *,
        repo: str,
        ref: str,
        sha: str | None,
        event: str,
        labels: Mapping[str, str] | None = None,
        matrix: Mapping[str, str] | None = None,
        parent_id: int | None = None,
        reason: str = "submitted",
        source_key: str | None = None,
        fork_of: str | None = None,
    ) -> tuple[JobRecord, bool]:
        """Create a job unless one with ``source_key`` exists; say which happened."""
        if source_key is not None:
            row = self._db.execute(
                f"SELECT {JOB_COLUMNS} FROM jobs WHERE source_key = ?", (source_key,)
            ).fetchone()
            if row is not None:
                return job_record(row), False
        now = time.time()
        with self.transaction():
            cur = self._db.execute(
                "INSERT INTO jobs (repo, ref, sha, event, labels, matrix, parent_id,"
                " source_key, state, reason, created_at, updated_at, fork_of)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?)",
                (
                    repo,
                    ref,
                    sha,
                    event,
                    json_text(labels or {}),
                    json.dumps(dict(matrix)) if matrix is not None else None,
                    parent_id,
                    source_key,
                    reason,
                    now,
                    now,
                    fork_of,
                ),
            )
            job_id = int(cur.lastrowid or 0)
            self._db.execute(_INSERT_TRANSITIONS, (job_id, 1, "queued", reason, None, now))
        return self.get_job(job_id), True

    def create_jobs(self, jobs: list[Mapping[str, Any]]) -> list[JobRecord]:
        """Create many queued jobs in one transaction (fields as ``create_job``).

        The records are built here rather than read back: this is the bulk
        path, and every column of a new job is known before the insert.
        """
        now = time.time()
        with self.transaction():
            first = self._db.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM jobs").fetchone()[0]
            records = [
                JobRecord(
                    id=job_id,
                    repo=j["repo"],
                    ref=j["ref"],
                    sha=j.get("sha"),
                    event=j["event"],
                    labels=dict(j.get("labels") or {}),
                    matrix=None,
                    parent_id=None,
                    pipeline=None,
                    state="queued",
                    reason=j.get("reason", "submitted"),
                    attempt=1,
                    runner_id=None,
                    cancel_requested=False,
                    created_at=now,
                    updated_at=now,
                    started_at=None,
                    finished_at=None,
                )
                for job_id, j in enumerate(jobs, start=first)
            ]
            self._db.executemany(
                "INSERT INTO jobs (id, repo, ref, sha, event, labels, state, reason,"
                " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?)",
                [
                    (r.id, r.repo, r.ref, r.sha, r.event, json_text(r.labels), r.reason, now, now)
                    for r in records
                ],
            )
            self._db.executemany(
                _INSERT_TRANSITIONS, [(r.id, 1, "queued", r.reason, None, now) for r in records]
            )
        return records

    def get_job(self, job_id: int) -> JobRecord:
        row = self._db.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise NotFound(f"no job {job_id}")
        return job_record(row)

    def list_jobs(
        self,
        *,
        states: Iterable[str] = (),
        repo: str | None = None,
        parent: int | None = None,
        before: int | None = None,
        limit: int = 50,
        ascending: bool = False,
    ) -> list[JobRecord]:
        """Jobs by id, newest first; ``parent``: the matrix jobs a job spawned."""
        where: list[str] = []
        args: list[object] = []
        if parent is not None:
            where.append("parent_id = ?")
            args.append(parent)
        states = list(states)
        if states:
            where.append(f"state IN ({', '.join('?' * len(states))})")
            args.extend(states)
        if repo is not None:
            where.append("repo = ?")
            args.append(repo)
        if before is not None:
            where.append("id < ?")
            args.append(before)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        order = "ASC" if ascending else "DESC"
        rows = self._db.execute(
            f"SELECT {JOB_COLUMNS} FROM jobs {clause} ORDER BY id {order} LIMIT ?",
            (*args, limit),
        ).fetchall()
        return [job_record(r) for r in rows]

    def transition(
        self,
        job_id: int,
        *,
        attempt: int,
        to: str,
        reason: str,
        runner_id: str | None = None,
    ) -> JobRecord | None:
        """Move a job to ``to`` if ``attempt`` is current and the move is allowed.

        With ``runner_id`` (a move a runner's frame asks for), only if that
        runner holds the job; a move into ``assigned`` records it as holder.
        Returns the updated job, or None when the move was fenced off (a late
        frame from an old attempt or another runner, or a job already past
        that state).
        """
        now = time.time()
        sql, params = _update(
            job_id, attempt, to, to, reason, runner_id, now, started=to == "running"
        )
        if sql is None:
            return None
        with self.transaction():
            row = self._db.execute(f"{sql} RETURNING {JOB_COLUMNS}", params).fetchone()
            if row is None:
                return None
            job = job_record(row)
            self._db.execute(
                _INSERT_TRANSITIONS, (job_id, job.attempt, to, reason, job.runner_id, now)
            )
        return job

    def move(self, moves: Sequence[Move], *, at: float) -> list[bool]:
        """Apply many moves at time ``at`` in one transaction; say which were allowed.

        The same fence and rules as ``transition``, without reading rows
        back: the dispatcher already holds the records of the jobs it moves
        and updates them with ``JobRecord.moved``. This is the hot path (a
        scheduling round, a batch of runner frames), so a job's consecutive
        moves in one batch cost one UPDATE, with a history row each.
        """
        applied = [False] * len(moves)
        history: list[_History] = []
        with self.transaction():
            for chain in chains(moves):
                made = self._move_chain(moves, chain, at, applied, history)
                if not made and len(chain) > 1:  # fenced as a whole: try each alone
                    for i in chain:
                        self._move_chain(moves, [i], at, applied, history)
            self._db.executemany(_INSERT_TRANSITIONS, history)
        return applied

    def _move_chain(
        self,
        moves: Sequence[Move],
        chain: list[int],
        at: float,
        applied: list[bool],
        history: list[_History],
    ) -> bool:
        job_id, attempt, first, _, _ = moves[chain[0]]
        _, _, to, reason, runner_id = moves[chain[-1]]
        started = any(moves[i][2] == "running" for i in chain)
        sql, params = _update(job_id, attempt, first, to, reason, runner_id, at, started=started)
        if sql is None or self._db.execute(sql, params).rowcount != 1:
            return False
        for i in chain:
            applied[i] = True
            _, _, state, why, holder = moves[i]
            if state == "queued":  # a requeue starts the next attempt, unheld
                history.append((job_id, attempt + 1, state, why, None, at))
            else:
                history.append((job_id, attempt, state, why, holder, at))
        return True

    def set_checkout(
        self,
        job_id: int,
        *,
        attempt: int,
        sha: str,
        pipeline: str,
        variants: tuple[Mapping[str, str], ...] = (),
    ) -> bool:
        """Record what the runner checked out; the job takes ``variants[0]``.

        True only the first time a job is checked out (any attempt) with
        more than one matrix combination: that is when the others become
        jobs. A stale attempt or a replayed frame changes nothing.
        """
        matrix = variants[0] if variants else None
        row = self._db.execute(
            "SELECT pipeline FROM jobs WHERE id = ? AND attempt = ?", (job_id, attempt)
        ).fetchone()
        if row is None:
            return False
        # An empty ``pipeline``: the commit is known but its narwhal.yml did
        # not parse; the sha is recorded all the same (a resubmit builds it).
        self._db.execute(
            "UPDATE jobs SET sha = ?, pipeline = COALESCE(NULLIF(?, ''), pipeline),"
            " matrix = COALESCE(matrix, ?) WHERE id = ?",
            (sha, pipeline, json.dumps(dict(matrix)) if matrix else None, job_id),
        )
        return row[0] is None and len(variants) > 1

    def holders(
        self, runner_id: str, keys: Sequence[tuple[int, int]]
    ) -> dict[tuple[int, int], str]:
        """What the store says of the ``(job id, attempt)`` pairs a runner's READY lists.

        "held": the job's current attempt, assigned or running, held by
        ``runner_id``; "stale": an attempt ``runner_id`` held that is over
        (superseded or ended); absent: anything else (no such job, another
        runner's, never this runner's). Two queries for the whole list.
        """
        ids = json.dumps(sorted({job_id for job_id, _ in keys}))
        jobs = {
            row[0]: (row[1], row[2], row[3])
            for row in self._db.execute(
                "SELECT id, attempt, state, runner_id FROM jobs"
                " WHERE id IN (SELECT value FROM json_each(?))",
                (ids,),
            )
        }
        held_once = {
            (row[0], row[1])
            for row in self._db.execute(
                "SELECT DISTINCT job_id, attempt FROM transitions"
                " WHERE runner_id = ? AND job_id IN (SELECT value FROM json_each(?))",
                (runner_id, ids),
            )
        }
        verdicts: dict[tuple[int, int], str] = {}
        for key in keys:
            if key[0] not in jobs:
                continue
            attempt, state, holder = jobs[key[0]]
            if attempt == key[1] and state in ACTIVE and holder == runner_id:
                verdicts[key] = "held"
            elif key in held_once and (attempt != key[1] or state in TERMINAL):
                verdicts[key] = "stale"
        return verdicts

    def find_active(self, *, repo: str, sha: str, event: str) -> JobRecord | None:
        """A queued, assigned or running job for this commit and event, if any."""
        row = self._db.execute(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE repo = ? AND sha = ? AND event = ?"
            " AND state IN ('queued', 'assigned', 'running') ORDER BY id LIMIT 1",
            (repo, sha, event),
        ).fetchone()
        return job_record(row) if row is not None else None

    def request_cancel(self, job_id: int) -> None:
        # In a transaction: a foreign lock is then a StoreError (503), not sqlite3's.
        with self.transaction():
            self._db.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))

    def set_reasons(self, reasons: Sequence[tuple[int, int, str]]) -> None:
        """Say why queued jobs wait: ``(job id, attempt, reason)``; no state changes.

        Only a job still queued at that attempt takes it (one assigned
        meanwhile keeps its own reason); not a transition, so not in history.
        """
        with self.transaction():
            self._db.executemany(
                "UPDATE jobs SET reason = ? WHERE id = ? AND attempt = ? AND state = 'queued'",
                [(reason, job_id, attempt) for job_id, attempt, reason in reasons],
            )

    def transitions(self, job_id: int) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT attempt, state, reason, runner_id, at FROM transitions"
            " WHERE job_id = ? ORDER BY id",
            (job_id,),
        ).fetchall()
        return [dict(r) for r in rows]

    # steps

    def step_started(self, job_id: int, *, attempt: int, index: int, name: str) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO steps (job_id, attempt, idx, name, status, started_at)"
            " VALUES (?, ?, ?, ?, 'running', ?)",
            (job_id, attempt, index, name, time.time()),
        )

    def step_finished(
        self,
        job_id: int,
        *,
        attempt: int,
        index: int,
        name: str,
        status: str,
        exit_code: int | None,
        duration: float,
    ) -> None:
        self._db.execute(
            "INSERT INTO steps (job_id, attempt, idx, name, status, exit_code, duration)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (job_id, attempt, idx) DO UPDATE"
            " SET status = excluded.status, exit_code = excluded.exit_code,"
            " duration = excluded.duration",
            (job_id, attempt, index, name, status, exit_code, duration),
        )

    def steps(self, job_id: int, *, attempt: int) -> list[StepRecord]:
        rows = self._db.execute(
            "SELECT idx, name, status, exit_code, started_at, duration FROM steps"
            " WHERE job_id = ? AND attempt = ? ORDER BY idx",
            (job_id, attempt),
        ).fetchall()
        return [
            StepRecord(
                index=r[0], name=r[1], status=r[2], exit_code=r[3], started_at=r[4], duration=r[5]
            )
            for r in rows
        ]

    # logs

    def append_log(self, job_id: int, *, attempt: int, seq: int, data: bytes) -> None:
        # A chunk resent after a reconnect carries the same seq: keep the first.
        self._db.execute(
            "INSERT OR IGNORE INTO logs (job_id, attempt, seq, data) VALUES (?, ?, ?, ?)",
            (job_id, attempt, seq, data),
        )

    def read_log(self, job_id: int, *, attempt: int, after: int = -1) -> list[tuple[int, bytes]]:
        rows = self._db.execute(
            "SELECT seq, data FROM logs WHERE job_id = ? AND attempt = ? AND seq > ? ORDER BY seq",
            (job_id, attempt, after),
        ).fetchall()
        return [(r[0], bytes(r[1])) for r in rows]

    # runner endpoints added at run time, reconnected after a restart

    def add_endpoint(self, url: str) -> None:
        with self.transaction():
            self._db.execute(
                "INSERT OR IGNORE INTO endpoints (url, added_at) VALUES (?, ?)", (url, time.time())
            )

    def endpoints(self) -> list[str]:
        return [r[0] for r in self._db.execute("SELECT url FROM endpoints ORDER BY added_at")]

    # tables of other modules (``dispatcher.vault``, ``dispatcher.tokens``): one statement each

    def rows(self, sql: str, params: Sequence[object] = ()) -> list[sqlite3.Row]:
        """The rows one SELECT returns."""
        try:
            return self._db.execute(sql, params).fetchall()
        except sqlite3.Error as e:
            raise StoreError(str(e)) from e

    def execute(self, sql: str, params: Sequence[object] = ()) -> int:
        """Run one writing statement in a transaction of its own; the rows it changed."""
        with self.transaction():
            return int(self._db.execute(sql, params).rowcount)
