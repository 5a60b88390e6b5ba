"""The SQL of the job reads; ``SqliteStore`` runs them on its reader thread."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence

from narwhal.dispatcher.records import TERMINAL, JobRecord, StepRecord, TransitionRecord
from narwhal.dispatcher.store import logcodec
from narwhal.dispatcher.store.base import Holding, JobQuery, LogFootprint, holding
from narwhal.dispatcher.store.schema import JOB_COLUMNS, job_record
from narwhal.errors import NotFound


def get_job(db: sqlite3.Connection, job_id: int) -> JobRecord:
    row = db.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
    if row is None:
        raise NotFound(f"no job {job_id}")
    return job_record(row)


def list_jobs(db: sqlite3.Connection, query: JobQuery) -> list[JobRecord]:
    where: list[str] = []
    args: list[object] = []
    if query.parent is not None:
        where.append("parent_id = ?")
        args.append(query.parent)
    if query.states:
        where.append(f"state IN ({', '.join('?' * len(query.states))})")
        args.extend(query.states)
    if query.repo is not None:
        where.append("repo = ?")
        args.append(query.repo)
    if query.refs:
        where.append(f"ref IN ({', '.join('?' * len(query.refs))})")
        args.extend(query.refs)
    if query.runner is not None:
        where.append("runner_id = ?")
        args.append(query.runner)
    if query.before is not None:
        where.append("id < ?")
        args.append(query.before)
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    order = "ASC" if query.ascending else "DESC"
    limit = -1 if query.limit is None else query.limit  # SQLite's "no limit"
    rows = db.execute(
        f"SELECT {JOB_COLUMNS} FROM jobs {clause} ORDER BY id {order} LIMIT ?", (*args, limit)
    ).fetchall()
    return [job_record(r) for r in rows]


def steps(db: sqlite3.Connection, job_id: int, attempt: int) -> list[StepRecord]:
    rows = db.execute(
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


def transitions(db: sqlite3.Connection, job_id: int) -> list[TransitionRecord]:
    rows = db.execute(
        "SELECT attempt, state, reason, runner_id, at FROM transitions"
        " WHERE job_id = ? ORDER BY id",
        (job_id,),
    ).fetchall()
    return [
        TransitionRecord(attempt=r[0], state=r[1], reason=r[2], runner_id=r[3], at=r[4])
        for r in rows
    ]


def read_log(
    db: sqlite3.Connection, job_id: int, attempt: int, after: int
) -> list[tuple[int, bytes]]:
    rows = db.execute(
        "SELECT seq, codec, data FROM logs WHERE job_id = ? AND attempt = ? AND seq > ?"
        " ORDER BY seq",
        (job_id, attempt, after),
    ).fetchall()
    return [(r[0], logcodec.unpack(r[1], bytes(r[2]))) for r in rows]


def find_active(db: sqlite3.Connection, repo: str, sha: str, event: str) -> JobRecord | None:
    row = db.execute(
        f"SELECT {JOB_COLUMNS} FROM jobs WHERE repo = ? AND sha = ? AND event = ?"
        " AND state IN ('queued', 'assigned', 'running') ORDER BY id LIMIT 1",
        (repo, sha, event),
    ).fetchone()
    return job_record(row) if row is not None else None


def holders(
    db: sqlite3.Connection, runner_id: str, keys: Sequence[tuple[int, int]]
) -> dict[tuple[int, int], Holding]:
    """See ``JobStore.holders``: two queries for the whole list."""
    ids = json.dumps(sorted({job_id for job_id, _ in keys}))
    jobs = {
        row[0]: (row[1], row[2], row[3])
        for row in db.execute(
            "SELECT id, attempt, state, runner_id FROM jobs"
            " WHERE id IN (SELECT value FROM json_each(?))",
            (ids,),
        )
    }
    held_once = {
        (row[0], row[1])
        for row in db.execute(
            "SELECT DISTINCT job_id, attempt FROM transitions"
            " WHERE runner_id = ? AND job_id IN (SELECT value FROM json_each(?))",
            (runner_id, ids),
        )
    }
    return holding(runner_id, keys, jobs, held_once)


def log_footprints(db: sqlite3.Connection) -> list[LogFootprint]:
    terminal = ", ".join(f"'{state}'" for state in sorted(TERMINAL))
    rows = db.execute(
        "SELECT j.id, j.repo, COALESCE(j.finished_at, j.updated_at), l.stored FROM jobs j"
        " JOIN (SELECT job_id, SUM(length(data)) AS stored FROM logs"
        f" WHERE codec != {logcodec.MARKER} GROUP BY job_id) l"
        f" ON l.job_id = j.id WHERE j.state IN ({terminal}) ORDER BY 3, j.id"
    ).fetchall()
    return [LogFootprint(job_id=r[0], repo=r[1], finished_at=r[2], stored=r[3]) for r in rows]
