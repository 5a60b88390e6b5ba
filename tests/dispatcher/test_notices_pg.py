"""The leader acting on what standbys write: notices heard, lost ones swept up.

In one process, against the real PostgreSQL server (a fresh schema each): a
leading dispatcher (no runners: its jobs stay queued) with its leader lock
and ``Notices``, and a standby's desk (``standby.Standby``) on a store of
its own, as another dispatcher would have.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg

from narwhal.config import DispatcherConfig
from narwhal.dispatcher.core import Dispatcher
from narwhal.dispatcher.leadership import Leadership
from narwhal.dispatcher.notices import Notices, notice
from narwhal.dispatcher.standby import Standby
from narwhal.dispatcher.store.base import CreateJob, NewJob, RequestCancel
from narwhal.dispatcher.store.postgres import CHANNEL_SQL, PostgresStore
from narwhal.storeurl import StoreUrl
from tests.support.dispatchers import running_dispatcher
from tests.support.eventually import eventually_async
from tests.support.postgres import fresh_schema

NEW = NewJob(repo="/r", ref="main", sha=None, event="push")


@contextlib.asynccontextmanager
async def leader(url: StoreUrl, data: Path) -> AsyncIterator[tuple[Dispatcher, Notices]]:
    async with Leadership(url) as lock:
        await lock.acquire()
        config = DispatcherConfig(data_dir=data, db=url)
        async with running_dispatcher(config) as dispatcher:
            notices = Notices(dispatcher, lock)
            await notices.start()
            yield dispatcher, notices


@contextlib.asynccontextmanager
async def standby(url: StoreUrl, data: Path) -> AsyncIterator[Standby]:
    await asyncio.to_thread(data.mkdir, mode=0o700)
    async with Standby(DispatcherConfig(data_dir=data), PostgresStore(url)) as desk:
        yield desk


async def _state(dispatcher: Dispatcher, job_id: int) -> str:
    return (await dispatcher.store.get_job(job_id)).state


def test_the_leader_queues_and_cancels_what_a_standby_announced(tmp_path: Path) -> None:
    async def main(url: StoreUrl) -> None:
        async with (
            leader(url, tmp_path / "a") as (dispatcher, _),
            standby(url, tmp_path / "b") as desk,
        ):
            job = await desk.create(NEW)
            await eventually_async(
                lambda: job.id in dispatcher.jobs.queue, what="the job queued by the leader"
            )
            again = await desk.resubmit(job.id)
            await eventually_async(lambda: again.id in dispatcher.jobs.queue, what="resubmitted")
            (asked,) = await desk.cancel_submission(job.id)
            assert asked.cancel_requested and asked.state == "queued"
            await eventually_async(
                lambda: job.id not in dispatcher.jobs.queue, what="the cancel carried out"
            )
            assert await _state(dispatcher, job.id) == "cancelled"
            assert again.id in dispatcher.jobs.queue

    with fresh_schema() as url:
        asyncio.run(main(url))


def test_what_no_notice_said_is_found_by_the_sweep(tmp_path: Path) -> None:
    async def main(url: StoreUrl) -> None:
        async with (
            leader(url, tmp_path / "a") as (dispatcher, notices),
            standby(url, tmp_path / "b") as desk,
        ):
            # Written as a standby writes, but never announced (killed in between).
            ((job, _),) = await desk.store.apply([CreateJob(job=NEW)])
            ((other, _),) = await desk.store.apply([CreateJob(job=NEW)])
            await asyncio.sleep(1.0)
            assert job.id not in dispatcher.jobs.queue
            await notices.sweep()
            assert {job.id, other.id} <= set(dispatcher.jobs.queue)
            await desk.store.apply([RequestCancel(job_id=job.id)])
            await notices.sweep()
            assert await _state(dispatcher, job.id) == "cancelled"
            assert other.id in dispatcher.jobs.queue

    with fresh_schema() as url:
        asyncio.run(main(url))


def test_a_new_leader_carries_out_the_cancels_asked_while_nobody_led(tmp_path: Path) -> None:
    async def main(url: StoreUrl) -> None:
        async with standby(url, tmp_path / "b") as desk:
            kept = await desk.create(NEW)
            dropped = await desk.create(NEW)
            await desk.cancel_submission(dropped.id)
        async with leader(url, tmp_path / "a") as (dispatcher, _):
            await eventually_async(
                lambda: dropped.id not in dispatcher.jobs.queue, what="the first sweep's cancel"
            )
            assert await _state(dispatcher, dropped.id) == "cancelled"
            assert kept.id in dispatcher.jobs.queue

    with fresh_schema() as url:
        asyncio.run(main(url))


def test_hostile_notices_change_nothing_and_the_next_good_one_is_heard(tmp_path: Path) -> None:
    async def main(url: StoreUrl) -> None:
        async with (
            leader(url, tmp_path / "a") as (dispatcher, _),
            standby(url, tmp_path / "b") as desk,
        ):
            ((job, _),) = await desk.store.apply([CreateJob(job=NEW)])
            assert url.dsn is not None
            async with await psycopg.AsyncConnection.connect(url.dsn, autocommit=True) as db:
                for payload in ["job abc", "job -1", "job 999999", "x" * 7000, "job 1; job 2"]:
                    await db.execute(f"SELECT pg_notify({CHANNEL_SQL}, %s)", (payload,))
                await db.execute(f"SELECT pg_notify({CHANNEL_SQL}, %s)", (notice(job.id),))
            await eventually_async(
                lambda: job.id in dispatcher.jobs.queue, what="the good notice heard"
            )
            assert set(dispatcher.jobs.queue) == {job.id}

    with fresh_schema() as url:
        asyncio.run(main(url))
