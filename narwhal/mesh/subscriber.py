"""The metrics feed's client: the Clone pattern's subscriber, for any program (the backend).

``Subscriber(endpoint).updates()`` yields a ``Snapshot`` first, then every
``Update`` in order; after a gap it yields a new ``Snapshot`` and goes on
(``Replica`` turns that into the present). How it syncs
(``narwhal.mesh.feed`` has the protocol):

1. The SUB socket connects first and subscribes to everything. It waits to
   hear one message (a beat comes every second): from then on its
   subscription is in place, so nothing published later is missed. What
   it heard so far is dropped: all of it is older than the snapshot.
2. It asks the snapshot ROUTER, on a fresh DEALER, and keeps what the SUB
   receives meanwhile, undecoded (at most ``buffer_limit`` messages and
   ``buffer_bytes``: beyond that, it drops them and starts again). No answer within ``timeout``, a
   malformed one, or silence on the SUB: it tries again after a back-off
   (``backoff`` doubling to ``max_backoff``), for as long as it is asked
   for updates; after silence, on a new SUB socket (libzmq does not retry
   a connection whose CURVE handshake was refused, so a key trusted later
   would never be tried again).
3. It drops the kept messages the snapshot covers (same epoch, ``seq`` up
   to the snapshot's), then yields the rest and what follows.

Several endpoints (the feeds of dispatchers that share a database, where
only the leader publishes): it follows one; when a sync there fails
(silence, no snapshot) it tries the next, so after a takeover it finds
the new leader's feed (a new epoch: a new snapshot). The back-off grows
once every endpoint failed in a row.

A gap is a message whose ``seq`` is not the last plus 1 or whose epoch
changed (``missed`` counts the messages that never came, where the
numbers tell), a malformed message (also counted in ``malformed``), or
silence longer than ``timeout``. Each is counted in ``gaps`` and answered
with a new snapshot. Beats are not yielded.

Memory is bounded: the SUB's RCVHWM (``receive_hwm`` messages of at most
``MAX_ITEMS`` items; libzmq drops beyond it, which shows as a gap), the
buffer while a snapshot is awaited, ``MAX_FEED_BYTES`` per message
(libzmq's MAXMSGSIZE cuts a bigger one off).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any, cast

import zmq
import zmq.asyncio

from narwhal.config import SubscriberCurve
from narwhal.errors import ProtocolError
from narwhal.mesh.feed import (
    MAX_FEED_BYTES,
    SNAPSHOT_REQUEST,
    Snapshot,
    Update,
    decode_snapshot,
    decode_update,
    snapshot_endpoint,
)
from narwhal.mesh.replica import Replica
from narwhal.mesh.transport import pin_curve, send_now
from narwhal.quietlog import QuietLog

__all__ = ["Replica", "Subscriber"]

log = logging.getLogger(__name__)

_BEAT = b"beat"


class _Resync(Exception):
    """The snapshot under way cannot be used: start again (after a back-off)."""


class _Silent(_Resync):
    """The SUB heard nothing: start again on a new socket."""


class Subscriber:
    """Follows one dispatcher's metrics feed (``tcp://HOST:PORT``)."""

    def __init__(
        self,
        endpoint: str | Sequence[str],
        *,
        curve: SubscriberCurve | None = None,
        context: zmq.asyncio.Context | None = None,
        timeout: float = 3.0,
        buffer_limit: int = 1000,
        buffer_bytes: int = 64 << 20,
        receive_hwm: int = 1000,
        backoff: float = 0.1,
        max_backoff: float = 5.0,
    ) -> None:
        #: Every feed it may follow, and the one it follows now.
        self.endpoints = (endpoint,) if isinstance(endpoint, str) else tuple(endpoint)
        if not self.endpoints:
            raise ValueError("a subscriber needs a feed endpoint")
        self.endpoint = self.endpoints[0]
        self.snapshot_endpoint = snapshot_endpoint(self.endpoint)
        self.timeout = timeout
        self.gaps = 0
        self.missed = 0
        self.malformed = 0
        self.snapshots = 0
        #: Between a snapshot and the next gap.
        self.connected = False
        #: The epoch and the last ``seq`` taken in (the snapshot's, then each
        #: message's as it is checked).
        self.epoch = ""
        self.seq = 0
        self._curve = curve
        self._context = context
        self._buffer_limit = buffer_limit
        self._buffer_bytes = buffer_bytes
        self._hwm = receive_hwm
        self._backoff = backoff
        self._max_backoff = max_backoff
        self._quiet = QuietLog(log)
        self._ctx: zmq.asyncio.Context | None = None
        self._sub: zmq.asyncio.Socket | None = None
        self._kept_bytes = 0

    def status(self) -> dict[str, Any]:
        """The ``feed`` part of the backend's ``GET /api/state``."""
        return {
            "connected": self.connected,
            "endpoint": self.endpoint,
            "epoch": self.epoch,
            "seq": self.seq,
            "gaps": self.gaps,
            "missed": self.missed,
            "malformed": self.malformed,
            "snapshots": self.snapshots,
        }

    async def updates(self) -> AsyncIterator[Snapshot | Update]:
        """A ``Snapshot``, then ``Update``s in order; a new ``Snapshot`` after each gap.

        Never ends by itself: the caller stops it (``aclose``, or cancelling
        the task that iterates), which closes its sockets. One iteration at
        a time per subscriber.
        """
        if self._ctx is not None:
            raise RuntimeError("Subscriber.updates() is already being iterated")
        self._ctx = self._context or zmq.asyncio.Context()
        try:
            while True:
                snapshot, kept = await self._sync()
                yield snapshot
                updates, in_order = self._replay(kept)
                for update in updates:
                    yield update
                while in_order and (received := await self._receive()) is not None:
                    if received.topic != _BEAT:
                        yield received
                self.connected = False
        finally:
            self.connected = False
            self._close_sub()
            if self._context is None:
                self._ctx.term()
            self._ctx = None

    def _open_sub(self) -> zmq.asyncio.Socket:
        if self._sub is None:
            self._sub = self._socket(zmq.SUB)
            self._sub.setsockopt(zmq.RCVHWM, self._hwm)
            self._sub.setsockopt(zmq.SUBSCRIBE, b"")
            self._sub.connect(self.endpoint)
        return self._sub

    def _close_sub(self) -> None:
        if self._sub is not None:
            self._sub.close(0)
            self._sub = None

    # following

    async def _receive(self) -> Update | None:
        """The next message if it follows the last one; None: a gap (counted)."""
        sub = self._open_sub()
        while True:
            # poll, not a timeout around recv: a recv cancelled just after it
            # completed loses its message, and a process that got no CPU for a
            # while finds its messages waiting, which is not silence.
            if not await sub.poll(self.timeout * 1000) and not _waiting(sub):
                self._gap(f"silent for {self.timeout:g} s")
                return None
            try:
                frames = _recv_now(sub)
                break
            except zmq.Again:
                continue
        update = self._decode(frames)
        return update if update is not None and self._in_order(update) else None

    def _replay(self, kept: list[list[bytes]]) -> tuple[list[Update], bool]:
        """What was kept while the snapshot was awaited, past the snapshot, in order
        (beats left out); False: a gap among them (counted)."""
        updates: list[Update] = []
        for frames in kept:
            update = self._decode(frames)
            if update is None:
                return updates, False
            if update.epoch == self.epoch and update.seq <= self.seq:
                continue  # the snapshot has it
            if not self._in_order(update):
                return updates, False
            if update.topic != _BEAT:
                updates.append(update)
        return updates, True

    def _decode(self, frames: list[bytes]) -> Update | None:
        """The message; None if malformed (counted, and a gap)."""
        try:
            return decode_update(frames)
        except ProtocolError as e:
            self.malformed += 1
            self._gap(f"malformed message: {e}")
            return None

    def _in_order(self, update: Update) -> bool:
        if update.epoch == self.epoch and update.seq == self.seq + 1:
            self.seq = update.seq
            return True
        if update.epoch != self.epoch:
            self.missed += max(update.seq - 1, 0)
            self._gap(f"new epoch {update.epoch} (the dispatcher restarted)")
        else:
            self.missed += max(update.seq - self.seq - 1, 0)
            self._gap(f"message {update.seq} after {self.seq}")
        return False

    def _gap(self, why: str) -> None:
        self.gaps += 1
        self.connected = False
        self._quiet.warning(self.endpoint, "metrics feed %s: %s; re-syncing", self.endpoint, why)

    # syncing

    async def _sync(self) -> tuple[Snapshot, list[list[bytes]]]:
        """A snapshot and the messages kept since it was asked for (module docstring)."""
        delay = self._backoff
        failed = 0
        while True:
            try:
                return await self._try_sync(self._open_sub())
            except _Silent as e:
                # libzmq does not reconnect a client whose CURVE handshake was
                # refused (measured, 4.3.5): a new socket makes a new attempt.
                self._close_sub()
                self._quiet.warning(self.endpoint, "metrics feed %s: %s", self.endpoint, e)
            except _Resync as e:
                self._quiet.warning(self.endpoint, "metrics feed %s: %s", self.endpoint, e)
            failed += 1
            if len(self.endpoints) > 1:
                self._next_endpoint()
            if failed % len(self.endpoints) == 0:
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._max_backoff)

    def _next_endpoint(self) -> None:
        """Follow the next feed (another dispatcher of the installation)."""
        self._close_sub()
        at = self.endpoints.index(self.endpoint)
        self.endpoint = self.endpoints[(at + 1) % len(self.endpoints)]
        self.snapshot_endpoint = snapshot_endpoint(self.endpoint)

    async def _try_sync(self, sub: zmq.asyncio.Socket) -> tuple[Snapshot, list[list[bytes]]]:
        if not await sub.poll(self.timeout * 1000):
            raise _Silent(f"nothing heard for {self.timeout:g} s (not up, or our key refused?)")
        with contextlib.suppress(zmq.Again):
            while True:  # heard before the request: older than the snapshot
                _recv_now(sub)
        dealer = self._socket(zmq.DEALER)
        try:
            dealer.connect(self.snapshot_endpoint)
            # A DEALER that connects queues at once; the send completes at once too.
            send_now(dealer, [SNAPSHOT_REQUEST])
            reply, kept = await self._await_reply(dealer, sub)
        finally:
            dealer.close(0)
        try:
            epoch, seq, snapshot = decode_snapshot(reply)
        except ProtocolError as e:
            self.malformed += 1
            raise _Resync(f"malformed snapshot: {e}") from None
        self.snapshots += 1
        self.epoch, self.seq, self.connected = epoch, seq, True
        return snapshot, kept

    async def _await_reply(
        self, dealer: zmq.asyncio.Socket, sub: zmq.asyncio.Socket
    ) -> tuple[list[bytes], list[list[bytes]]]:
        """The snapshot reply, and the SUB's messages meanwhile, undecoded (the snapshot
        will tell which are needed): ``buffer_limit`` messages, ``buffer_bytes`` at most."""
        kept: list[list[bytes]] = []
        self._kept_bytes = 0
        poller = zmq.asyncio.Poller()
        poller.register(dealer, zmq.POLLIN)
        poller.register(sub, zmq.POLLIN)
        deadline = time.monotonic() + self.timeout
        while (left := deadline - time.monotonic()) > 0:
            ready = dict(await poller.poll(left * 1000))
            if sub in ready:
                self._keep(sub, kept)
            if dealer in ready:
                return await dealer.recv_multipart(), kept
        if _waiting(dealer):  # it came while this process had no CPU
            self._keep(sub, kept)
            return _recv_now(dealer), kept
        raise _Resync(f"no snapshot from {self.snapshot_endpoint} within {self.timeout:g} s")

    def _keep(self, sub: zmq.asyncio.Socket, kept: list[list[bytes]]) -> None:
        with contextlib.suppress(zmq.Again):
            while True:
                kept.append(_recv_now(sub))
                self._kept_bytes += sum(len(part) for part in kept[-1])
                if len(kept) > self._buffer_limit or self._kept_bytes > self._buffer_bytes:
                    self.gaps += 1
                    self.missed += len(kept)
                    raise _Resync(
                        f"more than {self._buffer_limit} messages or {self._buffer_bytes} bytes"
                        " before the snapshot"
                    )

    def _socket(self, kind: int) -> zmq.asyncio.Socket:
        assert self._ctx is not None  # noqa: S101 - only while updates() runs
        sock = self._ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_FEED_BYTES + 1024)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, int(self._max_backoff * 1000))
        if "[" in self.endpoint:
            sock.setsockopt(zmq.IPV6, 1)
        if self._curve is not None:
            pin_curve(sock, self._curve.public_key, self._curve.secret_key, self._curve.server_key)
        return sock


def _recv_now(sock: zmq.asyncio.Socket) -> list[bytes]:
    """A message that is waiting, or ``zmq.Again`` (an asyncio socket completes it at once)."""
    future = cast("asyncio.Future[list[bytes]]", sock.recv_multipart(zmq.NOBLOCK))
    return future.result()


def _waiting(sock: zmq.asyncio.Socket) -> bool:
    return bool(cast("int", sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN)
