"""``narwhal backup`` / ``narwhal restore``: real dispatchers, real files, the real PostgreSQL."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path

from narwhal.dispatcher.store.base import AppendLog, CreateJob, NewJob
from narwhal.dispatcher.store.postgres import PostgresStore
from tests.support.daemons import Client, Daemon, narwhal
from tests.support.postgres import SERVER, admin, fresh_schema
from tests.support.repos import Repo

Up = Callable[..., tuple[Daemon, Client]]
MakeRepo = Callable[..., Repo]

PIPELINE = """\
name: build
steps:
  - name: say
    command: echo "log line of $NARWHAL_SHA"
"""


def test_backup_while_running_restores_every_job_and_log(
    narwhal_up: Up, make_repo: MakeRepo, tmp_path: Path
) -> None:
    daemon, api = narwhal_up()
    repo = make_repo({"narwhal.yml": PIPELINE})
    done = [api.wait(api.submit(repo, sha=repo.commit({"f": str(i)}))) for i in range(3)]
    for i in range(3):  # still submitting while the backup runs
        api.submit(repo, sha=repo.commit({"g": str(i)}))
    backup = tmp_path / "store.bak"
    result = narwhal("backup", str(backup), "--data-dir", str(tmp_path / "data0"))
    assert result.returncode == 0, result.stderr
    assert "not in the backup" in result.stderr and "secrets.key" in result.stderr
    assert backup.stat().st_mode & 0o777 == 0o600
    backed_up = {row[0] for row in sqlite3.connect(backup).execute("SELECT id FROM jobs")}
    logs = {job["id"]: api.log(job["id"]) for job in done}
    daemon.stop()

    restored = narwhal("restore", str(backup), "--data-dir", str(tmp_path / "data1"))
    assert restored.returncode == 0, restored.stderr
    _, again = narwhal_up()  # its data dir is data1
    assert {job["id"] for job in done} <= backed_up
    assert backed_up <= {job["id"] for job in again.jobs(limit=100)}
    for job in done:
        assert again.job(job["id"])["state"] == job["state"] == "success"
        assert again.log(job["id"]) == logs[job["id"]] and "log line of" in logs[job["id"]]


def test_restore_refusals(narwhal_up: Up, tmp_path: Path) -> None:
    narwhal_up()
    running = tmp_path / "data0"
    backup = tmp_path / "store.bak"
    assert narwhal("backup", str(backup), "--data-dir", str(running)).returncode == 0

    busy = narwhal("restore", str(backup), "--data-dir", str(running), "--force")
    assert busy.returncode == 2 and "in use by another narwhal" in busy.stderr

    fresh = tmp_path / "fresh"
    assert narwhal("restore", str(backup), "--data-dir", str(fresh)).returncode == 0
    exists = narwhal("restore", str(backup), "--data-dir", str(fresh))
    assert exists.returncode == 2 and "--force" in exists.stderr
    forced = narwhal("restore", str(backup), "--data-dir", str(fresh), "--force")
    assert forced.returncode == 0, forced.stderr
    assert (fresh / "narwhal.db.before-restore").is_file()

    junk = tmp_path / "junk"
    junk.write_text("not a database\n")
    bad = narwhal("restore", str(junk), "--data-dir", str(tmp_path / "other"))
    assert bad.returncode == 2 and "not a Narwhal store" in bad.stderr
    assert "Traceback" not in bad.stderr

    newer = tmp_path / "newer.bak"
    newer.write_bytes(backup.read_bytes())
    with sqlite3.connect(newer) as db:
        db.execute("UPDATE schema_version SET version = 9999")
    future = narwhal("restore", str(newer), "--data-dir", str(tmp_path / "other"))
    assert future.returncode == 2 and "newer than this narwhal" in future.stderr
    assert not (tmp_path / "other" / "narwhal.db").exists()


def _psql(url: str, sql: str) -> str:
    done = subprocess.run(
        ["psql", "-XAtq", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", sql],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def test_postgres_dump_and_restore_of_a_schema(tmp_path: Path) -> None:
    """Tables made with psql as the PostgreSQL store makes them: version, jobs, logs."""
    with fresh_schema() as store:
        url = store.dsn or ""
        _psql(
            url,
            "CREATE TABLE schema_version (id int PRIMARY KEY, version int NOT NULL);"
            "INSERT INTO schema_version VALUES (1, 1);"
            "CREATE TABLE jobs (id bigint PRIMARY KEY, state text NOT NULL);"
            "CREATE TABLE logs (job_id bigint, seq int, data bytea);"
            "INSERT INTO jobs SELECT n, 'success' FROM generate_series(1, 50) n;"
            "INSERT INTO logs SELECT n, 0, convert_to('log ' || n, 'UTF8')"
            " FROM generate_series(1, 50) n;",
        )
        backup = tmp_path / "pg.dump"
        made = narwhal("backup", str(backup), "--db", url)
        assert made.returncode == 0, made.stderr
        assert backup.stat().st_mode & 0o777 == 0o600
        assert "not in the backup" in made.stderr

        refused = narwhal("restore", str(backup), "--db", url)
        assert refused.returncode == 2 and "--force" in refused.stderr
        _psql(url, "UPDATE jobs SET state = 'lost'; DELETE FROM logs;")
        forced = narwhal("restore", str(backup), "--db", url, "--force")
        assert forced.returncode == 0, forced.stderr
        assert _psql(url, "SELECT count(*) FROM jobs WHERE state = 'success'") == "50"
        assert _psql(url, "SELECT convert_from(data, 'UTF8') FROM logs WHERE job_id = 7") == "log 7"

        with admin() as db:  # into an empty schema of the same name
            schema = url.rsplit("%3D", 1)[1]
            db.execute(f"DROP SCHEMA {schema} CASCADE")
            db.execute(f"CREATE SCHEMA {schema}")
        empty = narwhal("restore", str(backup), "--db", url)
        assert empty.returncode == 0, empty.stderr
        assert _psql(url, "SELECT count(*) FROM logs") == "50"


def test_postgres_errors_are_one_line_without_the_password(tmp_path: Path) -> None:
    url = SERVER.replace("postgres@", "postgres:hunter2secret@").replace("/test", "/no_such_db")
    result = narwhal("backup", str(tmp_path / "x.dump"), "--db", url)
    assert result.returncode == 2
    assert "hunter2secret" not in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.dump").exists()


async def _fill(store: PostgresStore, count: int) -> list[int]:
    await store.open()
    try:
        ids = []
        for n in range(count):
            new = NewJob(repo="/r", ref="main", sha=f"{n:040x}", event="push")
            job, _ = (await store.apply([CreateJob(job=new)]))[0]
            data = f"log of job {job.id}\n".encode() * 50
            await store.apply([AppendLog(job_id=job.id, attempt=1, seq=0, data=data)])
            ids.append(job.id)
        return ids
    finally:
        await store.close()


async def _read(store: PostgresStore, ids: list[int]) -> dict[int, tuple[str, bytes]]:
    await store.open()
    try:
        found = {}
        for job_id in ids:
            job = await store.get_job(job_id)
            log = b"".join(data for _, data in await store.read_log(job_id, 1))
            found[job_id] = (job.sha or "", log)
        return found
    finally:
        await store.close()


def test_postgres_store_round_trip(tmp_path: Path) -> None:
    """Jobs and logs written by the PostgreSQL store come back through it after a restore."""
    with fresh_schema() as url:
        ids = asyncio.run(_fill(PostgresStore(url), 20))
        before = asyncio.run(_read(PostgresStore(url), ids))
        backup = tmp_path / "store.dump"
        assert narwhal("backup", str(backup), "--db", url.dsn or "").returncode == 0
        schema = (url.dsn or "").rsplit("%3D", 1)[1]
        with admin() as db:
            db.execute(f"DROP SCHEMA {schema} CASCADE")
            db.execute(f"CREATE SCHEMA {schema}")
        restored = narwhal("restore", str(backup), "--db", url.dsn or "")
        assert restored.returncode == 0, restored.stderr
        after = asyncio.run(_read(PostgresStore(url), ids))
        assert after == before and all(log.startswith(b"log of job") for _, log in after.values())
