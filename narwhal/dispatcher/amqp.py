"""Commit events into jobs: the RabbitMQ consumer and the in-process path.

``Intake.accept`` turns one commit event into at most one job: nothing new
while a job for the same (repository, commit, event kind) is queued, assigned
or running, and the event id as the job's ``source_key`` so that the same
event seen twice (a redelivered message, a forge retrying) returns the job
made the first time.

``AmqpConsumer`` takes events off the queue with a bounded prefetch and
handles them one at a time: accept (the job is committed to the store), then
ack. A dispatcher killed between the two gets the message again from the
broker, and the source key makes that harmless. A message that cannot be
parsed is copied to the dead-letter queue with the reason in its
``x-narwhal-reason`` header (confirmed), then acked: it never loops. When
the broker goes away the consumer reconnects with back-off; messages it held
unacked go back to the queue on the broker's side.

Shutdown order (``aclose``): stop taking messages (the message in hand is
either committed and acked, or left unacked and redelivered later, which the
source key makes harmless), close the channel and the connection.
"""

from __future__ import annotations

import asyncio
import logging
import time

import aio_pika
import aio_pika.abc

from narwhal.amqp import (
    BrokerClient,
    client_properties,
    close_quietly,
    declare_topology,
)
from narwhal.config import AmqpConfig
from narwhal.dispatcher.core import Dispatcher
from narwhal.dispatcher.records import JobRecord
from narwhal.dispatcher.status import StatusReporter
from narwhal.errors import ConfigError, NarwhalError, RepoError
from narwhal.events import (
    REASON_HEADER,
    CommitEvent,
    EventError,
    Unavailable,
    dead_letter_queue,
    decode,
)
from narwhal.redact import redacted
from narwhal.repos import check_repo
from narwhal.secret_rules import repo_key

log = logging.getLogger(__name__)

#: Pause before a message whose job could not be stored is handed back.
STORE_RETRY_SECONDS = 1.0


class Intake:
    """Turns commit events into jobs, one job per commit while it is active."""

    def __init__(self, dispatcher: Dispatcher, reporter: StatusReporter | None = None) -> None:
        self._dispatcher = dispatcher
        self._reporter = reporter
        # find_active and submit are two store calls: one event at a time
        # between them, or two deliveries of one commit make two jobs.
        self._lock = asyncio.Lock()
        self.created = 0
        self.deduplicated = 0

    async def accept(self, event: CommitEvent) -> tuple[JobRecord, bool]:
        """The job for ``event`` and whether it is new; ``EventError`` if refused."""
        try:
            check_repo(event.repo, allow_local=self._dispatcher.config.allow_local_repos)
        except RepoError as e:
            raise EventError(str(e)) from None
        async with self._lock:
            if self._reporter is not None:
                await self._reporter.remember(event)
            active = await self._dispatcher.store.find_active(
                repo=event.repo, sha=event.sha, event=event.event
            )
            if active is not None:
                self.deduplicated += 1
                log.info(
                    "%s: job %d is already %s for this commit", event.id, active.id, active.state
                )
                return active, False
            job = await self._dispatcher.submit(
                repo=event.repo,
                ref=event.ref,
                sha=event.sha,
                event=event.event,
                labels={},
                source_key=event.id,
                # A fork's pull request gets the secrets of the repository it
                # targets only if that repository allows forks (dispatcher.vault).
                fork_of=_fork_of(event),
            )
        # After find_active found nothing, an existing job for this source
        # key can only be one that has ended: the event was seen before.
        fresh = not job.terminal
        if fresh:
            self.created += 1
        log.info("job %d for %s (%s %s at %s)", job.id, event.id, event.event, event.ref, event.sha)
        return job, fresh


def _fork_of(event: CommitEvent) -> str | None:
    """The key of the repository a fork's pull request targets (None: not a fork).

    A URL that has no key (a port out of range) stays as it is: still a
    fork, of a repository no policy can name, so it gets no secrets.
    """
    if event.fork_of is None:
        return None
    try:
        return repo_key(event.fork_of)
    except ConfigError:
        return event.fork_of


class DirectSink:
    """The agent's sink in ``narwhal up`` without RabbitMQ: straight into the store."""

    def __init__(self, intake: Intake) -> None:
        self._intake = intake

    async def send(self, event: CommitEvent) -> None:
        try:
            await self._intake.accept(event)
        except EventError:
            raise  # refused for good: the webhook answers 400, not 503
        except NarwhalError as e:
            raise Unavailable(f"the job store refused the event: {e}") from e


class AmqpConsumer(BrokerClient):
    """Consumes commit events from RabbitMQ into jobs; reconnects by itself."""

    role = "consumer"

    def __init__(self, config: AmqpConfig, intake: Intake) -> None:
        super().__init__(config)
        self._intake = intake
        self.connected = asyncio.Event()
        self.handled = 0
        self.dead_lettered = 0

    async def _session(self) -> None:
        connection = await aio_pika.connect(
            self.config.url,
            timeout=self.config.connect_timeout,
            client_properties=client_properties("narwhal-dispatcher"),
        )
        lost = asyncio.Event()
        inbox: asyncio.Queue[aio_pika.abc.AbstractIncomingMessage] = asyncio.Queue()
        try:
            connection.close_callbacks.add(lambda *_: lost.set())
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            channel.close_callbacks.add(lambda *_: lost.set())
            await channel.set_qos(prefetch_count=self.config.prefetch)
            queue = await declare_topology(channel, self.config.queue, self.config.queue_type)
            await queue.consume(inbox.put)
            self.connects += 1
            self.connected.set()
            log.info("consuming queue %s at %s", self.config.queue, redacted(self.config.url))
            await self._drain(channel, inbox, lost)
            log.warning("lost the connection to RabbitMQ; reconnecting")
        finally:
            self.connected.clear()
            await close_quietly(connection)

    async def _drain(
        self,
        channel: aio_pika.abc.AbstractChannel,
        inbox: asyncio.Queue[aio_pika.abc.AbstractIncomingMessage],
        lost: asyncio.Event,
    ) -> None:
        """Handle messages one by one until the connection is lost."""
        lost_wait = asyncio.ensure_future(lost.wait())
        try:
            while not lost.is_set():
                getter = asyncio.ensure_future(inbox.get())
                await asyncio.wait({getter, lost_wait}, return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    getter.cancel()
                    return
                await self._handle(channel, getter.result())
        finally:
            lost_wait.cancel()

    async def _handle(
        self, channel: aio_pika.abc.AbstractChannel, message: aio_pika.abc.AbstractIncomingMessage
    ) -> None:
        try:
            event = decode(message.body)
        except EventError as e:
            await self._dead_letter(channel, message, str(e))
            return
        try:
            await self._intake.accept(event)
        except EventError as e:
            await self._dead_letter(channel, message, str(e))
            return
        except NarwhalError as e:
            self._quiet.warning("store", "cannot store the job for %s: %s", event.id, e)
            await asyncio.sleep(STORE_RETRY_SECONDS)
            await message.nack(requeue=True)
            return
        await message.ack()
        self.handled += 1

    async def _dead_letter(
        self,
        channel: aio_pika.abc.AbstractChannel,
        message: aio_pika.abc.AbstractIncomingMessage,
        reason: str,
    ) -> None:
        log.warning(
            "message %s from %s is not a commit event: %s; moved to %s",
            message.message_id,
            self.config.queue,
            reason,
            dead_letter_queue(self.config.queue),
        )
        parked = aio_pika.Message(
            message.body,
            headers={**(message.headers or {}), REASON_HEADER: reason[:1000]},
            content_type=message.content_type,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=message.message_id,
            type=message.type,
            timestamp=time.time(),
        )
        await channel.default_exchange.publish(
            parked,
            routing_key=dead_letter_queue(self.config.queue),
            mandatory=True,
            timeout=self.config.confirm_timeout,
        )
        await message.ack()
        self.dead_lettered += 1
