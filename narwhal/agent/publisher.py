"""Publish commit events to RabbitMQ: durable queue, persistent messages, confirms.

One connection and one confirming channel, kept by a supervisor task that
reconnects with back-off whenever the broker goes away. ``send`` returns
only after the broker confirmed the message (it is then on disk); when the
broker is unreachable, refuses the message or does not confirm in time it
raises ``Unavailable`` at once, and the webhook is answered 503 so the forge
delivers it again. A message whose confirm was lost may still have reached
the queue: the retry then carries the same event id, which the dispatcher
uses as the job's source key, so it never makes a second job.
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

from narwhal.agent.events import (
    CONTENT_TYPE,
    MESSAGE_TYPE,
    CommitEvent,
    Unavailable,
    dead_letter_queue,
    encode,
    queue_arguments,
)
from narwhal.config import AmqpConfig
from narwhal.mesh.transport import QuietLog
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
    channel: aio_pika.abc.AbstractChannel, queue: str
) -> aio_pika.abc.AbstractQueue:
    """Declare the commit queue and its dead-letter queue (idempotent, both sides)."""
    await channel.declare_queue(dead_letter_queue(queue), durable=True)
    return await channel.declare_queue(queue, durable=True, arguments=queue_arguments(queue))


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


class AmqpPublisher(BrokerClient):
    """Hands commit events to RabbitMQ; implements the agent's ``Sink``."""

    role = "publisher"

    def __init__(self, config: AmqpConfig) -> None:
        super().__init__(config)
        self._channel: aio_pika.abc.AbstractChannel | None = None
        self.published = 0

    @property
    def connected(self) -> bool:
        return self._channel is not None and not self._channel.is_closed

    async def send(self, event: CommitEvent) -> None:
        channel = self._channel
        if channel is None or channel.is_closed:
            raise Unavailable(f"not connected to RabbitMQ at {redacted(self.config.url)}")
        message = aio_pika.Message(
            encode(event),
            content_type=CONTENT_TYPE,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=event.id,
            type=MESSAGE_TYPE,
            app_id="narwhal-agent",
            timestamp=time.time(),
        )
        try:
            # mandatory: a message no queue takes is returned, not dropped.
            await channel.default_exchange.publish(
                message,
                routing_key=self.config.queue,
                mandatory=True,
                timeout=self.config.confirm_timeout,
            )
        except TimeoutError:
            raise Unavailable(
                f"RabbitMQ did not confirm within {self.config.confirm_timeout:g}s"
            ) from None
        except BROKER_ERRORS as e:
            raise Unavailable(f"RabbitMQ refused the message: {e}") from None
        self.published += 1

    async def _session(self) -> None:
        """Connect, declare, publish until the connection or channel closes."""
        connection = await aio_pika.connect(
            self.config.url,
            timeout=self.config.connect_timeout,
            client_properties=client_properties("narwhal-agent"),
        )
        lost = asyncio.Event()
        try:
            connection.close_callbacks.add(lambda *_: lost.set())
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            channel.close_callbacks.add(lambda *_: lost.set())
            await declare_topology(channel, self.config.queue)
            self._channel = channel
            self.connects += 1
            log.info("publishing to queue %s at %s", self.config.queue, redacted(self.config.url))
            await lost.wait()
            log.warning("lost the connection to RabbitMQ; reconnecting")
        finally:
            self._channel = None
            await close_quietly(connection)


async def close_quietly(connection: aio_pika.abc.AbstractConnection) -> None:
    """Close a connection that may already be broken, without hanging on it."""
    with contextlib.suppress(*BROKER_ERRORS, RuntimeError):
        async with asyncio.timeout(2.0):
            await connection.close()


def client_properties(name: str) -> dict[str, aio_pika.abc.FieldValue]:
    """Shown in the broker's connection list."""
    return {"connection_name": name}
