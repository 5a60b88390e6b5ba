"""The RabbitMQ client the agent and the dispatcher share: topology, reconnects, helpers.

Both sides declare the same durable commit queue and its dead-letter queue
(``declare_topology``, with the arguments of ``narwhal.events``), and both
keep one connection up with the same back-off (``BrokerClient``): the
agent's publisher (``agent.publisher``) and the dispatcher's consumer
(``dispatcher.amqp``) subclass it. aio-pika's exceptions are caught here and
in those two modules only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Self

import aio_pika
import aio_pika.abc
import aio_pika.exceptions

from narwhal.config import AmqpConfig
from narwhal.events import dead_letter_queue, queue_arguments, type_argument
from narwhal.quietlog import QuietLog
from narwhal.redact import redacted

log = logging.getLogger(__name__)

#: What aio-pika raises when the broker or the connection fails.
BROKER_ERRORS = (
    aio_pika.exceptions.AMQPError,
    aio_pika.exceptions.ChannelInvalidStateError,
    OSError,
    TimeoutError,
)


async def declare_topology(
    channel: aio_pika.abc.AbstractChannel, queue: str, kind: str = "classic"
) -> aio_pika.abc.AbstractQueue:
    """Declare the commit queue and its dead-letter queue (idempotent, both sides).

    ``kind`` is ``events.QUEUE_TYPES``'; a queue that exists with another
    type is refused by the broker (PRECONDITION_FAILED), which the caller
    reports: RabbitMQ cannot change a queue's type in place.
    """
    await channel.declare_queue(
        dead_letter_queue(queue), durable=True, arguments=type_argument(kind)
    )
    return await channel.declare_queue(queue, durable=True, arguments=queue_arguments(queue, kind))


class BrokerClient:
    """A RabbitMQ connection kept up by one supervising task, reconnecting with back-off.

    Subclasses implement ``_session``: connect, work until the connection or
    channel is lost, return or raise. Shared by the agent's publisher and the
    dispatcher's consumer.
    """

    #: Names the supervising task and the log line when a session fails.
    role = "client"

    def __init__(self, config: AmqpConfig) -> None:
        self.config = config
        self._task: asyncio.Task[None] | None = None
        self._quiet = QuietLog(log)
        self._closed = False
        self.connects = 0

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._supervise(), name=f"amqp-{self.role}")

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _session(self) -> None:
        raise NotImplementedError

    async def _supervise(self) -> None:
        delay = 0.1
        while True:
            started = time.monotonic()
            try:
                await self._session()
            except BROKER_ERRORS as e:
                self._quiet.warning(
                    "broker", "RabbitMQ at %s: %s", redacted(self.config.url), e or type(e).__name__
                )
            except Exception:  # a bug must not end the client for good: log, reconnect
                log.exception("AMQP %s failed; reconnecting", self.role)
            if time.monotonic() - started > 10:
                delay = 0.1  # it was up for a while: retry quickly
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.config.reconnect_max)


async def close_quietly(connection: aio_pika.abc.AbstractConnection) -> None:
    """Close a connection that may already be broken, without hanging on it."""
    with contextlib.suppress(*BROKER_ERRORS, RuntimeError):
        async with asyncio.timeout(2.0):
            await connection.close()


def client_properties(name: str) -> dict[str, aio_pika.abc.FieldValue]:
    """Shown in the broker's connection list."""
    return {"connection_name": name}
