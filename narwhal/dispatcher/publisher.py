"""The metrics feed's server: the Clone pattern's PUB socket and snapshot ROUTER.

The wire protocol is ``narwhal.mesh.feed``'s (its docstring has the
rules). The publisher is one more consumer of the dispatcher's ``Feed``:
each event updates ``FeedState`` (a dict write or two, on the loop), and
a flush every ``flush_interval`` (50 ms) publishes what changed, one
message per topic, numbered with one ``seq`` across topics, under an
``epoch`` drawn at each start. A ``beat`` goes out after a second of
silence. A flush publishes ``max_flush_items`` changes at most, so a burst
of a hundred thousand jobs costs a few flushes, not one long stall.

Nothing here can slow dispatching: the PUB socket has a bounded SNDHWM and
is sent to with NOBLOCK (a PUB drops at its high-water mark, per
subscriber, without telling the sender: a stuck subscriber costs nothing,
and sees a gap); the ROUTER answers ``[b"snapshot"]`` and ignores (and
counts) anything else, takes frames of ``MAX_REQUEST_BYTES`` at most, and
sends without waiting (a requester that does not read loses its reply).
An encoded snapshot is kept until the next message, so a crowd of
requesters costs one encoding.

With a ``ServerCurve`` both sockets are CURVE servers with the
dispatcher's key, and a ZAP handler admits the keys found in
``subscribers_dir`` (read again every ``poll_interval``). The publisher
has a ZeroMQ context of its own: libzmq allows one ZAP handler per
context, and the mesh's is the pool's.

The counters (``published``, ``snapshots``, ``bad_requests``, ``dropped``,
``flush_seconds``) are plain attributes, for ``/metrics``.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any

import zmq
import zmq.asyncio

from narwhal.config import ServerCurve
from narwhal.dispatcher.feed import Feed
from narwhal.dispatcher.feedstate import FeedState
from narwhal.dispatcher.records import JobRecord
from narwhal.errors import ConfigError
from narwhal.mesh.feed import (
    MAX_ITEMS,
    SNAPSHOT_REQUEST,
    encode_maps,
    encode_snapshot,
)
from narwhal.mesh.subscriber_keys import TrustedSubscribers
from narwhal.mesh.transport import send_now, serve_curve
from narwhal.mesh.zap import Decide, ZapHandler
from narwhal.quietlog import QuietLog
from narwhal.supervise import spawn

log = logging.getLogger(__name__)

#: The zap_domain of the feed's sockets.
ZAP_DOMAIN = "narwhal-feed"
#: A snapshot request is one short frame; anything longer cuts the peer off. CURVE's
#: handshake commands count too (with 256, INITIATE was cut off: measured).
MAX_REQUEST_BYTES = 4096
#: Snapshot replies queued per requester before the next one is dropped.
ROUTER_SNDHWM = 4
#: Messages queued per subscriber before the PUB drops that subscriber's next
#: ones. A message is at most ``MAX_ITEMS`` items (some 400 KB at the most),
#: shared by every subscriber's queue, so a stuck subscriber holds 400 MB at
#: the very worst; a healthy one reads each flush's few messages at once.
SEND_HWM = 1000
#: Tries at a free pair of ports (PUB, PUB + 1) for port 0 or a fallback.
BIND_TRIES = 20

_BEAT = b"beat"


class Publisher:
    """Publishes the dispatcher's ``Feed`` on ``endpoint`` (``tcp://HOST:PORT``).

    Port 0 binds a free pair of ports (``endpoint`` then tells which);
    ``fallback`` does the same when the given ports are taken (``narwhal
    up``'s default address) instead of failing.
    """

    def __init__(
        self,
        endpoint: str,
        feed: Feed,
        *,
        curve: ServerCurve | None = None,
        flush_interval: float = 0.05,
        beat_interval: float = 1.0,
        send_hwm: int = SEND_HWM,
        max_flush_items: int = 20_000,
        linger_ms: int = 0,
        fallback: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.endpoint = endpoint
        self.state = FeedState(clock=clock)
        self.epoch = secrets.token_hex(8)
        self.seq = 0
        self.published = 0
        self.snapshots = 0
        self.bad_requests = 0
        #: Messages the PUB refused and snapshot replies that could not go.
        self.dropped = 0
        #: Time spent flushing (building, encoding and sending messages).
        self.flush_seconds = 0.0
        self._feed = feed
        self._curve = curve
        self._flush_interval = flush_interval
        self._beat_interval = beat_interval
        self._send_hwm = send_hwm
        self._max_items = max_flush_items
        self._linger = linger_ms
        self._fallback = fallback
        self._quiet = QuietLog(log)
        self._tasks: set[asyncio.Task[None]] = set()
        self._ctx: zmq.asyncio.Context | None = None
        self._pub: zmq.Socket[bytes] | None = None
        self._router: zmq.asyncio.Socket | None = None
        self._zap: ZapHandler | None = None
        self._trusted: TrustedSubscribers | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._last_sent = 0.0
        self._cached: tuple[int, list[bytes]] | None = None
        self._lost = 0
        self._closed = False

    async def __aenter__(self) -> Publisher:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def seed(self, jobs: Iterable[JobRecord], runners: Iterable[Mapping[str, Any]]) -> None:
        """What the dispatcher held before the publisher started (``FeedState.seed``)."""
        self.state.seed(jobs, runners)

    # life

    async def start(self) -> None:
        """Bind both sockets, subscribe to the feed, start the loops."""
        self._ctx = zmq.asyncio.Context()
        try:
            self._open(self._ctx)
        except BaseException:
            self._close_sockets()
            raise
        self._unsubscribe = self._feed.subscribe(self.state.apply)
        self._last_sent = time.monotonic()
        spawn(self._tasks, "metrics feed flush", self._flush_loop)
        spawn(self._tasks, "metrics feed snapshots", self._snapshot_loop)
        if self._trusted is not None:
            spawn(self._tasks, "metrics feed trusted keys", self._trust_loop)

    def _open(self, ctx: zmq.asyncio.Context) -> None:
        plain: zmq.Context[zmq.Socket[bytes]] = zmq.Context.shadow(ctx.underlying)
        if self._curve is not None:
            self._zap = ZapHandler(ctx, self._decider(self._curve), domain=ZAP_DOMAIN)
        self._pub = plain.socket(zmq.PUB)
        self._pub.setsockopt(zmq.LINGER, self._linger)
        self._pub.setsockopt(zmq.SNDHWM, self._send_hwm)
        self._router = ctx.socket(zmq.ROUTER)
        self._router.setsockopt(zmq.LINGER, self._linger)
        self._router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self._router.setsockopt(zmq.MAXMSGSIZE, MAX_REQUEST_BYTES)
        self._router.setsockopt(zmq.SNDHWM, ROUTER_SNDHWM)
        sockets: tuple[zmq.Socket[Any], ...] = (self._pub, self._router)
        for sock in sockets:
            if self._curve is not None:
                serve_curve(sock, self._curve.public_key, self._curve.secret_key, ZAP_DOMAIN)
            if "[" in self.endpoint:
                sock.setsockopt(zmq.IPV6, 1)
        self.endpoint = self._bind(self._pub, self._router)

    def _decider(self, curve: ServerCurve) -> Decide:
        if curve.subscribers_dir is None:
            return lambda key, identity: "no subscriber key is trusted"
        self._trusted = TrustedSubscribers(curve.subscribers_dir)
        self._trusted.load()
        return self._trusted.decide

    def _bind(self, pub: zmq.Socket[bytes], router: zmq.asyncio.Socket) -> str:
        head, sep, port = self.endpoint.rpartition(":")
        if not sep or not head.startswith("tcp://") or not port.isdigit():
            raise ConfigError(f"--metrics {self.endpoint}: expected tcp://HOST:PORT")
        if int(port) != 0:
            try:
                return _bind_pair(pub, router, head, int(port))
            except zmq.ZMQError as e:
                if not (self._fallback and e.errno == errno.EADDRINUSE):
                    raise ConfigError(
                        f"--metrics {self.endpoint}: cannot bind it and port {int(port) + 1}: "
                        f"{e.strerror}"
                    ) from None
                log.warning("metrics feed: %s is taken; binding free ports", self.endpoint)
        for _ in range(BIND_TRIES):
            chosen = int(pub.bind_to_random_port(head, max_port=65534))
            try:
                router.bind(f"{head}:{chosen + 1}")
            except zmq.ZMQError:
                _unbind_last(pub)
                continue
            return f"{head}:{chosen}"
        raise ConfigError(f"--metrics {self.endpoint}: found no free pair of ports")

    async def aclose(self) -> None:
        """Stop the loops and close the sockets and the context; idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._unsubscribe is not None:
            self._unsubscribe()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._close_sockets()

    def _close_sockets(self) -> None:
        for sock in (self._pub, self._router):
            if sock is not None:
                sock.close(self._linger)
        if self._zap is not None:
            self._zap.close()
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    # publishing

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self._flush_interval)
            self.flush()

    def flush(self, *, limit: int | None = None) -> None:
        """Publish what changed (``limit`` changes at most), or a beat after a silence."""
        if self.state.pending:
            started = time.perf_counter()
            for topic, items in self.state.take(limit or self._max_items):
                for start in range(0, len(items), MAX_ITEMS):
                    self._send(topic, items[start : start + MAX_ITEMS])
            self.flush_seconds += time.perf_counter() - started
        elif time.monotonic() - self._last_sent >= self._beat_interval:
            self._send(_BEAT, [])

    def _send(self, topic: bytes, items: list[dict[str, Any]]) -> None:
        self.seq += 1
        self._last_sent = time.monotonic()
        if self._lost:  # the test hook: as if the PUB dropped this message
            self._lost -= 1
            return
        assert self._pub is not None  # noqa: S101 - sent only between start and aclose
        try:
            self._pub.send_multipart(encode_maps(topic, self.epoch, self.seq, items), zmq.NOBLOCK)
        except zmq.ZMQError as e:  # a PUB does not block; a failure is counted, not raised
            self.dropped += 1
            self._quiet.warning("pub", "metrics feed: message %d not sent: %s", self.seq, e)
            return
        self.published += 1

    def lose(self, count: int) -> None:
        """Test hook: number the next ``count`` messages but send none (a forced gap)."""
        self._lost += count

    # snapshots

    async def _snapshot_loop(self) -> None:
        assert self._router is not None  # noqa: S101 - started by start()
        router = self._router
        while True:
            frames = await router.recv_multipart()
            self._answer(router, frames)

    def _answer(self, router: zmq.asyncio.Socket, frames: list[bytes]) -> None:
        if len(frames) != 2 or frames[1] != SNAPSHOT_REQUEST:
            self.bad_requests += 1
            self._quiet.warning("request", "metrics feed: ignored a malformed snapshot request")
            return
        try:
            send_now(router, [frames[0], *self.snapshot_frames()])
        except zmq.ZMQError:  # the requester does not read, or went away
            self.dropped += 1
            return
        self.snapshots += 1

    def snapshot_frames(self) -> list[bytes]:
        """The reply to a snapshot request: everything pending is published first."""
        if self.state.pending:
            self.flush(limit=1 << 62)
        if self._cached is None or self._cached[0] != self.seq:
            frames = encode_snapshot(self.epoch, self.seq, self.state.snapshot())
            self._cached = (self.seq, frames)
        return self._cached[1]

    async def _trust_loop(self) -> None:
        assert self._trusted is not None and self._curve is not None  # noqa: S101
        while True:
            await asyncio.sleep(self._curve.poll_interval)
            self._trusted.load()


def _bind_pair(pub: zmq.Socket[bytes], router: zmq.asyncio.Socket, head: str, port: int) -> str:
    """Bind PUB on ``port`` and ROUTER on ``port + 1``, both or neither."""
    if not 0 < port < 65535:
        raise zmq.ZMQError(errno.EINVAL, f"port {port} out of range")
    pub.bind(f"{head}:{port}")
    try:
        router.bind(f"{head}:{port + 1}")
    except zmq.ZMQError:
        _unbind_last(pub)
        raise
    return f"{head}:{port}"


def _unbind_last(sock: zmq.Socket[bytes]) -> None:
    # The resolved address: ``tcp://*:P`` is unbound as ``tcp://0.0.0.0:P``.
    sock.unbind(sock.getsockopt_string(zmq.LAST_ENDPOINT))
