"""The dispatcher's mesh side: one ROUTER socket and a ``Link`` per runner.

The pool connects out to runner endpoints, keeps each link's liveness
(Paranoid Pirate: any frame counts, heartbeats both ways, reconnect with
back-off), puts job-stream frames in order (duplicates acknowledged again,
gaps waited out until the runner resends) and acknowledges them in batches
after they were handled. What frames *mean* for jobs is the ``Handler``'s
business: the pool knows links and frames, not jobs.

With CurveZMQ (``curve`` given), ``MeshAuth`` admits only trusted keys and
ties every frame to the key of its connection; an endpoint refused for its
key (or a failed handshake) is disconnected, listed in ``refused`` and tried
again only when the allow-list changes (libzmq alone would retry it every
100 ms forever), when an operator adds it again, or after an mDNS goodbye.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from typing import Protocol, cast

import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from narwhal.config import MeshConfig, ServerCurve
from narwhal.dispatcher.auth import HANDSHAKE_EVENTS, MeshAuth, handshake_failure
from narwhal.dispatcher.links import BACKOFF_MAX, Ceiling, Link, Stream, check_endpoint
from narwhal.errors import NarwhalError, ProtocolError
from narwhal.mesh import protocol as p
from narwhal.mesh.transport import Router
from narwhal.quietlog import QuietLog

log = logging.getLogger(__name__)

#: Frames handled per wake-up before the acknowledgements go out.
BATCH = 256


class Handler(Protocol):
    """What the pool reports to the dispatcher."""

    async def on_ready(self, link: Link, ready: p.Ready) -> None: ...

    async def on_frames(self, frames: list[tuple[Link, p.Message]]) -> None: ...

    async def on_stray(self, link: Link, message: p.Message) -> bool: ...

    async def on_lost(self, link: Link, reason: str) -> None: ...


class RunnerPool:
    """Links to runners over one ROUTER socket."""

    def __init__(
        self,
        mesh: MeshConfig,
        ctx: zmq.asyncio.Context,
        handler: Handler,
        *,
        curve: ServerCurve | None = None,
        max_capacity: int = 256,
    ) -> None:
        self.mesh = mesh
        self.ceiling = Ceiling(max_capacity)
        self.session = uuid.uuid4().hex
        self._handler = handler
        self._router = Router(ctx, linger_ms=mesh.linger_ms)
        #: None: the mesh is not authenticated (``--insecure``).
        self.auth = MeshAuth(curve, ctx, self._router.sock) if curve is not None else None
        if self.auth is None:
            log.warning("mesh authentication is OFF: any process can pose as a runner")
        events = zmq.EVENT_DISCONNECTED | (HANDSHAKE_EVENTS if self.auth is not None else 0)
        self._monitor = self._router.monitor(events)
        self._links: dict[bytes, Link] = {}
        self._generation = 0
        self._acks: dict[tuple[bytes, int, int], int] = {}
        #: In-order frames of the current batch, recorded together by the handler.
        self._frames: list[tuple[Link, p.Message]] = []
        #: Endpoints refused, and why: a runner id another link holds, or
        #: (with ``auth``) its key.
        self.refused: dict[str, str] = {}
        #: The endpoints of ``refused`` refused for their key, and their source:
        #: tried again when the allow-list changes.
        self.key_refused: dict[str, str] = {}
        #: Links refused while frames were read, for ``on_lost`` after the batch.
        self._refusals: list[tuple[Link, str]] = []
        self._quiet = QuietLog(log)
        self.bad_frames = 0
        self.resent_gaps = 0

    def close(self) -> None:
        self._router.close(self.mesh.linger_ms)
        if self.auth is not None:
            self.auth.close()

    def links(self) -> list[Link]:
        return list(self._links.values())

    # connections

    def connect(self, endpoint: str, *, source: str = "static") -> Link | None:
        """Connect to a runner endpoint; idempotent per endpoint.

        A repeated announcement of a known endpoint never connects twice (a
        second connect under the same alias would abort libzmq). Returns
        None for an endpoint refused for claiming a runner id in use.
        """
        endpoint = check_endpoint(endpoint)
        for link in self._links.values():
            if link.endpoint == endpoint:
                if source == "static":
                    link.source = "static"  # named by an operator: never dropped by mDNS
                return link
        if source == "mdns" and endpoint in self.refused:
            return None
        if self.key_refused.pop(endpoint, None) is not None:  # an operator asks again
            self.refused.pop(endpoint, None)
        return self._open(endpoint, source=source)

    def refuse(self, endpoint: str, reason: str, source: str) -> None:
        """List ``endpoint`` as refused for its key, until the allow-list changes."""
        if self.refused.get(endpoint) != reason:
            log.warning("refusing runner at %s: %s", endpoint, reason)
        self.refused[endpoint] = reason
        self.key_refused[endpoint] = source

    def _refuse_link(self, link: Link, reason: str, *, tell: bool = True) -> None:
        """Disconnect ``link`` for its key; its jobs are requeued after the batch.

        ``tell``: the runner completed a handshake, so it can be told why.
        """
        self.refuse(link.endpoint, reason, link.source)
        if tell:
            self._tell_refused(link, reason)
        self._drop(link)

    def _tell_refused(self, link: Link, reason: str) -> None:
        """Tell the runner why before its link goes (else it sees a dispatcher gone silent).

        Once per refusal, never answered; queued before the disconnect, which
        delivers what is queued within the socket's linger.
        """
        self.send(link, p.Refused(reason=reason[: p.MAX_REFUSAL_CHARS]))
        self._refusals.append((link, reason))

    async def _settle_refusals(self) -> None:
        refusals, self._refusals = self._refusals, []
        for link, reason in refusals:
            await self._handler.on_lost(link, f"runner {link.runner_id or '?'} refused: {reason}")

    async def forget(self, endpoint: str, reason: str) -> None:
        """Drop a discovered runner that said goodbye; its jobs (if any) are requeued."""
        for link in list(self._links.values()):
            if link.endpoint == endpoint and link.source == "mdns":
                self._drop(link)
                await self._handler.on_lost(link, reason)
        self.refused.pop(endpoint, None)
        self.key_refused.pop(endpoint, None)

    def _drop(self, link: Link) -> None:
        self._links.pop(link.alias, None)
        link.state = "lost"
        if self.auth is not None:  # its connection, if libzmq keeps retrying it, stays out
            self.auth.forget(link.alias)
        with contextlib.suppress(zmq.ZMQError):
            self._router.sock.disconnect(link.endpoint)

    def _open(self, endpoint: str, backoff: float = 1.0, source: str = "static") -> Link:
        # A fresh alias every time: reusing one aborts libzmq (router.cpp).
        self._generation += 1
        alias = f"{self._generation}:{endpoint}".encode()
        self._router.sock.setsockopt(zmq.CONNECT_ROUTING_ID, alias)
        if self.auth is not None:
            # The connection's ZAP requests carry the socket's ROUTING_ID as
            # it was at connect: the ZAP handler admits live aliases only.
            self.auth.open(alias)
            self._router.sock.setsockopt(zmq.ROUTING_ID, alias)
        self._router.sock.connect(endpoint)
        link = Link(endpoint=endpoint, alias=alias, backoff=backoff, source=source)
        self._links[alias] = link
        self.send(link, p.Hello(session=self.session))
        return link

    def reopen(self, link: Link, backoff: float = 1.0) -> Link:
        """Drop ``link`` and everything queued on it; connect again under a new alias."""
        self._drop(link)
        return self._open(link.endpoint, backoff, link.source)

    def send(self, link: Link, message: p.Message) -> bool:
        return self._send_frame(link, p.encode(message))

    def _send_frame(self, link: Link, frame: bytes) -> bool:
        try:
            self._router.send(link.alias, frame)
        except zmq.Again:
            self._quiet.warning(link.endpoint, "runner %s: send queue full", link.endpoint)
            return False
        except zmq.ZMQError as e:
            self._quiet.warning(link.endpoint, "runner %s: cannot send: %s", link.endpoint, e)
            return False
        return True

    # liveness

    async def liveness_loop(self) -> None:
        # Checked twice per interval, so a deadline is missed by half an
        # interval at most; heartbeats still go out once per interval.
        while True:
            await asyncio.sleep(self.mesh.heartbeat_interval / 2)
            await self.check_liveness(time.monotonic())
            await self.check_trust(time.monotonic())

    async def check_trust(self, now: float) -> None:
        """Apply a changed allow-list: drop revoked keys' links, retry refused endpoints."""
        if self.auth is None or not await self.auth.reload(now):
            return
        # No await until the refusals are settled: DiscoveredRunners sees
        # the new generation and must find them cleared.
        retry, self.key_refused = self.key_refused, {}
        for endpoint in retry:
            self.refused.pop(endpoint, None)
        for link in list(self._links.values()):
            if self.auth.revoked(link):
                self._refuse_link(link, f"the key of runner {link.runner_id} was revoked")
        for endpoint, source in retry.items():
            if source == "static":  # mDNS ones: DiscoveredRunners looks at them again
                self.connect(endpoint, source=source)
        await self._settle_refusals()

    async def check_liveness(self, now: float) -> None:
        beat = p.Heartbeat(session=self.session)
        for link in list(self._links.values()):
            silent = self._silence(link, now)
            if link.state == "ready" and silent:
                reason = f"runner {link.runner_id} lost: {silent}"
                log.warning("%s", reason)
                self.reopen(link)
                await self._handler.on_lost(link, reason)
            elif link.state == "ready":
                if now - link.last_beat >= self.mesh.heartbeat_interval:
                    link.last_beat = now
                    self.send(link, beat)
                self._resend_requests(link, now)
            elif now - link.connected_at > max(link.backoff, self.mesh.dead_after):
                self.reopen(link, min(link.backoff * 2, BACKOFF_MAX))

    def _silence(self, link: Link, now: float) -> str:
        """Why a link counts as dead now, or "" while it is alive."""
        quiet = now - link.last_seen
        if quiet > self.mesh.dead_after:
            return f"silent for {quiet:.1f}s"
        # After a dropped connection, one and a half intervals without a
        # frame is enough: a live runner's heartbeat would have arrived.
        dropped = link.disconnected_at
        if dropped is not None and now - dropped > 1.5 * self.mesh.heartbeat_interval:
            return f"connection closed and silent for {quiet:.1f}s"
        return ""

    async def monitor_loop(self) -> None:
        """Note connections that drop (``_silence`` then waits less) and failed handshakes."""
        while True:
            event = parse_monitor_message(await self._monitor.recv_multipart())
            endpoint = event["endpoint"].decode(errors="replace")
            if event["event"] & HANDSHAKE_EVENTS:
                await self._handshake_failed(endpoint, event["event"], event["value"])
                continue
            for link in self._links.values():
                if link.endpoint == endpoint and link.state == "ready":
                    link.disconnected_at = time.monotonic()

    async def _handshake_failed(self, endpoint: str, event: int, value: int) -> None:
        """Stop libzmq retrying a peer that CURVE refused (it would, every 100 ms, forever)."""
        reason = handshake_failure(event, value)
        if not reason:
            self._quiet.warning(endpoint, "runner %s: handshake failed (%#x)", endpoint, value)
            return
        for link in list(self._links.values()):
            if link.endpoint != endpoint:
                continue
            # A refused key is told apart by alias: the event may be a
            # dropped connection's, which libzmq retries and ZAP turns away.
            if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH and not (
                self.auth is not None and self.auth.denied(link.alias)
            ):
                continue
            self._refuse_link(link, reason, tell=False)  # no handshake: no channel
        await self._settle_refusals()

    # frames in

    async def receive_loop(self) -> None:
        keyed = self.auth is not None
        while True:
            if keyed:
                batch = self._router.recv_batch_keyed(BATCH)
            else:
                batch = [("", parts) for parts in self._router.recv_batch(BATCH)]
            if not batch:
                await self._router.wait()
                continue
            for user, parts in batch:
                unhandled = self._receive(parts, user)
                if unhandled is not None:
                    await self._handle(*unhandled)
            await self._commit()
            self._flush_acks()
            await self._settle_refusals()
            # Storing is synchronous now: yield, or a steady stream of frames
            # would starve the scheduler, the API and the liveness checks.
            await asyncio.sleep(0)

    def _receive(self, parts: list[bytes], user: str = "") -> tuple[Link, p.Message] | None:
        """Handle one frame if that takes no waiting (most do); else hand it back.

        ``user`` is the key that authenticated the sender ("" without CURVE).
        """
        link = self._links.get(parts[0])
        if link is None or len(parts) != 2:
            self.bad_frames += 1
            self._quiet.warning("unknown-peer", "frame from unknown peer %r ignored", parts[0])
            return None
        try:
            message = p.decode(parts[1])
        except ProtocolError as e:
            self.bad_frames += 1
            self._quiet.warning(link.endpoint, "runner %s: bad frame: %s", link.endpoint, e)
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
            if link.state != "ready" or message.session != link.session:
                self.send(link, p.Hello(session=self.session))
            return None
        return link, message

    def _check_key(self, link: Link, user: str, message: p.Message) -> p.Message | None:
        """The frame as it may go on (pinned labels applied), or None if it was refused."""
        assert self.auth is not None  # noqa: S101 - only keyed frames come here
        verdict = self.auth.check(link, user, message)
        if verdict.action == "refuse":
            self.bad_frames += verdict.forged
            self._refuse_link(link, verdict.reason)
        elif verdict.action == "reopen":
            log.warning("runner %s: %s; connecting again", link.runner_id, verdict.reason)
            self.reopen(link)
            self._refusals.append((link, verdict.reason))
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
                    self._frames.append((link, message))
                else:
                    self.bad(link, f"REJECT for job {message.job_id} it does not hold")
            else:
                self.bad(link, f"unexpected {message.KIND} frame")
        except NarwhalError as e:
            self.bad(link, f"{message.KIND} frame refused: {e}")

    def bad(self, link: Link, what: str, count: int = 1) -> None:
        """Count ``count`` bad frames (or READY entries) from ``link``; log now and then."""
        self.bad_frames += count
        who = link.runner_id or "?"
        self._quiet.warning(link.endpoint, "runner %s at %s: %s", who, link.endpoint, what)

    async def _ready(self, link: Link, ready: p.Ready) -> None:
        if link.state == "ready" and ready.session != link.session:
            # The runner restarted behind this alias: anything still queued on
            # it was meant for the old process. Start over on a fresh alias.
            reason = f"runner {ready.runner_id} restarted"
            log.warning("%s", reason)
            self.reopen(link)
            await self._handler.on_lost(link, reason)
            return
        if not await self._unique(link, ready):
            return
        link.state = "ready"
        link.runner_id = ready.runner_id
        link.session = ready.session
        link.capacity = self.ceiling.clamp(ready.runner_id, ready.capacity)
        link.labels = dict(ready.labels)
        link.version = ready.version
        link.backoff = 1.0
        log.info(
            "runner %s ready at %s with %d slot(s)", link.runner_id, link.endpoint, link.capacity
        )
        await self._handler.on_ready(link, ready)

    async def _unique(self, link: Link, ready: p.Ready) -> bool:
        """One runner id, one link: a second claimant is refused while the first is ready.

        Only ready links carry a runner id (a lost one is dropped and replaced
        by a fresh link). A claimant after the first was lost gets nothing of
        it: the old link's jobs were released to be requeued, its streams
        went with it, and READY adopts only recovery orphans (``on_ready``).
        """
        holders = [o for o in self._links.values() if o.runner_id == ready.runner_id]
        other = next((o for o in holders if o is not link), None)
        if other is None:
            return True
        reason = f"runner id {ready.runner_id!r} is already connected from {other.endpoint}"
        log.warning("refusing runner at %s: %s", link.endpoint, reason)
        self.refused[link.endpoint] = reason
        self._tell_refused(link, reason)
        self._drop(link)
        await self._handler.on_lost(link, reason)
        return False

    async def _stray(self, link: Link, message: p.StreamMessage) -> None:
        """A job frame outside any stream: acknowledged if the job is settled.

        Otherwise the job is unknown or live on another link: a bad frame.
        """
        if await self._handler.on_stray(link, message):
            self._ack(link, message.job_id, message.attempt, message.seq)
        else:
            self.bad(link, f"{message.KIND} frame for job {message.job_id} it does not hold")

    def _stream_frame(self, link: Link, stream: Stream, message: p.StreamMessage) -> None:
        job_id, attempt, seq = message.job_id, message.attempt, message.seq
        if seq != stream.expected:
            # A duplicate (already handled) or a gap (frames lost on the way;
            # the runner resends from its first unacknowledged frame).
            self.resent_gaps += seq > stream.expected
            if stream.expected > 0:
                self._ack(link, job_id, attempt, stream.expected - 1)
            return
        stream.expected += 1
        stream.request = None
        if stream.live or isinstance(message, p.Done):
            self._frames.append((link, message))
        self._ack(link, job_id, attempt, seq)

    async def _commit(self) -> None:
        """Hand the batch's frames to the dispatcher; ACK only what it stored."""
        frames, self._frames = self._frames, []
        if not frames:
            return
        try:
            await self._handler.on_frames(frames)
        except NarwhalError as e:
            log.error("could not record %d frame(s), the runners will resend: %s", len(frames), e)
            self._forget_batch(frames)
            return
        for link, message in frames:
            if isinstance(message, p.Done):  # the stream is complete and stored
                link.streams.pop((message.job_id, message.attempt), None)

    def _forget_batch(self, frames: list[tuple[Link, p.Message]]) -> None:
        """Rewind each stream to its first frame of the failed batch, unacknowledged."""
        for link, message in frames:
            job_id, attempt = message.job_id, message.attempt  # type: ignore[attr-defined]
            self._acks.pop((link.alias, job_id, attempt), None)
            seq = getattr(message, "seq", None)
            stream = link.streams.get((job_id, attempt))
            if seq is not None and stream is not None:
                stream.expected = min(stream.expected, seq)

    def open_stream(
        self,
        link: Link,
        key: tuple[int, int],
        *,
        expected: int,
        live: bool,
        request: p.Message | None = None,
    ) -> bool:
        """Track a job stream; send ``request`` (a JOB) on it. False if it could not go yet."""
        frame = p.encode(request) if request is not None else None
        link.streams[key] = Stream(expected=expected, live=live, request=frame)
        if frame is None:
            return True
        link.streams[key].sent_at = time.monotonic()
        return self._send_frame(link, frame)

    def _resend_requests(self, link: Link, now: float) -> None:
        for stream in link.streams.values():
            late = now - stream.sent_at > self.mesh.dead_after
            if stream.request is not None and stream.expected == 0 and late:
                stream.sent_at = now
                self._send_frame(link, stream.request)

    def _ack(self, link: Link, job_id: int, attempt: int, seq: int) -> None:
        key = (link.alias, job_id, attempt)
        self._acks[key] = max(seq, self._acks.get(key, -1))

    def _flush_acks(self) -> None:
        acks, self._acks = self._acks, {}
        per_link: dict[bytes, list[tuple[int, int, int]]] = {}
        for (alias, job_id, attempt), seq in acks.items():
            per_link.setdefault(alias, []).append((job_id, attempt, seq))
        for alias, streams in per_link.items():
            link = self._links.get(alias)
            if link is not None:
                self.send(link, p.Ack(streams=tuple(streams)))
