"""The SQLite store's schema versions: new stores, stores made before versions, newer ones."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from narwhal.dispatcher.store.base import AppendLog, CreateJob, NewJob
from narwhal.dispatcher.store.logcodec import ZSTD
from narwhal.dispatcher.store.migrations import LATEST, MIGRATIONS, migrate
from narwhal.dispatcher.store.sqlite import SqliteStore
from narwhal.errors import StoreError
from tests.dispatcher.store.standin import open_store

KEY = "https://git.example/octo/hello"

#: The tables as the store made them before ``schema_version`` (the last
#: release without it), ``fork_of`` included.
BEFORE_VERSIONS = """
CREATE TABLE jobs (
    id INTEGER PRIMARY KEY, repo TEXT NOT NULL, ref TEXT NOT NULL, sha TEXT,
    event TEXT NOT NULL, labels TEXT NOT NULL, matrix TEXT, parent_id INTEGER,
    source_key TEXT UNIQUE, pipeline TEXT, state TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '', attempt INTEGER NOT NULL DEFAULT 1, runner_id TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL,
    updated_at REAL NOT NULL, started_at REAL, finished_at REAL, fork_of TEXT
);
CREATE INDEX jobs_state ON jobs (state, id);
CREATE INDEX jobs_repo ON jobs (repo, id);
CREATE INDEX jobs_parent ON jobs (parent_id, id);
CREATE TABLE transitions (
    id INTEGER PRIMARY KEY, job_id INTEGER NOT NULL, attempt INTEGER NOT NULL,
    state TEXT NOT NULL, reason TEXT NOT NULL, runner_id TEXT, at REAL NOT NULL
);
CREATE INDEX transitions_job ON transitions (job_id, id);
CREATE TABLE steps (
    job_id INTEGER NOT NULL, attempt INTEGER NOT NULL, idx INTEGER NOT NULL,
    name TEXT NOT NULL, status TEXT NOT NULL, exit_code INTEGER, started_at REAL,
    duration REAL, PRIMARY KEY (job_id, attempt, idx)
);
CREATE TABLE logs (
    job_id INTEGER NOT NULL, attempt INTEGER NOT NULL, seq INTEGER NOT NULL,
    data BLOB NOT NULL, PRIMARY KEY (job_id, attempt, seq)
);
CREATE TABLE endpoints (url TEXT PRIMARY KEY, added_at REAL NOT NULL);
CREATE TABLE secrets (
    repo TEXT NOT NULL, name TEXT NOT NULL, key_version INTEGER NOT NULL,
    nonce BLOB NOT NULL, ciphertext BLOB NOT NULL, created_at REAL NOT NULL,
    updated_at REAL NOT NULL, PRIMARY KEY (repo, name)
);
CREATE TABLE secret_policies (
    repo TEXT PRIMARY KEY, forks INTEGER NOT NULL DEFAULT 0, updated_at REAL NOT NULL
);
CREATE TABLE tokens (
    name TEXT PRIMARY KEY, digest TEXT NOT NULL UNIQUE, scope TEXT NOT NULL,
    created_at REAL NOT NULL, last_used REAL
);
INSERT INTO jobs (repo, ref, event, labels, state, reason, created_at, updated_at)
    VALUES ('/srv/r', 'HEAD', 'push', '{"os": "l"}', 'queued', 'submitted', 1.0, 1.0);
"""


def _sql(path: Path, script: str) -> None:
    db = sqlite3.connect(path)
    db.executescript(script)
    db.close()


def _version(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        return int(db.execute("SELECT version FROM schema_version").fetchone()[0])
    finally:
        db.close()


def _columns(path: Path, table: str) -> list[str]:
    db = sqlite3.connect(path)
    try:
        return [row[1] for row in db.execute(f"PRAGMA table_info({table})")]
    finally:
        db.close()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "narwhal.db"


def test_a_new_store_gets_every_migration(path: Path, runner: asyncio.Runner) -> None:
    store = open_store("sqlite", path, runner)
    runner.run(store.store.close())
    assert _version(path) == LATEST == len(MIGRATIONS) == 5
    assert "fork_of" in _columns(path, "jobs")
    assert {"priority", "cpus", "memory", "checkout_seconds"} <= set(_columns(path, "jobs"))
    assert "peak_memory" in _columns(path, "usage")
    again = open_store("sqlite", path, runner)  # reopening runs nothing again
    runner.run(again.store.close())
    assert _version(path) == LATEST


def test_a_store_from_before_versions_is_recognised(path: Path, runner: asyncio.Runner) -> None:
    _sql(path, BEFORE_VERSIONS)
    store = open_store("sqlite", path, runner)
    try:
        old = store.get_job(1)
        assert (old.repo, old.labels, old.fork_of) == ("/srv/r", {"os": "l"}, None)
        assert store.job().id == 2
    finally:
        runner.run(store.store.close())
    assert _version(path) == LATEST


def test_an_older_store_gains_the_fork_column(path: Path, runner: asyncio.Runner) -> None:
    # As a store made before the column existed.
    _sql(path, BEFORE_VERSIONS + "ALTER TABLE jobs DROP COLUMN fork_of;")
    store = open_store("sqlite", path, runner)
    try:
        assert store.get_job(1).fork_of is None
        new = NewJob(repo="/srv/f", ref="HEAD", sha=None, event="pull_request", fork_of=KEY)
        fork, _ = store.one(CreateJob(job=new))
        assert store.get_job(fork.id).fork_of == KEY
    finally:
        runner.run(store.store.close())
    assert _version(path) == LATEST


def test_an_old_store_without_the_side_tables_gains_them(
    path: Path, runner: asyncio.Runner
) -> None:
    tables = BEFORE_VERSIONS.split("CREATE TABLE endpoints")[0]
    _sql(path, tables + "ALTER TABLE jobs DROP COLUMN fork_of;")
    store = open_store("sqlite", path, runner)
    try:
        assert store.tokens() == [] and store.secrets() == [] and store.endpoints() == []
    finally:
        runner.run(store.store.close())


def test_a_newer_store_is_refused_and_left_as_it_is(path: Path, runner: asyncio.Runner) -> None:
    open_store_then_close(path, runner)
    _sql(path, f"UPDATE schema_version SET version = {LATEST + 1};")
    store = SqliteStore(path)
    with pytest.raises(StoreError) as refused:
        runner.run(store.open())
    message = str(refused.value)
    assert "\n" not in message and str(path) in message
    assert f"schema version {LATEST + 1}" in message and f"knows ({LATEST})" in message
    assert _version(path) == LATEST + 1


def test_each_migration_commits_alone(path: Path) -> None:
    migrations = [
        ("one", ["CREATE TABLE a (x INTEGER)"]),
        ("two", ["CREATE TABLE b (x INTEGER)", "CREATE TABLE a (x INTEGER)"]),  # fails
    ]
    db = sqlite3.connect(path, isolation_level=None)
    try:
        with pytest.raises(sqlite3.OperationalError, match="already exists"):
            migrate(db, "test", migrations)
        assert db.execute("SELECT version FROM schema_version").fetchone()[0] == 1
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert "a" in tables and "b" not in tables  # the failed one left nothing
        migrations[1] = ("two", ["CREATE TABLE b (x INTEGER)"])
        assert migrate(db, "test", migrations) == 2
        assert db.execute("SELECT version FROM schema_version").fetchone()[0] == 2
    finally:
        db.close()


def open_store_then_close(path: Path, runner: asyncio.Runner) -> None:
    store = open_store("sqlite", path, runner)
    runner.run(store.store.close())


def test_raw_log_chunks_from_before_compression_still_read(
    path: Path, runner: asyncio.Runner
) -> None:
    """Migration 5: chunks stored raw before it read as they were; new ones are packed."""
    _sql(
        path,
        BEFORE_VERSIONS
        + "INSERT INTO logs (job_id, attempt, seq, data) VALUES (1, 1, 0, x'6f6c640a');",
    )
    store = open_store("sqlite", path, runner)
    try:
        output = b"collected 1278 items\n" * 400
        store.one(AppendLog(job_id=1, attempt=1, seq=1, data=output))
        assert store.read_log(1, 1) == [(0, b"old\n"), (1, output)]
    finally:
        runner.run(store.store.close())
    db = sqlite3.connect(path)
    try:
        codec, stored, size = db.execute(
            "SELECT codec, length(data), size FROM logs WHERE seq = 1"
        ).fetchone()
    finally:
        db.close()
    assert codec == ZSTD and size == len(output) and stored < len(output) // 20
