"""Commit events from the real RabbitMQ into jobs: ack after commit, dedupe,
dead letters, reconnects, and a dispatcher killed mid-stream."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from narwhal.config import AmqpConfig, DispatcherConfig
from narwhal.dispatcher.amqp import AmqpConsumer, Intake
from narwhal.dispatcher.core import Dispatcher
from narwhal.dispatcher.feed import on_jobs
from narwhal.dispatcher.records import JobRecord
from narwhal.dispatcher.store.base import JobQuery
from narwhal.events import REASON_HEADER, encode
from tests.support.broker import (
    AMQP_URL,
    broker_stopped,
    own_queue,
    publish,
    queue_depth,
    start_broker,
    stop_broker,
    take_all,
)
from tests.support.broker import (
    commit_event as event,
)
from tests.support.daemons import Daemon, auth_headers
from tests.support.dispatchers import running_dispatcher
from tests.support.eventually import eventually, eventually_async


@pytest.fixture
def queue() -> Iterator[str]:
    with own_queue() as name:
        yield name


@asynccontextmanager
async def consuming(
    tmp_path: Path, queue: str
) -> AsyncIterator[tuple[Dispatcher, AmqpConsumer, Intake]]:
    """A dispatcher (no runners: jobs stay queued) with an AMQP consumer."""
    amqp = AmqpConfig(url=AMQP_URL, queue=queue, prefetch=8, reconnect_max=0.3)
    async with running_dispatcher(DispatcherConfig(data_dir=tmp_path / "data")) as dispatcher:
        intake = Intake(dispatcher)
        async with AmqpConsumer(amqp, intake) as consumer:
            async with asyncio.timeout(20):
                await consumer.connected.wait()
            yield dispatcher, consumer, intake


async def all_jobs(dispatcher: Dispatcher) -> list[JobRecord]:
    return await dispatcher.store.list_jobs(JobQuery(limit=None, ascending=True))


def test_events_become_jobs_and_are_acked(tmp_path: Path, queue: str) -> None:
    async def main() -> list[JobRecord]:
        async with consuming(tmp_path, queue) as (dispatcher, consumer, _):
            await publish(queue, [encode(event(n)) for n in range(20)])

            async def handled() -> bool:
                return consumer.handled == 20

            await eventually_async(handled)
            return await all_jobs(dispatcher)

    jobs = asyncio.run(main())
    assert [j.sha for j in jobs] == [f"{n:040x}" for n in range(20)]
    assert {(j.repo, j.ref, j.event, j.state) for j in jobs} == {
        ("https://forge.invalid/octo/hello.git", "refs/heads/main", "push", "queued")
    }
    assert queue_depth(queue) == 0


def test_duplicates_make_one_job_per_active_commit(tmp_path: Path, queue: str) -> None:
    async def main() -> tuple[list[JobRecord], list[JobRecord]]:
        async with consuming(tmp_path, queue) as (dispatcher, consumer, intake):
            same = event(1)
            other_delivery_same_commit = event(2, sha=same.sha)
            await publish(queue, [encode(same), encode(same), encode(other_delivery_same_commit)])

            async def handled(count: int) -> Any:
                async def check() -> bool:
                    return consumer.handled == count

                return check

            await eventually_async(await handled(3))
            first = await all_jobs(dispatcher)
            # Once the job has ended, the same event redelivered is still the
            # same job (source key), but a new delivery builds the commit again.
            await dispatcher.cancel(first[0].id)
            await publish(queue, [encode(same), encode(event(3, sha=same.sha))])
            await eventually_async(await handled(5))
            return first, await all_jobs(dispatcher)

    first, later = asyncio.run(main())
    assert len(first) == 1
    assert [(j.id, j.state) for j in later] == [(first[0].id, "cancelled"), (2, "queued")]


def test_unparsable_messages_go_to_the_dead_letter_queue(tmp_path: Path, queue: str) -> None:
    bad = [b"not json", b'{"v": 99}', encode(event(1)).replace(b'"push"', b'"deploy"')]

    async def main() -> tuple[list[JobRecord], list[Any]]:
        async with consuming(tmp_path, queue) as (dispatcher, consumer, _):
            await publish(queue, [*bad, encode(event(7))], ids=["b1", "b2", "b3", "good"])

            async def handled() -> bool:
                return consumer.handled == 1 and consumer.dead_lettered == 3

            await eventually_async(handled)
            return await all_jobs(dispatcher), await take_all(f"{queue}.dead")

    jobs, dead = asyncio.run(main())
    assert [j.sha for j in jobs] == [f"{7:040x}"]
    assert [m.body for m in dead] == bad
    assert [m.message_id for m in dead] == ["b1", "b2", "b3"]
    reasons = [str(m.headers[REASON_HEADER]) for m in dead]
    assert "not JSON" in reasons[0]
    assert "unsupported event version 99" in reasons[1]
    assert "event: expected one of" in reasons[2]
    assert queue_depth(queue) == 0


def test_consumer_reconnects_after_broker_restart(tmp_path: Path, queue: str) -> None:
    async def main() -> tuple[list[JobRecord], int]:
        async with consuming(tmp_path, queue) as (dispatcher, consumer, _):
            await publish(queue, [encode(event(n)) for n in range(5)])

            async def first_five() -> bool:
                return consumer.handled == 5

            await eventually_async(first_five)
            with broker_stopped():
                await asyncio.sleep(0.3)
            await publish(queue, [encode(event(n)) for n in range(5, 10)])

            async def all_ten() -> bool:
                return len(await all_jobs(dispatcher)) == 10

            await eventually_async(all_ten, timeout=30)
            return await all_jobs(dispatcher), consumer.connects

    jobs, connects = asyncio.run(main())
    assert sorted(j.sha for j in jobs) == [f"{n:040x}" for n in range(10)]
    assert connects >= 2


def test_broker_lost_between_commit_and_ack_redelivers_without_duplicate(
    tmp_path: Path, queue: str
) -> None:
    """The job is committed, the ack cannot go out: the message comes back, no new job."""

    async def main() -> tuple[list[JobRecord], Intake]:
        async with consuming(tmp_path, queue) as (dispatcher, consumer, intake):
            cut = asyncio.Event()

            def cut_before_ack(job: JobRecord) -> None:
                # Listeners run after the commit and before the consumer acks;
                # blocking the loop here on purpose keeps the ack from going out.
                if not cut.is_set():
                    cut.set()
                    stop_broker()

            dispatcher.feed.subscribe(on_jobs(cut_before_ack))
            await publish(queue, [encode(event(1))])
            await asyncio.wait_for(cut.wait(), 20)
            await asyncio.to_thread(start_broker)

            async def redelivered() -> bool:
                return intake.deduplicated == 1 and consumer.handled == 1

            await eventually_async(redelivered, timeout=30)
            return await all_jobs(dispatcher), intake

    jobs, intake = asyncio.run(main())
    assert len(jobs) == 1 and intake.created == 1
    assert queue_depth(queue) == 0


def test_dispatcher_killed_between_receive_and_ack(tmp_path: Path, queue: str) -> None:
    """SIGKILL a consuming dispatcher mid-stream; the next one loses and doubles nothing."""
    count = 400
    asyncio.run(publish(queue, [encode(event(n)) for n in range(count)]))
    args = [
        "dispatcher",
        "--http",
        "127.0.0.1:0",
        "--data-dir",
        str(tmp_path / "data"),
        "--amqp-queue",
        queue,
        "--amqp-prefetch",
        "64",
    ]
    first = Daemon(args, env={"NARWHAL_AMQP": AMQP_URL})
    try:
        with httpx.Client(base_url=first.url, timeout=10, headers=auth_headers()) as api:
            _wait_jobs(api, lambda n: n >= 50)
        os.kill(first.proc.pid, signal.SIGKILL)
    finally:
        first.stop()
    second = Daemon(args, env={"NARWHAL_AMQP": AMQP_URL})
    try:
        with httpx.Client(base_url=second.url, timeout=10, headers=auth_headers()) as api:
            jobs = _wait_jobs(api, lambda n: n >= count)
            time.sleep(0.3)  # anything doubled would show up by now
            jobs = _jobs(api)
    finally:
        assert second.stop() == 0
    shas = [j["sha"] for j in jobs]
    assert len(shas) == count
    assert sorted(shas) == sorted(f"{n:040x}" for n in range(count))
    assert queue_depth(queue) == 0


def _jobs(api: httpx.Client) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = []
    before = None
    while True:
        params: dict[str, Any] = {"limit": 500, **({"before": before} if before else {})}
        page = api.get("/api/jobs", params=params).json()
        jobs += page["jobs"]
        before = page["next"]
        if before is None:
            return jobs


def _wait_jobs(api: httpx.Client, done: Any, timeout: float = 30) -> list[dict[str, Any]]:
    def enough() -> list[dict[str, Any]] | None:
        jobs = _jobs(api)
        return jobs if done(len(jobs)) else None

    return eventually(
        enough,
        timeout=timeout,
        what="the jobs expected",
        detail=lambda: f"{len(_jobs(api))} jobs",
    )
