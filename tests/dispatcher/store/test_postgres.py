"""What only the PostgreSQL store does: its migrations, a stalled database,
a lost session, the password kept out of errors, logs stored compressed,
a deposed leader's writes fenced off.

Each test on a fresh schema of the real server (``tests/support/postgres.py``).
"""

from __future__ import annotations

import asyncio
import time

import pytest

from narwhal.dispatcher.store.base import AppendLog, CreateJob, JobQuery, NewJob, Transition
from narwhal.dispatcher.store.pg_migrations import MIGRATIONS
from narwhal.dispatcher.store.postgres import APPLY_TIMEOUT, Deposed, PostgresStore
from narwhal.errors import StoreError
from narwhal.storeurl import StoreUrl
from tests.support.postgres import admin, fresh_schema

NEW = NewJob(repo="/r", ref="main", sha=None, event="push")


def _schema(url: StoreUrl) -> str:
    assert url.dsn is not None
    return url.dsn.rsplit("%3D", 1)[1]


def test_migrations_run_once_and_a_newer_schema_is_refused() -> None:
    async def main(url: StoreUrl) -> str:
        store = PostgresStore(url)
        await store.open()
        await store.close()
        again = PostgresStore(url)  # reopening runs nothing again
        await again.open()
        await again.close()
        with admin() as db:
            db.execute(f"UPDATE {_schema(url)}.schema_version SET version = version + 1")
        newer = PostgresStore(url)
        with pytest.raises(StoreError) as refused:
            await newer.open()
        return str(refused.value)

    with fresh_schema() as url:
        message = asyncio.run(main(url))
        with admin() as db:
            row = db.execute(f"SELECT version FROM {_schema(url)}.schema_version").fetchone()
    assert row is not None and row[0] == len(MIGRATIONS) + 1
    assert f"{len(MIGRATIONS) + 1}" in message and "\n" not in message


def test_two_stores_opening_one_fresh_schema_at_once_both_succeed() -> None:
    async def main(url: StoreUrl) -> None:
        stores = [PostgresStore(url), PostgresStore(url)]
        await asyncio.gather(*(store.open() for store in stores))
        for store in stores:
            await store.close()

    with fresh_schema() as url:
        asyncio.run(main(url))


def test_a_stalled_database_is_a_refusal_in_bounded_time_and_the_loop_keeps_going() -> None:
    async def main(url: StoreUrl) -> tuple[float, int, str]:
        store = PostgresStore(url)
        await store.open()
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.05)
                ticks += 1

        ticker = asyncio.create_task(tick())
        try:
            with admin() as db:  # another session holds the table
                db.execute("BEGIN")
                db.execute(f"LOCK TABLE {_schema(url)}.jobs IN ACCESS EXCLUSIVE MODE")
                started = time.monotonic()
                with pytest.raises(StoreError) as refused:
                    await store.apply([CreateJob(job=NEW)])
                took = time.monotonic() - started
                db.execute("ROLLBACK")
            ((job, created),) = await store.apply([CreateJob(job=NEW)])  # goes on after
            assert created and job.id >= 1
            return took, ticks, str(refused.value)
        finally:
            ticker.cancel()
            await store.close()

    with fresh_schema() as url:
        took, ticks, message = asyncio.run(main(url))
    assert took <= APPLY_TIMEOUT + 1.0
    assert ticks >= int(took / 0.05) // 2  # the loop ran while the write waited
    assert message


def test_a_terminated_session_fails_one_call_then_reconnects() -> None:
    """The server ends the store's sessions (a restart, a failover): one call
    fails with ``StoreError``, the next opens a new session and works."""

    async def main(url: StoreUrl) -> tuple[int, bool, int]:
        name = f"narwhal_{_schema(url)}"
        assert url.dsn is not None
        store = PostgresStore(StoreUrl("postgresql", dsn=f"{url.dsn}&application_name={name}"))
        await store.open()
        try:
            await store.apply([CreateJob(job=NEW)])
            with admin() as db:
                ended = db.execute(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE application_name = %s",
                    (name,),
                ).fetchone()
            failed = False
            try:
                await store.apply([CreateJob(job=NEW)])
            except StoreError:
                failed = True
            ((job, _),) = await store.apply([CreateJob(job=NEW)])
            return int(ended[0]) if ended else 0, failed, job.id
        finally:
            await store.close()

    with fresh_schema() as url:
        ended, failed, job_id = asyncio.run(main(url))
    assert ended >= 1 and failed
    assert job_id >= 2


def test_the_password_stays_out_of_errors() -> None:
    url = StoreUrl("postgresql", dsn="postgresql://postgres:hunter2secret@127.0.0.1:1/test")

    async def main() -> str:
        store = PostgresStore(url)
        with pytest.raises(StoreError) as refused:
            await store.open()
        return str(refused.value)

    message = asyncio.run(main())
    assert "hunter2secret" not in message and message


def test_logs_are_stored_compressed_and_read_back_as_written() -> None:
    output = b"tests/test_pipeline.py::test_matrix PASSED\n" * 3000

    async def main(url: StoreUrl) -> list[tuple[int, bytes]]:
        store = PostgresStore(url)
        await store.open()
        try:
            ((job, _),) = await store.apply([CreateJob(job=NEW)])
            await store.apply([AppendLog(job_id=job.id, attempt=1, seq=0, data=output)])
            return await store.read_log(job.id, 1)
        finally:
            await store.close()

    with fresh_schema() as url:
        chunks = asyncio.run(main(url))
        with admin() as db:
            row = db.execute(f"SELECT length(data), size FROM {_schema(url)}.logs").fetchone()
    assert chunks == [(0, output)]
    assert row is not None and row[1] == len(output) and row[0] < len(output) // 20


def test_a_new_leader_fences_off_the_writes_of_the_one_before() -> None:
    async def main(url: StoreUrl) -> None:
        old = PostgresStore(url, lead=True)
        await old.open()
        ((job, _),) = await old.apply([CreateJob(job=NEW)])
        new = PostgresStore(url, lead=True)
        await new.open()
        assert old.epoch is not None and new.epoch == old.epoch + 1
        with pytest.raises(Deposed) as refused:
            await old.apply(
                [Transition(job_id=job.id, attempt=1, to="cancelled", reason="x", at=1.0)]
            )
        assert "another dispatcher leads now" in str(refused.value)
        assert (await old.get_job(job.id)).state == "queued", "nothing of it was written"
        # The refusal left the old store's connection usable: it still reads.
        await new.apply([Transition(job_id=job.id, attempt=1, to="cancelled", reason="y", at=2.0)])
        # A standby's store is not fenced: submissions go in under any leader.
        standby = PostgresStore(url)
        await standby.open()
        await standby.apply([CreateJob(job=NEW)])
        assert len(await new.list_jobs(JobQuery(limit=None))) == 2
        for store in (old, new, standby):
            await store.close()

    with fresh_schema() as url:
        asyncio.run(main(url))


def test_a_bump_waits_for_the_old_leaders_transaction_in_flight() -> None:
    # The old leader's transaction holds the epoch row FOR SHARE: the new
    # leader's bump waits for its commit, so no write lands after the bump.
    async def main(url: StoreUrl) -> None:
        old = PostgresStore(url, lead=True)
        await old.open()
        with admin() as db:
            db.execute("BEGIN")
            db.execute(f"SELECT epoch FROM {_schema(url)}.leader FOR SHARE")
            new = PostgresStore(url, lead=True)
            opening = asyncio.create_task(new.open())
            await asyncio.sleep(0.5)
            assert not opening.done(), "the bump waits for the share lock"
            db.execute("COMMIT")
        await opening
        assert new.epoch == (old.epoch or 0) + 1
        for store in (old, new):
            await store.close()

    with fresh_schema() as url:
        asyncio.run(main(url))
