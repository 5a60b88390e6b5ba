"""The real RabbitMQ broker of the agent and AMQP tests: a queue of each
test's own, its messages, and the broker stopped and started again."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import aio_pika
import pytest

from narwhal.events import CommitEvent
from tests.support.eventually import eventually

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"


def require_broker() -> None:
    """Fail (never skip) when RabbitMQ is not there: the tests need the real one."""
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=2).close()
    except OSError as e:
        pytest.fail(
            f"RabbitMQ does not answer on 127.0.0.1:5672 ({e}); scripts/test starts it,"
            " or run: rabbitmq-server -detached"
        )


def new_queue_name() -> str:
    return f"narwhal.test.{uuid.uuid4().hex[:12]}"


async def _with_channel(fn: Callable[[aio_pika.abc.AbstractChannel], Any]) -> Any:
    connection = await aio_pika.connect(AMQP_URL, timeout=10)
    async with connection:
        channel = await connection.channel()
        return await fn(channel)


def delete_queues(*names: str) -> None:
    async def delete(channel: aio_pika.abc.AbstractChannel) -> None:
        for name in names:
            await channel.queue_delete(name)

    asyncio.run(_with_channel(delete))


def queue_depth(name: str) -> int:
    """Messages ready in a queue (0 if it does not exist)."""
    return _declared(name, "message_count")


def queue_consumers(name: str) -> int:
    """Consumers of a queue (0 if it does not exist)."""
    return _declared(name, "consumer_count")


def _declared(name: str, field: str) -> int:
    async def count(channel: aio_pika.abc.AbstractChannel) -> int:
        try:
            queue = await channel.declare_queue(name, passive=True)
        except aio_pika.exceptions.ChannelClosed:
            return 0
        return int(getattr(queue.declaration_result, field) or 0)

    return int(asyncio.run(_with_channel(count)))


def commit_event(n: int, *, sha: str | None = None, event_id: str | None = None) -> CommitEvent:
    """The ``n``th push event of one repository, as the agent queues it."""
    return CommitEvent(
        id=event_id or f"github:delivery-{n}",
        forge="github",
        delivery=f"delivery-{n}",
        repo="https://forge.invalid/octo/hello.git",
        full_name="octo/hello",
        ref="refs/heads/main",
        sha=sha or f"{n:040x}",
        event="push",
    )


async def publish(queue: str, bodies: list[bytes], *, ids: list[str] | None = None) -> None:
    """Publish raw bodies to ``queue`` with confirms, as the agent would."""
    connection = await aio_pika.connect(AMQP_URL, timeout=10)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        await channel.declare_queue(f"{queue}.dead", durable=True)
        await channel.declare_queue(
            queue,
            durable=True,
            arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": f"{queue}.dead"},
        )
        for n, body in enumerate(bodies):
            message = aio_pika.Message(
                body,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                message_id=ids[n] if ids else None,
            )
            await channel.default_exchange.publish(message, routing_key=queue)


async def take_all(name: str) -> list[aio_pika.abc.AbstractIncomingMessage]:
    """Every message ready in a queue, removed from it."""

    async def take(channel: aio_pika.abc.AbstractChannel) -> list[Any]:
        queue = await channel.get_queue(name)
        messages = []
        while (message := await queue.get(no_ack=True, fail=False)) is not None:
            messages.append(message)
        return messages

    return list(await _with_channel(take))


@contextmanager
def own_queue() -> Iterator[str]:
    """A queue name of one test's own; it and its dead-letter queue are deleted after."""
    require_broker()
    name = new_queue_name()
    try:
        yield name
    finally:
        if not broker_answers():
            start_broker()
        delete_queues(name, f"{name}.dead")


def broker_answers() -> bool:
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=1).close()
    except OSError:
        return False
    return True


def stop_broker() -> None:
    subprocess.run(["rabbitmqctl", "-q", "stop_app"], check=True, capture_output=True, timeout=60)


def start_broker() -> None:
    subprocess.run(["rabbitmqctl", "-q", "start_app"], check=True, capture_output=True, timeout=60)
    eventually(broker_answers, timeout=30, interval=0.1, what="RabbitMQ to come back")


@contextmanager
def broker_stopped() -> Iterator[None]:
    """The broker's application stopped for the block; always started again."""
    stop_broker()
    try:
        yield
    finally:
        start_broker()
