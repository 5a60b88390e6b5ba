"""Commit events through a quorum queue (``--amqp-queue-type quorum``) on the real RabbitMQ.

An organisation runs RabbitMQ as a cluster with quorum queues; the agent and
the dispatcher then both declare the commit queue and its dead-letter queue
with ``x-queue-type: quorum``. A single node takes quorum queues too, so the
real broker here checks the declaration, the round trip and the refusal of
a queue whose type does not match.
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import aio_pika
import pytest

from narwhal.agent.publisher import AmqpPublisher
from narwhal.amqp import declare_topology
from narwhal.cli import main
from narwhal.config import AmqpConfig, DispatcherConfig
from narwhal.dispatcher.amqp import AmqpConsumer, Intake
from narwhal.dispatcher.store.base import JobQuery
from narwhal.events import CommitEvent
from tests.support.broker import AMQP_URL, own_queue
from tests.support.dispatchers import running_dispatcher
from tests.support.eventually import eventually_async


def _event(n: int) -> CommitEvent:
    return CommitEvent(
        id=f"github:quorum-{n}",
        forge="github",
        delivery=f"quorum-{n}",
        repo="https://forge.invalid/octo/hello.git",
        full_name="octo/hello",
        ref="refs/heads/main",
        sha=f"{n:040x}",
        event="push",
    )


def _queue_types() -> dict[str, str]:
    out = subprocess.run(
        ["rabbitmqctl", "-q", "list_queues", "name", "type"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return dict(line.split("\t")[:2] for line in out.splitlines() if "\t" in line)


def test_events_travel_through_quorum_queues(tmp_path: Path) -> None:
    with own_queue() as queue:
        amqp = AmqpConfig(url=AMQP_URL, queue=queue, queue_type="quorum", reconnect_max=0.3)

        async def main() -> list[str]:
            async with running_dispatcher(DispatcherConfig(data_dir=tmp_path / "d")) as d:
                async with AmqpConsumer(amqp, Intake(d)) as consumer:
                    async with asyncio.timeout(20):
                        await consumer.connected.wait()
                    async with AmqpPublisher(amqp) as publisher:

                        async def up() -> bool:
                            return publisher.connected

                        await eventually_async(up)
                        for n in range(5):
                            await publisher.send(_event(n))

                    async def handled() -> bool:
                        return consumer.handled == 5

                    await eventually_async(handled)
                jobs = await d.store.list_jobs(JobQuery(limit=None, ascending=True))
                return [job.sha or "" for job in jobs]

        shas = asyncio.run(main())
        assert shas == [f"{n:040x}" for n in range(5)]
        types = _queue_types()
        assert types[queue] == "quorum" and types[f"{queue}.dead"] == "quorum"


def test_a_classic_queue_is_not_taken_for_a_quorum_one(tmp_path: Path) -> None:
    """RabbitMQ cannot change a queue's type: declaring the other type is refused, loudly."""
    with own_queue() as queue:

        async def main() -> None:
            connection = await aio_pika.connect(AMQP_URL, timeout=10)
            async with connection:
                channel = await connection.channel()
                await channel.declare_queue(f"{queue}.dead", durable=True)
            quorum = AmqpConfig(url=AMQP_URL, queue=queue, queue_type="quorum")
            connection = await aio_pika.connect(AMQP_URL, timeout=10)
            async with connection:
                channel = await connection.channel()
                with pytest.raises(aio_pika.exceptions.ChannelPreconditionFailed):
                    await declare_topology(channel, quorum.queue, quorum.queue_type)

        asyncio.run(main())


def test_queue_type_flag_is_checked(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The environment variable escapes argparse's choices; settings still refuse it."""
    monkeypatch.setenv("NARWHAL_AMQP_QUEUE_TYPE", "stream")
    argv = ["dispatcher", "--amqp", "amqp://x/", "--data-dir", str(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("narwhal: --amqp-queue-type") and err.count("\n") == 1
