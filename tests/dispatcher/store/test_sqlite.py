"""What only the SQLite store does: WAL, its two connections, checkpoints, locks, files.

What every store does is in test_contract.py; the schema's versions in
test_migrations.py.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from pathlib import Path

import pytest

from narwhal.dispatcher.store import sqlite as store_module
from narwhal.dispatcher.store.base import AddEndpoint, AppendLog, CreateJobs, JobQuery, NewJob
from narwhal.dispatcher.store.sqlite import SqliteStore
from narwhal.errors import StoreError
from tests.dispatcher.store.standin import Driven, open_store

JOB = NewJob(repo="/r", ref="main", sha=None, event="push")


def _open(path: Path, runner: asyncio.Runner) -> Driven:
    return open_store("sqlite", path, runner)


def test_uses_wal(tmp_path: Path, runner: asyncio.Runner) -> None:
    store = _open(tmp_path / "db" / "narwhal.db", runner)
    try:
        mode = sqlite3.connect(tmp_path / "db" / "narwhal.db").execute("PRAGMA journal_mode")
        assert mode.fetchone()[0] == "wal"
    finally:
        runner.run(store.store.close())


def test_data_survives_reopen(tmp_path: Path, runner: asyncio.Runner) -> None:
    first = _open(tmp_path / "n.db", runner)
    job_id = first.job(repo="/r", ref="HEAD", labels={"os": "l"}).id
    first.one(AddEndpoint(url="tcp://127.0.0.1:9", at=1.0))
    runner.run(first.store.close())
    runner.run(first.store.close())  # closing twice is fine
    second = _open(tmp_path / "n.db", runner)
    try:
        assert second.get_job(job_id).labels == {"os": "l"}
        assert second.endpoints() == ["tcp://127.0.0.1:9"]
    finally:
        runner.run(second.store.close())


def test_apply_runs_on_the_loop_without_yielding(store_path: Path, runner: asyncio.Runner) -> None:
    """The writer's transaction is made inside the coroutine's first step."""
    store = _open(store_path, runner)
    try:
        step = store.store.apply([CreateJobs(jobs=[JOB] * 3)])
        with pytest.raises(StopIteration) as done:
            step.send(None)
        assert [job.state for job in done.value.value[0]] == ["queued"] * 3
    finally:
        runner.run(store.store.close())


def test_reader_sees_commits_refuses_writes_and_checkpoints(
    store_path: Path, runner: asyncio.Runner
) -> None:
    store = _open(store_path, runner)
    sqlite_store = store.store
    assert isinstance(sqlite_store, SqliteStore)
    try:
        jobs = store.one(CreateJobs(jobs=[JOB] * 200))
        assert store.get_job(jobs[-1].id) == jobs[-1]
        with pytest.raises(StoreError, match="readonly"):
            runner.run(sqlite_store._read(lambda db: db.execute("DELETE FROM jobs").rowcount))
        before = store_path.stat().st_size  # the writer left everything in the WAL
        runner.run(sqlite_store.checkpoint())
        assert store_path.stat().st_size > before
    finally:
        runner.run(sqlite_store.close())


def test_the_wal_shrinks_back_after_a_burst(
    store_path: Path, runner: asyncio.Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "WAL_SIZE_LIMIT", 64 << 10)
    store = _open(store_path, runner)
    try:
        (job,) = store.one(CreateJobs(jobs=[JOB]))
        for seq in range(64):  # a burst of log: 4 MiB (random: it does not compress)
            store.one(AppendLog(job_id=job.id, attempt=1, seq=seq, data=os.urandom(64 << 10)))
        wal = store_path.with_name(store_path.name + "-wal")
        assert wal.stat().st_size > 4 << 20
        store.checkpoint()
        # The next commit reuses the WAL from its start.
        store.one(AppendLog(job_id=job.id, attempt=1, seq=64, data=b"next"))
        assert wal.stat().st_size <= 64 << 10
    finally:
        runner.run(store.store.close())


def test_maintain_checkpoints_until_cancelled(
    store_path: Path, runner: asyncio.Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "CHECKPOINT_INTERVAL", 0.01)
    store = _open(store_path, runner)

    async def scenario() -> int:
        await store.store.apply([CreateJobs(jobs=[JOB] * 200)])
        before = await asyncio.to_thread(_size, store_path)
        task = asyncio.ensure_future(store.store.maintain())
        for _ in range(200):
            await asyncio.sleep(0.01)
            if await asyncio.to_thread(_size, store_path) > before:
                break
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return await asyncio.to_thread(_size, store_path) - before

    try:
        assert runner.run(scenario()) > 0
    finally:
        runner.run(store.store.close())


def test_a_foreign_write_lock_is_a_store_error_and_nothing_is_written(
    store_path: Path, runner: asyncio.Runner
) -> None:
    store = _open(store_path, runner)
    blocker = sqlite3.connect(store_path, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")  # another process's lock, a real one
        with pytest.raises(StoreError, match="database is locked"):
            store.one(CreateJobs(jobs=[JOB]))
        assert store.list_jobs(JobQuery()) == []  # reads go on meanwhile
        blocker.execute("ROLLBACK")
        assert len(store.one(CreateJobs(jobs=[JOB]))) == 1
    finally:
        blocker.close()
        runner.run(store.store.close())


def test_a_store_that_cannot_be_opened_is_a_store_error(
    tmp_path: Path, runner: asyncio.Runner
) -> None:
    (tmp_path / "n.db").write_bytes(b"not a database, but long enough to be read as one" * 40)
    store = SqliteStore(tmp_path / "n.db")
    with pytest.raises(StoreError, match=r"cannot open job store .*n\.db"):
        runner.run(store.open())
    with pytest.raises(StoreError, match="not open"):
        runner.run(store.apply([CreateJobs(jobs=[JOB])]))
    with pytest.raises(StoreError, match="not open"):
        runner.run(store.endpoints())


def _size(path: Path) -> int:
    return path.stat().st_size


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "n.db"
