"""The SQL of the PostgreSQL store's job writes, the same rules as ``sqlite_jobs``.

Each function runs inside the transaction of ``PostgresStore.apply`` on
the writer connection. Every state change is one fenced UPDATE that checks
the attempt, that the move is allowed (``records.ALLOWED``) and, on a
runner's word, that this runner holds the job, in the statement that makes
it; nothing is read first. Batches are sent in pipeline mode (``moves``)
or as one statement over arrays (``unnest``: bulk creation, history), so a
batch costs a round trip or two, not one per row.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Sequence
from typing import Any

from psycopg import AsyncConnection, AsyncCursor

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
from narwhal.dispatcher.store.pg_reads import JOB_COLUMNS, job_record
from narwhal.dispatcher.store.schema import json_text

Db = AsyncConnection[tuple[Any, ...]]

#: For each target state, the states it may be reached from (as SQL).
_SOURCES: dict[str, str] = {
    to: ", ".join(f"'{src}'" for src, targets in ALLOWED.items() if to in targets) for to in STATES
}

#: One row of ``transitions``: job id, attempt, state, reason, runner id, time.
_History = tuple[int, int, str, str, str | None, float]

_INSERT_HISTORY = (
    "INSERT INTO transitions (job_id, attempt, state, reason, runner_id, at)"
    " SELECT j, a, s, r, h, to_timestamp(t) FROM unnest(%s::bigint[], %s::int[], %s::text[],"
    " %s::text[], %s::text[], %s::float8[]) AS v(j, a, s, r, h, t)"
)

_JOB_FIELDS = (
    "repo, ref, sha, event, labels, matrix, parent_id, source_key, state, reason,"
    " created_at, updated_at, fork_of, priority, cpus, memory"
)
_JOB_VALUES = (
    "%s, %s, %s, %s, %s::jsonb, %s::jsonb, %s, %s, 'queued', %s,"
    " to_timestamp(%s), to_timestamp(%s), %s, %s, %s, %s"
)
_BULK_INSERT = (
    f"INSERT INTO jobs ({_JOB_FIELDS}) SELECT repo, ref, sha, event, labels, matrix, parent,"
    " NULL, 'queued', reason, to_timestamp(%s), to_timestamp(%s), fork_of, priority, cpus,"
    " memory FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::jsonb[],"
    " %s::jsonb[], %s::bigint[], %s::text[], %s::text[], %s::int[], %s::float8[],"
    " %s::bigint[]) WITH ORDINALITY AS v(repo, ref, sha, event, labels, matrix, parent,"
    " reason, fork_of, priority, cpus, memory, n) ORDER BY n RETURNING id"
)


def now() -> float:
    """The time, to the microsecond a TIMESTAMPTZ keeps: a record built from it
    equals the row read back."""
    return round(time.time(), 6)


async def insert_history(db: Db, rows: Sequence[_History]) -> None:
    """History rows, one statement for all of them."""
    if rows:
        await db.execute(_INSERT_HISTORY, [list(column) for column in zip(*rows, strict=True)])


@functools.cache
def _update_sql(first: str, to: str, *, started: bool, holder: bool) -> str | None:
    """The fenced UPDATE for moves into ``first`` and on to ``to`` (None: no such
    move); the same shapes as ``sqlite_jobs._update_sql``."""
    sources = _SOURCES.get(first)
    if not sources:
        return None
    columns = ["state = %s", "reason = %s", "updated_at = to_timestamp(%s)"]
    if to == "queued":  # a requeue starts the next attempt, held by nobody
        columns += ["attempt = attempt + 1", "runner_id = NULL"]
    elif holder:
        columns.append("runner_id = %s")
    if started:
        columns.append("started_at = to_timestamp(%s)")
    if to in TERMINAL:
        columns.append("finished_at = to_timestamp(%s)")
    fence = " AND runner_id = %s" if holder and first != "assigned" else ""
    return (
        f"UPDATE jobs SET {', '.join(columns)}"
        f" WHERE id = %s AND attempt = %s AND state IN ({sources}){fence}"
    )


def _update(
    move: tuple[int, int, str, str, str, str | None],
    at: float,
    *,
    started: bool,
) -> tuple[str | None, tuple[object, ...]]:
    """The statement and parameters that move a job into ``first`` and on to ``to``."""
    job_id, attempt, first, to, reason, runner_id = move
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


def _job_params(job: NewJob, at: float) -> tuple[object, ...]:
    matrix = json.dumps(dict(job.matrix)) if job.matrix is not None else None
    return (
        *(job.repo, job.ref, job.sha, job.event, json_text(job.labels), matrix),
        *(job.parent_id, job.source_key, job.reason, at, at, job.fork_of),
        *(job.priority, job.cpus, job.memory),
    )


async def create_job(db: Db, write: CreateJob) -> tuple[JobRecord, bool]:
    """Insert the job unless its ``source_key`` exists; the job and whether it is new."""
    at = now()
    cur = await db.execute(
        f"INSERT INTO jobs ({_JOB_FIELDS}) VALUES ({_JOB_VALUES})"
        f" ON CONFLICT (source_key) DO NOTHING RETURNING {JOB_COLUMNS}",
        _job_params(write.job, at),
    )
    row = await cur.fetchone()
    if row is None:  # the key was seen: that job
        cur = await db.execute(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE source_key = %s", (write.job.source_key,)
        )
        found = await cur.fetchone()
        assert found is not None  # noqa: S101 - the conflict was on this key
        return job_record(found), False
    job = job_record(row)
    await insert_history(db, [(job.id, 1, "queued", job.reason, None, at)])
    return job, True


async def create_jobs(db: Db, write: CreateJobs) -> list[JobRecord]:
    """Insert many jobs in one statement over arrays; their records, in order.

    The identity column allocates the ids in the order of the ``ORDER BY``
    (``WITH ORDINALITY``), so the sorted ids are the jobs' in order; the
    records are built here, not read back (every column of a new job is
    known before the insert).
    """
    if not write.jobs:
        return []
    at = now()
    jobs = write.jobs
    columns: list[list[Any]] = [
        [j.repo for j in jobs],
        [j.ref for j in jobs],
        [j.sha for j in jobs],
        [j.event for j in jobs],
        [json_text(j.labels) for j in jobs],
        [json.dumps(dict(j.matrix)) if j.matrix is not None else None for j in jobs],
        [j.parent_id for j in jobs],
        [j.reason for j in jobs],
        [j.fork_of for j in jobs],
        [j.priority for j in jobs],
        [j.cpus for j in jobs],
        [j.memory for j in jobs],
    ]
    cur = await db.execute(_BULK_INSERT, (at, at, *columns))
    ids = sorted(row[0] for row in await cur.fetchall())
    records = [job.record(job_id, at) for job_id, job in zip(ids, jobs, strict=True)]
    await insert_history(db, [(job.id, 1, "queued", job.reason, None, at) for job in records])
    return records


# moving jobs


async def transition(db: Db, write: Transition) -> JobRecord | None:
    """One fenced move, the row read back (``RETURNING``); None when fenced off."""
    job_id, to, at = write.job_id, write.to, write.at
    move = (job_id, write.attempt, to, to, write.reason, write.runner_id)
    sql, params = _update(move, at, started=to == "running")
    if sql is None:
        return None
    row = await (await db.execute(f"{sql} RETURNING {JOB_COLUMNS}", params)).fetchone()
    if row is None:
        return None
    job = job_record(row)
    await insert_history(db, [(job_id, job.attempt, to, write.reason, job.runner_id, at)])
    return job


async def moves(db: Db, write: Moves) -> list[bool]:
    """Many moves at ``write.at``, no row read back; which were allowed.

    A job's consecutive moves (``records.chains``) cost one UPDATE. The
    UPDATEs go out in pipeline mode, in rounds in which no job appears
    twice, so each round is one round trip and a job's moves still happen
    in order. A chain fenced as a whole is then tried one move at a time,
    before the next round, as ``sqlite_jobs.moves`` does.
    """
    batch = write.moves
    applied = [False] * len(batch)
    history: list[_History] = []
    for round_ in _rounds(batch, chains(batch)):
        made = await _move_chains(db, batch, round_, write.at, applied, history)
        for chain, ok in zip(round_, made, strict=True):
            if not ok and len(chain) > 1:
                for i in chain:
                    await _move_chains(db, batch, [[i]], write.at, applied, history)
    await insert_history(db, history)
    return applied


def _rounds(batch: Sequence[Move], all_chains: list[list[int]]) -> list[list[list[int]]]:
    """The chains in rounds, each job at most once in a round, in their order."""
    rounds: list[list[list[int]]] = []
    last: dict[int, int] = {}
    for chain in all_chains:
        job_id = batch[chain[0]][0]
        index = last.get(job_id, -1) + 1
        if index == len(rounds):
            rounds.append([])
        # A later round than any chain before it in its round would reorder
        # nothing: rounds run in order and a job's chains go to later ones.
        rounds[index].append(chain)
        last[job_id] = index
    return rounds


async def _move_chains(
    db: Db,
    batch: Sequence[Move],
    round_: list[list[int]],
    at: float,
    applied: list[bool],
    history: list[_History],
) -> list[bool]:
    cursors: list[AsyncCursor[tuple[Any, ...]] | None] = []
    async with db.pipeline():
        for chain in round_:
            job_id, attempt, first, _, _ = batch[chain[0]]
            _, _, to, reason, runner_id = batch[chain[-1]]
            started = any(batch[i][2] == "running" for i in chain)
            move = (job_id, attempt, first, to, reason, runner_id)
            sql, params = _update(move, at, started=started)
            if sql is None:
                cursors.append(None)
                continue
            cur = db.cursor()
            await cur.execute(sql, params)
            cursors.append(cur)
    made = [cur is not None and cur.rowcount == 1 for cur in cursors]
    for chain, ok in zip(round_, made, strict=True):
        if ok:
            _record_chain(batch, chain, at, applied, history)
    return made


def _record_chain(
    batch: Sequence[Move], chain: list[int], at: float, applied: list[bool], history: list[_History]
) -> None:
    for i in chain:
        applied[i] = True
        job_id, attempt, state, why, holder = batch[i]
        if state == "queued":  # a requeue starts the next attempt, unheld
            history.append((job_id, attempt + 1, state, why, None, at))
        else:
            history.append((job_id, attempt, state, why, holder, at))


# what else changes a job's row


async def set_checkout(db: Db, write: SetCheckout) -> bool:
    """Record what the runner checked out; True the first time, with combinations
    to spawn (the rules of ``sqlite_jobs.set_checkout``)."""
    cur = await db.execute(
        "SELECT pipeline FROM jobs WHERE id = %s AND attempt = %s FOR UPDATE",
        (write.job_id, write.attempt),
    )
    row = await cur.fetchone()
    if row is None:
        return False
    matrix = write.variants[0] if write.variants else None
    priority, cpus, memory = write.needs if write.needs is not None else (None, None, None)
    has_checkout = write.checkout is not None
    await db.execute(
        "UPDATE jobs SET sha = %s, pipeline = COALESCE(NULLIF(%s, ''), pipeline),"
        " matrix = COALESCE(matrix, %s::jsonb),"
        " checkout_seconds = CASE WHEN %s THEN %s ELSE checkout_seconds END,"
        " checkout_cold = CASE WHEN %s THEN %s ELSE checkout_cold END,"
        " checkout_bytes = CASE WHEN %s THEN %s ELSE checkout_bytes END,"
        " priority = CASE WHEN priority = 0 AND %s::int IS NOT NULL THEN %s ELSE priority END,"
        " cpus = COALESCE(%s, cpus), memory = COALESCE(%s, memory) WHERE id = %s",
        (
            *(write.sha, write.pipeline, json.dumps(dict(matrix)) if matrix else None),
            *(has_checkout, write.checkout, has_checkout, write.cold, has_checkout),
            *(write.fetched, priority, priority, cpus, memory, write.job_id),
        ),
    )
    return row[0] is None and len(write.variants) > 1


async def request_cancel(db: Db, write: RequestCancel) -> None:
    await db.execute("UPDATE jobs SET cancel_requested = TRUE WHERE id = %s", (write.job_id,))


async def set_reasons(db: Db, write: SetReasons) -> None:
    """Only a job still queued at that attempt takes its reason; not in history."""
    if not write.reasons:
        return
    ids, attempts, reasons = (list(c) for c in zip(*write.reasons, strict=True))
    await db.execute(
        "UPDATE jobs j SET reason = v.r FROM unnest(%s::bigint[], %s::int[], %s::text[])"
        " AS v(i, a, r) WHERE j.id = v.i AND j.attempt = v.a AND j.state = 'queued'",
        (ids, attempts, reasons),
    )


# steps and logs


async def step_started(db: Db, write: StepStarted) -> None:
    # A step started again (a replayed frame) starts afresh: nothing of its end is kept.
    await db.execute(
        "INSERT INTO steps (job_id, attempt, idx, name, status, started_at)"
        " VALUES (%s, %s, %s, %s, 'running', to_timestamp(%s))"
        " ON CONFLICT (job_id, attempt, idx) DO UPDATE"
        " SET name = excluded.name, status = excluded.status, exit_code = NULL,"
        " started_at = excluded.started_at, duration = NULL",
        (write.job_id, write.attempt, write.index, write.name, write.at),
    )


async def step_finished(db: Db, write: StepFinished) -> None:
    await db.execute(
        "INSERT INTO steps (job_id, attempt, idx, name, status, exit_code, duration)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (job_id, attempt, idx) DO UPDATE"
        " SET status = excluded.status, exit_code = excluded.exit_code,"
        " duration = excluded.duration",
        (
            *(write.job_id, write.attempt, write.index, write.name),
            *(write.status, write.exit_code, write.duration),
        ),
    )


# A chunk resent after a reconnect carries the same seq: keep the first.
_APPEND_LOG = (
    "INSERT INTO logs (job_id, attempt, seq, codec, data, size)"
    " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (job_id, attempt, seq) DO NOTHING"
)


def _log_row(write: AppendLog) -> tuple[int, int, int, int, bytes, int]:
    codec, stored = logcodec.pack(write.data)
    return (write.job_id, write.attempt, write.seq, codec, stored, len(write.data))


async def append_log(db: Db, write: AppendLog) -> None:
    await db.execute(_APPEND_LOG, _log_row(write))


async def append_logs(db: Db, writes: Sequence[AppendLog]) -> None:
    """Many chunks in one round trip (``executemany`` pipelines the inserts)."""
    async with db.cursor() as cursor:
        await cursor.executemany(_APPEND_LOG, [_log_row(write) for write in writes])


async def drop_logs(db: Db, write: DropLogs) -> int:
    """Delete the jobs' chunks, every attempt, leave the marker; the stored bytes freed."""
    ids = sorted(set(write.job_ids))
    cur = await db.execute(
        "WITH gone AS (DELETE FROM logs WHERE job_id = ANY(%s::bigint[]) RETURNING codec, data)"
        " SELECT COALESCE(SUM(length(data)), 0)::bigint FROM gone"
        f" WHERE codec != {logcodec.MARKER}",
        (ids,),
    )
    row = await cur.fetchone()
    marker = logcodec.retention_marker(write.at)
    await db.execute(
        "INSERT INTO logs (job_id, attempt, seq, codec, data, size)"
        f" SELECT id, attempt, 0, {logcodec.MARKER}, %s, %s FROM jobs"
        " WHERE id = ANY(%s::bigint[])",
        (marker, len(marker), ids),
    )
    return int(row[0]) if row is not None else 0
