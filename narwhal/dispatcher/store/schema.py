"""The SQLite schema of the job store, and how its rows become records."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping

from narwhal.dispatcher.records import JobRecord

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY,
    repo TEXT NOT NULL,
    ref TEXT NOT NULL,
    sha TEXT,
    event TEXT NOT NULL,
    labels TEXT NOT NULL,
    matrix TEXT,
    parent_id INTEGER,
    source_key TEXT UNIQUE,
    pipeline TEXT,
    state TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    attempt INTEGER NOT NULL DEFAULT 1,
    runner_id TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    fork_of TEXT
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, id);
CREATE INDEX IF NOT EXISTS jobs_repo ON jobs (repo, id);
CREATE INDEX IF NOT EXISTS jobs_parent ON jobs (parent_id, id);
CREATE TABLE IF NOT EXISTS transitions (
    id INTEGER PRIMARY KEY,
    job_id INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    state TEXT NOT NULL,
    reason TEXT NOT NULL,
    runner_id TEXT,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS transitions_job ON transitions (job_id, id);
CREATE TABLE IF NOT EXISTS steps (
    job_id INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    exit_code INTEGER,
    started_at REAL,
    duration REAL,
    PRIMARY KEY (job_id, attempt, idx)
);
CREATE TABLE IF NOT EXISTS logs (
    job_id INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (job_id, attempt, seq)
);
CREATE TABLE IF NOT EXISTS endpoints (
    url TEXT PRIMARY KEY,
    added_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS secrets (
    repo TEXT NOT NULL,
    name TEXT NOT NULL,
    key_version INTEGER NOT NULL,
    nonce BLOB NOT NULL,
    ciphertext BLOB NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (repo, name)
);
CREATE TABLE IF NOT EXISTS secret_policies (
    repo TEXT PRIMARY KEY,
    forks INTEGER NOT NULL DEFAULT 0,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS tokens (
    name TEXT PRIMARY KEY,
    digest TEXT NOT NULL UNIQUE,
    scope TEXT NOT NULL,
    created_at REAL NOT NULL,
    last_used REAL
);
"""

#: Columns added after a table first shipped: (table, column, declaration).
#: ``CREATE TABLE IF NOT EXISTS`` leaves an older file's tables as they were.
ADDED_COLUMNS = (("jobs", "fork_of", "TEXT"),)


def migrate(db: sqlite3.Connection) -> None:
    """Add the columns an older job store lacks (idempotent)."""
    for table, column, declaration in ADDED_COLUMNS:
        present = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        if column not in present:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")


JOB_COLUMNS = (
    "id, repo, ref, sha, event, labels, matrix, parent_id, pipeline, state, reason,"
    " attempt, runner_id, cancel_requested, created_at, updated_at, started_at,"
    " finished_at, fork_of"
)


def json_text(mapping: Mapping[str, str]) -> str:
    # The common case, no labels, without the JSON encoder (hot path).
    return json.dumps(dict(mapping)) if mapping else "{}"


def json_map(text: str | None) -> dict[str, str] | None:
    if text is None:
        return None
    # Most jobs have no labels: skip the JSON parser for them (hot path).
    return {} if text == "{}" else dict(json.loads(text))


def job_record(row: sqlite3.Row) -> JobRecord:
    """A row selected with ``JOB_COLUMNS``, in that order, as a record."""
    return JobRecord(
        id=row[0],
        repo=row[1],
        ref=row[2],
        sha=row[3],
        event=row[4],
        labels=json_map(row[5]) or {},
        matrix=json_map(row[6]),
        parent_id=row[7],
        pipeline=row[8],
        state=row[9],
        reason=row[10],
        attempt=row[11],
        runner_id=row[12],
        cancel_requested=bool(row[13]),
        created_at=row[14],
        updated_at=row[15],
        started_at=row[16],
        finished_at=row[17],
        fork_of=row[18],
    )
