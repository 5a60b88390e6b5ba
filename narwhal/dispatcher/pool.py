"""The dispatcher's mesh over ZeroMQ: ``RunnerPool`` implements ``mesh.Mesh``.

The pool owns its links entirely: connections and refusals
(``connections``), liveness (``liveness``), job streams in order and their
ACKs (``streams``), and the slots each runner offered. It reads frames in
batches and hands what they say to the dispatcher (``MeshEvents``); what
frames *mean* for jobs is the dispatcher's business: the pool knows links,
frames and slots, not jobs.

Orderings kept here, each one a guarantee to the runners or the store:

- a batch's frames are ACKed only after ``on_frames`` returned; if it
  raised ``NarwhalError`` nothing was stored: the streams are rewound and
  nothing is ACKed, so the runners resend;
- a DONE's stream is forgotten and its slot released only after the DONE
  was stored; a DONE of an attempt that is over (not live) is ACKed and
  frees its slot without reaching the dispatcher;
- a REJECT's stream and slot go before the dispatcher hears of it;
- links refused while a batch was read are reported lost after the batch.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import cast

import zmq.asyncio

from narwhal.config import MeshConfig, ServerCurve
from narwhal.dispatcher.auth import MeshAuth
from narwhal.dispatcher.connections import Connections
from narwhal.dispatcher.links import Ceiling, Link, Stream
from narwhal.dispatcher.liveness import Watchdog
from narwhal.dispatcher.mesh import Key, LinkState, MeshEvents, MeshStats, Peer, Source
from narwhal.dispatcher.streams import Inbox, open_stream
from narwhal.errors import NarwhalError, ProtocolError
from narwhal.mesh import protocol as p

log = logging.getLogger(__name__)

#: Frames handled per wake-up before the acknowledgements go out.
BATCH = 256


class _Detached:
    """Where reports go before ``attach``: nowhere, loudly."""

    def __getattr__(self, name: str) -> None:
        raise RuntimeError(f"RunnerPool.{name}: attach(events) first")


def _own(peer: Peer) -> Link:
    """The link behind ``peer``: only this pool's links are passed back to it."""
    if not isinstance(peer, Link):
        raise TypeError(f"not a runner link: {peer!r}")
    return peer


class RunnerPool:
    """Links to runners over one ROUTER socket (a ``Mesh``)."""

    def __init__(
        self,
        config: MeshConfig,
        ctx: zmq.asyncio.Context,
        *,
        curve: ServerCurve | None = None,
        max_capacity: int = 256,
    ) -> None:
        self.config = config
        self.ceiling = Ceiling(max_capacity)
        self._conns = Connections(config, ctx, curve)
        self._watchdog = Watchdog(self._conns, self._lost, self._settle_refusals)
        self._inbox = Inbox()
        self._events: MeshEvents = cast("MeshEvents", _Detached())
        self.bad_frames = 0

    # the Mesh protocol

    def attach(self, events: MeshEvents) -> None:
        self._events = events

    def loops(self) -> dict[str, Callable[[], Awaitable[None]]]:
        return {
            "receive": self.receive_loop,
            "liveness": self._watchdog.liveness_loop,
            "monitor": self._watchdog.monitor_loop,
        }

    def close(self) -> None:
        self._conns.close()

    def peers(self) -> list[Link]:
        return list(self._conns.links.values())

    def connect(self, endpoint: str, *, source: Source = Source.STATIC) -> Link | None:
        """Connect to a runner endpoint (idempotent); None if it is refused."""
        return self._conns.connect(endpoint, source)

    @property
    def refused(self) -> dict[str, str]:
        """Endpoints refused, and why (read it; change it through the pool's methods)."""
        return self._conns.refused

    def stats(self) -> MeshStats:
        return MeshStats(bad_frames=self.bad_frames, resent_gaps=self._inbox.resent_gaps)

    def bad(self, peer: Peer, what: str, count: int = 1) -> None:
        """Count ``count`` bad frames (or READY entries) from ``peer``; log now and then."""
        self.bad_frames += count
        who = peer.runner_id or "?"
        self._conns.quiet.warning(peer.endpoint, "runner %s at %s: %s", who, peer.endpoint, what)

    def reserve(self, peer: Peer, key: Key) -> None:
        _own(peer).jobs.add(key)

    def release(self, peer: Peer, *keys: Key) -> None:
        link = _own(peer)
        for key in keys:
            link.jobs.discard(key)
            link.streams.pop(key, None)
        self._events.on_released()

    def holder(self, key: Key) -> Link | None:
        for link in self._conns.links.values():
            if key in link.jobs:
                return link
        return None

    def tracks(self, peer: Peer, key: Key) -> bool:
        return key in _own(peer).streams

    def send_job(self, peer: Peer, job: p.Job) -> bool:
        link = _own(peer)
        frame = p.encode(job)
        open_stream(link, (job.job_id, job.attempt), expected=0, live=True, request=frame)
        return self._conns.send_frame(link, frame)

    def adopt(self, peer: Peer, key: Key, *, next_seq: int, live: bool) -> None:
        link = _own(peer)
        link.jobs.add(key)  # it occupies a slot until its DONE, live or not
        open_stream(link, key, expected=next_seq, live=live)

    def cancel(self, peer: Peer, key: Key, reason: str) -> None:
        self._conns.send(_own(peer), p.Cancel(job_id=key[0], attempt=key[1], reason=reason))

    # what discovery and the trust checks use

    @property
    def auth(self) -> MeshAuth | None:
        return self._conns.auth

    @property
    def key_refused(self) -> dict[str, Source]:
        """The endpoints of ``refused`` refused for their key (until the allow-list changes)."""
        return self._conns.key_refused

    def refuse(self, endpoint: str, reason: str, source: Source) -> None:
        """List ``endpoint`` as refused for its key, until the allow-list changes."""
        self._conns.refuse(endpoint, reason, source)

    def retry(self, endpoint: str) -> bool:
        """Forget a refusal of ``endpoint`` (for the next ``connect``); whether there was one."""
        return self._conns.retry(endpoint)

    async def forget(self, endpoint: str, reason: str) -> None:
        """Drop a discovered runner that said goodbye; its jobs (if any) are requeued."""
        for link in list(self._conns.links.values()):
            if link.endpoint == endpoint and link.source == Source.MDNS:
                self._conns.drop(link)
                await self._lost(link, reason)
        self._conns.retry(endpoint)

    # lost links

    async def _lost(self, link: Link, reason: str) -> None:
        """``link`` is gone: its slots are free, and the dispatcher hears what it held."""
        held = sorted(link.jobs)
        link.jobs.clear()
        self._events.on_released()
        await self._events.on_lost(link, held, reason)

    async def _settle_refusals(self) -> None:
        for link, reason in self._conns.take_refusals():
            await self._lost(link, f"runner {link.runner_id or '?'} refused: {reason}")

    # frames in

    async def receive_loop(self) -> None:
        router = self._conns.router
        while True:
            if self._conns.auth is not None:
                batch = router.recv_batch_keyed(BATCH)
            else:
                batch = [("", parts) for parts in router.recv_batch(BATCH)]
            if not batch:
                await router.wait()
                continue
            for user, parts in batch:
                unhandled = self._receive(parts, user)
                if unhandled is not None:
                    await self._handle(*unhandled)
            await self._commit()
            self._inbox.flush(self._conns.links, self._conns.send)
            await self._settle_refusals()
            # Storing is synchronous now: yield, or a steady stream of frames
            # would starve the scheduler, the API and the liveness checks.
            await asyncio.sleep(0)

    def _receive(self, parts: list[bytes], user: str = "") -> tuple[Link, p.Message] | None:
        """Handle one frame if that takes no waiting (most do); else hand it back.

        ``user`` is the key that authenticated the sender ("" without CURVE).
        """
        link = self._conns.links.get(parts[0])
        if link is None or len(parts) != 2:
            self.bad_frames += 1
            self._conns.quiet.warning(
                "unknown-peer", "frame from unknown peer %r ignored", parts[0]
            )
            return None
        try:
            message = p.decode(parts[1])
        except ProtocolError as e:
            self.bad_frames += 1
            self._conns.quiet.warning(link.endpoint, "runner %s: bad frame: %s", link.endpoint, e)
            return None
        if user and (user != link.key or type(message) is p.Ready):
            checked = self._check_key(link, user, message)
            if checked is None:
                return None
            message = checked
        link.seen()
        if isinstance(message, p.STREAM_MESSAGES):
            framed = cast("p.StreamMessage", message)
            stream = link.streams.get((framed.job_id, framed.attempt))
            if stream is not None:
                self._stream_frame(link, stream, framed)
                return None
        elif isinstance(message, p.Heartbeat):
            if link.state != LinkState.READY or message.session != link.session:
                self._conns.send(link, p.Hello(session=self._conns.session))
            elif message.state is not None:
                link.report = message.state
            return None
        return link, message

    def _stream_frame(self, link: Link, stream: Stream, message: p.StreamMessage) -> None:
        if not self._inbox.in_order(link, stream, message):
            return
        if stream.live:
            self._inbox.frames.append((link, message))
        elif type(message) is p.Done:  # an attempt that is over: its DONE frees the slot
            self.release(link, (message.job_id, message.attempt))

    def _check_key(self, link: Link, user: str, message: p.Message) -> p.Message | None:
        """The frame as it may go on (pinned labels applied), or None if it was refused."""
        assert self._conns.auth is not None  # noqa: S101 - only keyed frames come here
        verdict = self._conns.auth.check(link, user, message)
        if verdict.action == "refuse":
            self.bad_frames += verdict.forged
            self._conns.refuse_link(link, verdict.reason)
        elif verdict.action == "reopen":
            log.warning("runner %s: %s; connecting again", link.runner_id, verdict.reason)
            self._conns.reopen(link)
            self._conns.refusals_later(link, verdict.reason)
        return verdict.message

    async def _handle(self, link: Link, message: p.Message) -> None:
        """A frame that may need the dispatcher's store: READY, or outside any stream.

        A job attempt's frames count only on the link it was assigned to (or
        adopted by): its stream lives on that link. A REJECT for an attempt
        this link does not hold, a job frame outside its streams for a job
        still live, or a frame of a kind only the dispatcher sends, is a bad
        frame: counted, logged, and nothing else.
        """
        try:
            if isinstance(message, p.STREAM_MESSAGES):
                await self._stray(link, cast("p.StreamMessage", message))
            elif isinstance(message, p.Ready):
                await self._ready(link, message)
            elif isinstance(message, p.Reject):
                if (message.job_id, message.attempt) in link.streams:
                    self._inbox.frames.append((link, message))
                else:
                    self.bad(link, f"REJECT for job {message.job_id} it does not hold")
            else:
                self.bad(link, f"unexpected {message.KIND} frame")
        except NarwhalError as e:
            self.bad(link, f"{message.KIND} frame refused: {e}")

    async def _ready(self, link: Link, ready: p.Ready) -> None:
        if link.state == LinkState.READY and ready.session != link.session:
            # The runner restarted behind this alias: anything still queued on
            # it was meant for the old process. Start over on a fresh alias.
            reason = f"runner {ready.runner_id} restarted"
            log.warning("%s", reason)
            self._conns.reopen(link)
            await self._lost(link, reason)
            return
        if not await self._unique(link, ready):
            return
        link.state = LinkState.READY
        link.runner_id = ready.runner_id
        link.session = ready.session
        link.capacity = self.ceiling.clamp(ready.runner_id, ready.capacity)
        link.labels = dict(ready.labels)
        link.report = ready.state
        link.version = ready.version
        link.backoff = 1.0
        log.info(
            "runner %s ready at %s with %d slot(s)", link.runner_id, link.endpoint, link.capacity
        )
        await self._events.on_ready(link, ready)

    async def _unique(self, link: Link, ready: p.Ready) -> bool:
        """One runner id, one link: a second claimant is refused while the first is ready.

        Only ready links carry a runner id (a lost one is dropped and replaced
        by a fresh link). A claimant after the first was lost gets nothing of
        it: the old link's jobs were released to be requeued, its streams
        went with it, and READY adopts only recovery orphans (``on_ready``).
        """
        holders = [o for o in self._conns.links.values() if o.runner_id == ready.runner_id]
        other = next((o for o in holders if o is not link), None)
        if other is None:
            return True
        reason = f"runner id {ready.runner_id!r} is already connected from {other.endpoint}"
        log.warning("refusing runner at %s: %s", link.endpoint, reason)
        self._conns.refused[link.endpoint] = reason
        self._conns.tell_refused(link, reason)
        self._conns.drop(link)
        await self._lost(link, reason)
        return False

    async def _stray(self, link: Link, message: p.StreamMessage) -> None:
        """A job frame outside any stream: acknowledged if the job is settled.

        Otherwise the job is unknown or live on another link: a bad frame.
        """
        if await self._events.on_stray(link, message):
            self._inbox.ack(link, message.job_id, message.attempt, message.seq)
        else:
            self.bad(link, f"{message.KIND} frame for job {message.job_id} it does not hold")

    async def _commit(self) -> None:
        """Hand the batch's frames to the dispatcher; ACK only what it stored."""
        frames = self._inbox.take()
        if not frames:
            return
        rejected = False
        for link, message in frames:
            if type(message) is p.Reject:  # the runner holds it no more
                key = (message.job_id, message.attempt)
                link.streams.pop(key, None)
                link.jobs.discard(key)
                rejected = True
        if rejected:
            self._events.on_released()
        try:
            await self._events.on_frames(cast("list[tuple[Peer, p.Message]]", frames))
        except NarwhalError as e:
            log.error("could not record %d frame(s), the runners will resend: %s", len(frames), e)
            self._inbox.rewind(frames)
            return
        done = False
        for link, message in frames:
            if type(message) is p.Done:  # the stream is complete and stored
                key = (message.job_id, message.attempt)
                link.streams.pop(key, None)
                link.jobs.discard(key)
                done = True
        if done:
            self._events.on_released()
