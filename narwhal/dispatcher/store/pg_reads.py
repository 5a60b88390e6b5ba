"""The SQL of the PostgreSQL store's reads, and how its rows become records.

Times are ``TIMESTAMPTZ`` in the tables and float epoch seconds in the
records: ``_epoch`` converts on the way out, ``to_timestamp`` on the way in
(``pg_jobs``). Each function runs on a read connection, never the writer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from psycopg import AsyncConnection

from narwhal.dispatcher.records import TERMINAL, JobRecord, StepRecord, TransitionRecord
from narwhal.dispatcher.store import logcodec
from narwhal.dispatcher.store.base import Holding, JobQuery, LogFootprint, holding
from narwhal.errors import NotFound

Db = AsyncConnection[tuple[Any, ...]]


def epoch(column: str) -> str:
    """``column`` (a TIMESTAMPTZ) as float epoch seconds."""
    return f"EXTRACT(EPOCH FROM {column})::float8"


JOB_COLUMNS = (
    "id, repo, ref, sha, event, labels, matrix, parent_id, pipeline, state, reason,"
    " attempt, runner_id, cancel_requested, "
    + ", ".join(epoch(c) for c in ("created_at", "updated_at", "started_at", "finished_at"))
    + ", fork_of, priority, cpus, memory, checkout_seconds, checkout_cold, checkout_bytes"
)

_TERMINAL = sorted(TERMINAL)


def job_record(row: Sequence[Any]) -> JobRecord:
    """A row selected with ``JOB_COLUMNS``, in that order, as a record."""
    # The columns are the record's fields, in order.
    return JobRecord._make(row)


async def get_job(db: Db, job_id: int) -> JobRecord:
    cur = await db.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = %s", (job_id,))
    row = await cur.fetchone()
    if row is None:
        raise NotFound(f"no job {job_id}")
    return job_record(row)


async def list_jobs(db: Db, query: JobQuery) -> list[JobRecord]:
    where: list[str] = []
    args: list[object] = []
    for clause, value in (
        ("parent_id = %s", query.parent),
        ("state = ANY(%s)", list(query.states) or None),
        ("repo = %s", query.repo),
        ("ref = ANY(%s)", list(query.refs) or None),
        ("runner_id = %s", query.runner),
        ("id < %s", query.before),
    ):
        if value is not None:
            where.append(clause)
            args.append(value)
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    order = "ASC" if query.ascending else "DESC"
    cur = await db.execute(
        f"SELECT {JOB_COLUMNS} FROM jobs {clause} ORDER BY id {order} LIMIT %s",
        (*args, query.limit),
    )
    return [job_record(r) for r in await cur.fetchall()]


async def steps(db: Db, job_id: int, attempt: int) -> list[StepRecord]:
    cur = await db.execute(
        f"SELECT idx, name, status, exit_code, {epoch('started_at')}, duration FROM steps"
        " WHERE job_id = %s AND attempt = %s ORDER BY idx",
        (job_id, attempt),
    )
    return [
        StepRecord(
            index=r[0], name=r[1], status=r[2], exit_code=r[3], started_at=r[4], duration=r[5]
        )
        for r in await cur.fetchall()
    ]


async def transitions(db: Db, job_id: int) -> list[TransitionRecord]:
    cur = await db.execute(
        f"SELECT attempt, state, reason, runner_id, {epoch('at')} FROM transitions"
        " WHERE job_id = %s ORDER BY id",
        (job_id,),
    )
    return [
        TransitionRecord(attempt=r[0], state=r[1], reason=r[2], runner_id=r[3], at=r[4])
        for r in await cur.fetchall()
    ]


async def read_log(db: Db, job_id: int, attempt: int, after: int) -> list[tuple[int, bytes]]:
    cur = await db.execute(
        "SELECT seq, codec, data FROM logs WHERE job_id = %s AND attempt = %s AND seq > %s"
        " ORDER BY seq",
        (job_id, attempt, after),
    )
    return [(r[0], logcodec.unpack(r[1], bytes(r[2]))) for r in await cur.fetchall()]


async def find_active(db: Db, repo: str, sha: str, event: str) -> JobRecord | None:
    cur = await db.execute(
        f"SELECT {JOB_COLUMNS} FROM jobs WHERE repo = %s AND sha = %s AND event = %s"
        " AND state IN ('queued', 'assigned', 'running') ORDER BY id LIMIT 1",
        (repo, sha, event),
    )
    row = await cur.fetchone()
    return job_record(row) if row is not None else None


async def holders(
    db: Db, runner_id: str, keys: Sequence[tuple[int, int]]
) -> dict[tuple[int, int], Holding]:
    """See ``JobStore.holders``: two queries for the whole list."""
    ids = sorted({job_id for job_id, _ in keys})
    cur = await db.execute(
        "SELECT id, attempt, state, runner_id FROM jobs WHERE id = ANY(%s::bigint[])", (ids,)
    )
    jobs = {row[0]: (row[1], row[2], row[3]) for row in await cur.fetchall()}
    cur = await db.execute(
        "SELECT DISTINCT job_id, attempt FROM transitions"
        " WHERE runner_id = %s AND job_id = ANY(%s::bigint[])",
        (runner_id, ids),
    )
    held_once = {(row[0], row[1]) for row in await cur.fetchall()}
    return holding(runner_id, keys, jobs, held_once)


async def log_footprints(db: Db) -> list[LogFootprint]:
    cur = await db.execute(
        f"SELECT j.id, j.repo, {epoch('COALESCE(j.finished_at, j.updated_at)')} AS done,"
        " l.stored FROM jobs j"
        " JOIN (SELECT job_id, SUM(length(data))::bigint AS stored FROM logs"
        f" WHERE codec != {logcodec.MARKER} GROUP BY job_id) l"
        " ON l.job_id = j.id WHERE j.state = ANY(%s) ORDER BY done, j.id",
        (_TERMINAL,),
    )
    return [
        LogFootprint(job_id=r[0], repo=r[1], finished_at=r[2], stored=r[3])
        for r in await cur.fetchall()
    ]
