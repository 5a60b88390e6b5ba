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
import logging
import time

import aio_pika
import aio_pika.abc

from narwhal.amqp import (
    BROKER_ERRORS,
    BrokerClient,
    client_properties,
    close_quietly,
    declare_topology,
)
from narwhal.config import AmqpConfig
from narwhal.events import CONTENT_TYPE, MESSAGE_TYPE, CommitEvent, Unavailable, encode
from narwhal.redact import redacted

log = logging.getLogger(__name__)


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
            await declare_topology(channel, self.config.queue, self.config.queue_type)
            self._channel = channel
            self.connects += 1
            log.info("publishing to queue %s at %s", self.config.queue, redacted(self.config.url))
            await lost.wait()
            log.warning("lost the connection to RabbitMQ; reconnecting")
        finally:
            self._channel = None
            await close_quietly(connection)
