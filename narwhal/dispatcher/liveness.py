"""Which links are alive (Paranoid Pirate), and what the socket monitor says about them.

Any frame counts as a sign of life; heartbeats go both ways once per
interval; a ready link silent for ``dead_after`` (or for one and a half
intervals after libzmq saw its connection drop) is lost and reconnected; a
link that never got ready is reconnected with a doubling back-off. The
monitor notes dropped connections and, with CurveZMQ, refused handshakes;
the allow-list is looked at again on the same beat (``MeshAuth.reload``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import zmq
from zmq.utils.monitor import parse_monitor_message

from narwhal.config import MeshConfig
from narwhal.dispatcher.auth import HANDSHAKE_EVENTS, handshake_failure
from narwhal.dispatcher.connections import Connections
from narwhal.dispatcher.links import BACKOFF_MAX, Link
from narwhal.dispatcher.mesh import LinkState, Source
from narwhal.dispatcher.streams import unanswered
from narwhal.mesh import protocol as p

log = logging.getLogger(__name__)


def silence(link: Link, now: float, config: MeshConfig) -> str:
    """Why a link counts as dead now, or "" while it is alive."""
    quiet = now - link.last_seen
    if quiet > config.dead_after:
        return f"silent for {quiet:.1f}s"
    # After a dropped connection, one and a half intervals without a
    # frame is enough: a live runner's heartbeat would have arrived.
    dropped = link.disconnected_at
    if dropped is not None and now - dropped > 1.5 * config.heartbeat_interval:
        return f"connection closed and silent for {quiet:.1f}s"
    return ""


class Watchdog:
    """The liveness and monitor loops of one pool's connections.

    ``lost(link, reason)`` reports a link that went (its jobs are the
    pool's to release); ``settle()`` reports the refusals made meanwhile.
    """

    def __init__(
        self,
        conns: Connections,
        lost: Callable[[Link, str], Awaitable[None]],
        settle: Callable[[], Awaitable[None]],
    ) -> None:
        self._conns = conns
        self._config = conns.config
        self._lost = lost
        self._settle = settle
        events = zmq.EVENT_DISCONNECTED | (HANDSHAKE_EVENTS if conns.auth is not None else 0)
        self._monitor = conns.router.monitor(events)

    async def liveness_loop(self) -> None:
        # Checked twice per interval, so a deadline is missed by half an
        # interval at most; heartbeats still go out once per interval.
        while True:
            await asyncio.sleep(self._config.heartbeat_interval / 2)
            await self.check_liveness(time.monotonic())
            await self.check_trust(time.monotonic())

    async def check_trust(self, now: float) -> None:
        """Apply a changed allow-list: drop revoked keys' links, retry refused endpoints."""
        auth = self._conns.auth
        if auth is None or not await auth.reload(now):
            return
        # No await until the refusals are settled: DiscoveredRunners sees
        # the new generation and must find them cleared.
        retry = self._conns.retry_key_refused()
        for link in list(self._conns.links.values()):
            if auth.revoked(link):
                self._conns.refuse_link(link, f"the key of runner {link.runner_id} was revoked")
        for endpoint, source in retry.items():
            if source == Source.STATIC:  # mDNS ones: DiscoveredRunners looks at them again
                self._conns.connect(endpoint, source)
        await self._settle()

    async def check_liveness(self, now: float) -> None:
        beat = p.Heartbeat(session=self._conns.session)
        for link in list(self._conns.links.values()):
            silent = silence(link, now, self._config)
            if link.state == LinkState.READY and silent:
                reason = f"runner {link.runner_id} lost: {silent}"
                log.warning("%s", reason)
                self._conns.reopen(link)
                await self._lost(link, reason)
            elif link.state == LinkState.READY:
                if now - link.last_beat >= self._config.heartbeat_interval:
                    link.last_beat = now
                    self._conns.send(link, beat)
                for frame in unanswered(link, now, self._config.dead_after):
                    self._conns.send_frame(link, frame)
            elif now - link.connected_at > max(link.backoff, self._config.dead_after):
                self._conns.reopen(link, min(link.backoff * 2, BACKOFF_MAX))

    async def monitor_loop(self) -> None:
        """Note connections that drop (``silence`` then waits less) and failed handshakes."""
        while True:
            event = parse_monitor_message(await self._monitor.recv_multipart())
            endpoint = event["endpoint"].decode(errors="replace")
            if event["event"] & HANDSHAKE_EVENTS:
                await self._handshake_failed(endpoint, event["event"], event["value"])
                continue
            for link in self._conns.links.values():
                if link.endpoint == endpoint and link.state == LinkState.READY:
                    link.disconnected_at = time.monotonic()

    async def _handshake_failed(self, endpoint: str, event: int, value: int) -> None:
        """Stop libzmq retrying a peer that CURVE refused (it would, every 100 ms, forever)."""
        reason = handshake_failure(event, value)
        if not reason:
            self._conns.quiet.warning(
                endpoint, "runner %s: handshake failed (%#x)", endpoint, value
            )
            return
        auth = self._conns.auth
        for link in list(self._conns.links.values()):
            if link.endpoint != endpoint:
                continue
            # A refused key is told apart by alias: the event may be a
            # dropped connection's, which libzmq retries and ZAP turns away.
            if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH and not (
                auth is not None and auth.denied(link.alias)
            ):
                continue
            self._conns.refuse_link(link, reason, tell=False)  # no handshake: no channel
        await self._settle()
