"""The browsers' websockets: one bounded outgoing queue each, filled without waiting.

Everything a browser is sent (the state, every feed update, its followed
log) is put on its socket's queue at once, by whoever has it to say (the
feed loop, a log follower); one writer task per socket takes it from
there at the pace the browser reads. So a browser that stops reading
(a laptop asleep, a tab frozen) holds up nobody: its queue fills, and once
it holds ``limit`` messages the socket is closed and forgotten. The page
reconnects when it wakes up and gets the state afresh. A message is
encoded once, however many sockets it goes to.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from narwhal.backend.sessions import Session

log = logging.getLogger(__name__)

#: Messages waiting for one browser before its socket is closed.
QUEUE_LIMIT = 1000


def encode(message: dict[str, Any]) -> str:
    """A message as the JSON text frame that carries it."""
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False)


class Peer:
    """One browser's websocket: what waits to be sent to it, and what it follows."""

    def __init__(
        self, send: Callable[[str], Awaitable[None]], session: Session | None, limit: int
    ) -> None:
        self._send = send
        self.session = session
        self.limit = limit
        self.following: int | None = None
        self._queue: deque[str] = deque()
        self._ready = asyncio.Event()
        #: Set once the socket must close (too slow, signed out, backend closing).
        self.closed = asyncio.Event()
        self.why = ""

    def push(self, text: str) -> bool:
        """Queue a message; False if the queue is full (the caller closes the socket)."""
        if self.closed.is_set():
            return True
        if len(self._queue) >= self.limit:
            return False
        self._queue.append(text)
        self._ready.set()
        return True

    def close(self, why: str) -> None:
        if not self.closed.is_set():
            self.why = why
            self.closed.set()

    async def pump(self) -> None:
        """Send what is queued, in order, as the browser takes it (until cancelled)."""
        while True:
            await self._ready.wait()
            while self._queue:
                await self._send(self._queue.popleft())
            self._ready.clear()


class Hub:
    """Every open socket; fan-out of one message to all of them."""

    def __init__(self, limit: int = QUEUE_LIMIT) -> None:
        self.limit = limit
        self.peers: set[Peer] = set()
        #: Sockets closed because their browser did not read (for /api/state and tests).
        self.dropped = 0

    def join(self, send: Callable[[str], Awaitable[None]], session: Session | None) -> Peer:
        peer = Peer(send, session, self.limit)
        self.peers.add(peer)
        return peer

    def leave(self, peer: Peer) -> None:
        self.peers.discard(peer)

    def send(self, peer: Peer, text: str) -> None:
        """One message to one socket; a socket whose queue is full is closed."""
        if peer.push(text):
            return
        self.dropped += 1
        self.peers.discard(peer)
        log.info(
            "closing a websocket whose browser does not read (%d messages waiting)", peer.limit
        )
        peer.close("too slow: the browser did not read its messages")

    def broadcast(self, text: str) -> None:
        for peer in list(self.peers):
            self.send(peer, text)

    def sign_out(self, session: Session) -> None:
        """Close the sockets of a session that ended (signed out, token revoked)."""
        for peer in list(self.peers):
            if peer.session is session:
                self.peers.discard(peer)
                peer.close("signed out")

    def sessions(self) -> set[Session]:
        return {peer.session for peer in self.peers if peer.session is not None}

    def close_all(self, why: str) -> None:
        for peer in list(self.peers):
            peer.close(why)
        self.peers.clear()
