"""The SQL of the job writes: creation, the fenced state moves, checkouts, steps, logs.

Each function runs inside the transaction of ``SqliteStore.apply`` on the
writer connection and returns the result ``base`` documents for its write.

Kept as it was proven, and to be kept: every state change is one fenced
UPDATE (``_update_sql``) that checks the attempt, that the move is allowed
(``records.ALLOWED``) and, on a runner's word, that this runner holds the
job, in the same statement that makes the move. Nothing is read first, so
no late frame of an attempt the dispatcher gave up on can slip in between
a check and a write.
"""

from __future__ import annotations

import functools
import json
import sqlite3
import time
from collections.abc import Sequence

from narwhal.dispatcher.records import ALLOWED, STATES, TERMINAL, JobRecord, Move, chains
from narwhal.dispatcher.store import logcodec
from narwhal.dispatcher.store.base import (
    AppendLog,
    CreateJob,
    CreateJobs,
    DropLogs,
    Moves,
    NewJob,
    RequestCancel,
    SetCheckout,
    SetReasons,
    StepFinished,
    StepStarted,
    Transition,
)
from narwhal.dispatcher.store.schema import JOB_COLUMNS, job_record, json_text

#: For each target state, the states it may be reached from (as SQL).
_SOURCES: dict[str, str] = {
    to: ", ".join(f"'{src}'" for src, targets in ALLOWED.items() if to in targets) for to in STATES
}

#: One row of ``transitions``: job id, attempt, state, reason, runner id, time.
_History = tuple[int, int, str, str, str | None, float]

_INSERT_TRANSITIONS = (
    "INSERT INTO transitions (job_id, attempt, state, reason, runner_id, at)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)

_JOB_FIELDS = (
    "repo, ref, sha, event, labels, matrix, parent_id, source_key, state, reason,"
    " created_at, updated_at, fork_of, priority, cpus, memory"
)
_JOB_VALUES = "(?, ?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?)"
#: Rows per INSERT of the bulk path: 15 parameters each, under SQLite's
#: limit of 32766 parameters per statement.
_BULK_ROWS = 1000


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


# creating jobs


def _job_params(job: NewJob, now: float) -> tuple[object, ...]:
    matrix = json.dumps(dict(job.matrix)) if job.matrix is not None else None
    return (
        *(job.repo, job.ref, job.sha, job.event, json_text(job.labels), matrix),
        *(job.parent_id, job.source_key, job.reason, now, now, job.fork_of),
        *(job.priority, job.cpus, job.memory),
    )


def create_job(db: sqlite3.Connection, write: CreateJob) -> tuple[JobRecord, bool]:
    """Insert the job unless its ``source_key`` exists; the job and whether it is new."""
    now = time.time()
    row = db.execute(
        f"INSERT INTO jobs ({_JOB_FIELDS}) VALUES {_JOB_VALUES}"
        f" ON CONFLICT (source_key) DO NOTHING RETURNING {JOB_COLUMNS}",
        _job_params(write.job, now),
    ).fetchone()
    if row is None:  # the key was seen: that job
        row = db.execute(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE source_key = ?", (write.job.source_key,)
        ).fetchone()
        return job_record(row), False
    job = job_record(row)
    db.execute(_INSERT_TRANSITIONS, (job.id, 1, "queued", job.reason, None, now))
    return job, True


@functools.cache
def _bulk_insert_sql(rows: int) -> str:
    values = ", ".join([_JOB_VALUES] * rows)
    return f"INSERT INTO jobs ({_JOB_FIELDS}) VALUES {values} RETURNING id"


def create_jobs(db: sqlite3.Connection, write: CreateJobs) -> list[JobRecord]:
    """Insert many jobs, a thousand per statement; their records, in order.

    The database allocates the ids (no ``MAX(id) + 1`` read, which two
    writers could both make); ``RETURNING`` says which. SQLite gives the
    rows of one statement increasing rowids in the order of its VALUES, so
    the sorted ids are the jobs' in order. The records are built here, not
    read back: this is the bulk path, and every column of a new job is known
    before the insert.
    """
    now = time.time()
    records: list[JobRecord] = []
    cursor = db.cursor()
    cursor.row_factory = None  # plain tuples: a Row per id costs more than the insert
    for start in range(0, len(write.jobs), _BULK_ROWS):
        chunk = write.jobs[start : start + _BULK_ROWS]
        params = [value for job in chunk for value in _job_params(job, now)]
        ids = sorted(row[0] for row in cursor.execute(_bulk_insert_sql(len(chunk)), params))
        records += [job.record(job_id, now) for job_id, job in zip(ids, chunk, strict=True)]
    db.executemany(
        _INSERT_TRANSITIONS, [(job.id, 1, "queued", job.reason, None, now) for job in records]
    )
    return records


# moving jobs


def transition(db: sqlite3.Connection, write: Transition) -> JobRecord | None:
    """One fenced move, the row read back (``RETURNING``); None when fenced off."""
    job_id, to, at = write.job_id, write.to, write.at
    sql, params = _update(
        job_id, write.attempt, to, to, write.reason, write.runner_id, at, started=to == "running"
    )
    if sql is None:
        return None
    row = db.execute(f"{sql} RETURNING {JOB_COLUMNS}", params).fetchone()
    if row is None:
        return None
    job = job_record(row)
    db.execute(_INSERT_TRANSITIONS, (job_id, job.attempt, to, write.reason, job.runner_id, at))
    return job


def moves(db: sqlite3.Connection, write: Moves) -> list[bool]:
    """Many moves at ``write.at``, no row read back; which were allowed.

    The hot path (a scheduling round, a batch of runner frames): a job's
    consecutive moves (``records.chains``) cost one UPDATE, with a history
    row each. A chain fenced as a whole is tried one move at a time, since
    its later moves may still be allowed.
    """
    batch = write.moves
    applied = [False] * len(batch)
    history: list[_History] = []
    for chain in chains(batch):
        made = _move_chain(db, batch, chain, write.at, applied, history)
        if not made and len(chain) > 1:
            for i in chain:
                _move_chain(db, batch, [i], write.at, applied, history)
    db.executemany(_INSERT_TRANSITIONS, history)
    return applied


def _move_chain(
    db: sqlite3.Connection,
    batch: Sequence[Move],
    chain: list[int],
    at: float,
    applied: list[bool],
    history: list[_History],
) -> bool:
    job_id, attempt, first, _, _ = batch[chain[0]]
    _, _, to, reason, runner_id = batch[chain[-1]]
    started = any(batch[i][2] == "running" for i in chain)
    sql, params = _update(job_id, attempt, first, to, reason, runner_id, at, started=started)
    if sql is None or db.execute(sql, params).rowcount != 1:
        return False
    for i in chain:
        applied[i] = True
        _, _, state, why, holder = batch[i]
        if state == "queued":  # a requeue starts the next attempt, unheld
            history.append((job_id, attempt + 1, state, why, None, at))
        else:
            history.append((job_id, attempt, state, why, holder, at))
    return True


# what else changes a job's row


def set_checkout(db: sqlite3.Connection, write: SetCheckout) -> bool:
    """Record what the runner checked out; True the first time, with combinations to spawn.

    A stale attempt or a replayed frame changes nothing it should not: the
    sha again, the pipeline and the matrix only where unset.
    """
    row = db.execute(
        "SELECT pipeline FROM jobs WHERE id = ? AND attempt = ?", (write.job_id, write.attempt)
    ).fetchone()
    if row is None:
        return False
    matrix = write.variants[0] if write.variants else None
    # An empty ``pipeline``: the commit is known but its narwhal.yml did
    # not parse; the sha is recorded all the same (a resubmit builds it).
    db.execute(
        "UPDATE jobs SET sha = ?, pipeline = COALESCE(NULLIF(?, ''), pipeline),"
        " matrix = COALESCE(matrix, ?) WHERE id = ?",
        (write.sha, write.pipeline, json.dumps(dict(matrix)) if matrix else None, write.job_id),
    )
    if write.checkout is not None:
        db.execute(
            "UPDATE jobs SET checkout_seconds = ?, checkout_cold = ?, checkout_bytes = ?"
            " WHERE id = ?",
            (write.checkout, write.cold, write.fetched, write.job_id),
        )
    if write.needs is not None:
        priority, cpus, memory = write.needs
        db.execute(
            "UPDATE jobs SET priority = CASE priority WHEN 0 THEN ? ELSE priority END,"
            " cpus = COALESCE(?, cpus), memory = COALESCE(?, memory) WHERE id = ?",
            (priority, cpus, memory, write.job_id),
        )
    return row[0] is None and len(write.variants) > 1


def request_cancel(db: sqlite3.Connection, write: RequestCancel) -> None:
    db.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (write.job_id,))


def set_reasons(db: sqlite3.Connection, write: SetReasons) -> None:
    """Only a job still queued at that attempt takes its reason (one assigned
    meanwhile keeps its own); not a transition, so not in history."""
    db.executemany(
        "UPDATE jobs SET reason = ? WHERE id = ? AND attempt = ? AND state = 'queued'",
        [(reason, job_id, attempt) for job_id, attempt, reason in write.reasons],
    )


# steps and logs


def step_started(db: sqlite3.Connection, write: StepStarted) -> None:
    # A step started again (a replayed frame) starts afresh: nothing of its end is kept.
    db.execute(
        "INSERT INTO steps (job_id, attempt, idx, name, status, started_at)"
        " VALUES (?, ?, ?, ?, 'running', ?) ON CONFLICT (job_id, attempt, idx) DO UPDATE"
        " SET name = excluded.name, status = excluded.status, exit_code = NULL,"
        " started_at = excluded.started_at, duration = NULL",
        (write.job_id, write.attempt, write.index, write.name, write.at),
    )


def step_finished(db: sqlite3.Connection, write: StepFinished) -> None:
    db.execute(
        "INSERT INTO steps (job_id, attempt, idx, name, status, exit_code, duration)"
        " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (job_id, attempt, idx) DO UPDATE"
        " SET status = excluded.status, exit_code = excluded.exit_code,"
        " duration = excluded.duration",
        (
            *(write.job_id, write.attempt, write.index, write.name),
            *(write.status, write.exit_code, write.duration),
        ),
    )


def append_log(db: sqlite3.Connection, write: AppendLog) -> None:
    # A chunk resent after a reconnect carries the same seq: keep the first.
    codec, stored = logcodec.pack(write.data)
    db.execute(
        "INSERT INTO logs (job_id, attempt, seq, codec, data, size) VALUES (?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (job_id, attempt, seq) DO NOTHING",
        (write.job_id, write.attempt, write.seq, codec, stored, len(write.data)),
    )


def drop_logs(db: sqlite3.Connection, write: DropLogs) -> int:
    """Delete the jobs' chunks, every attempt; the stored bytes freed."""
    ids = json.dumps(sorted(set(write.job_ids)))
    where = "job_id IN (SELECT value FROM json_each(?))"
    freed = db.execute(
        f"SELECT COALESCE(SUM(length(data)), 0) FROM logs WHERE {where}"
        f" AND codec != {logcodec.MARKER}",
        (ids,),
    )
    total = int(freed.fetchone()[0])
    db.execute(f"DELETE FROM logs WHERE {where}", (ids,))
    marker = logcodec.retention_marker(write.at)
    db.execute(
        "INSERT INTO logs (job_id, attempt, seq, codec, data, size)"
        f" SELECT id, attempt, 0, {logcodec.MARKER}, ?, ? FROM jobs"
        " WHERE id IN (SELECT value FROM json_each(?))",
        (marker, len(marker), ids),
    )
    return total
