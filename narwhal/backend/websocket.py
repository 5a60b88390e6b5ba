"""``/ws``: the live feed for one browser, and the log it follows (docs/backend.md).

The handshake has passed the guard (Host, and an ``Origin`` that is this
backend's own, so another site's page cannot open it with the viewer's
cookie); it still needs a session, or ``--public-read``. Then the browser
gets ``state`` and every update after it, through its ``hub.Peer``.

What the browser sends is checked before anything is done with it: a text
frame of at most ``MAX_MESSAGE`` bytes, a JSON object of a known ``type``,
a job id that is an integer in range. Anything else is answered with an
``error`` message and otherwise ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from narwhal.backend.access import Access, Viewer
from narwhal.backend.history import MAX_ID
from narwhal.backend.hub import Hub, Peer, encode
from narwhal.backend.live import Live
from narwhal.backend.logs import Followers
from narwhal.httpguard import JsonError, parse_json

log = logging.getLogger(__name__)

#: Largest message a browser may send (uvicorn refuses larger frames itself too).
MAX_MESSAGE = 64 * 1024
#: Seconds a closing socket gets to take its close frame.
CLOSE_GRACE = 1.0
#: Close codes: the browser was too slow or was signed out (4000-4999: the application's).
POLICY = 1008
GOING_AWAY = 1001


class BadMessage(ValueError):
    """A browser's message that is not one of ours; the text goes back to it."""


def parse_message(text: str | None) -> tuple[str, int | None]:
    """``(type, job_id)`` of a browser's message, or BadMessage."""
    if text is None:
        raise BadMessage("send JSON text messages")
    if len(text) > MAX_MESSAGE:
        raise BadMessage(f"message larger than {MAX_MESSAGE} bytes")
    try:
        message = parse_json(text, max_depth=4)
    except JsonError as e:
        raise BadMessage(str(e)) from None
    if not isinstance(message, dict):
        raise BadMessage("a message is a JSON object")
    kind = message.get("type")
    if kind == "unfollow":
        return "unfollow", None
    if kind != "follow":
        raise BadMessage(f"unknown message type {str(kind)[:40]!r}; follow or unfollow")
    job_id = message.get("job_id")
    if type(job_id) is not int or not 1 <= job_id <= MAX_ID:
        raise BadMessage(f"job_id: expected an integer from 1 to {MAX_ID}")
    return "follow", job_id


class Sockets:
    """The ``/ws`` endpoint of one backend."""

    def __init__(self, access: Access, hub: Hub, live: Live, followers: Followers) -> None:
        self.access = access
        self.hub = hub
        self.live = live
        self.followers = followers

    async def endpoint(self, websocket: WebSocket) -> None:
        viewer = await self.access.viewer(websocket)
        if viewer is None:
            await websocket.close(code=POLICY)  # before accept: the handshake gets a 403
            return
        await websocket.accept()
        peer = self.hub.join(websocket.send_text, viewer.session)
        # Nothing awaited between join and state: no update falls between the two.
        self.hub.send(peer, self.live.state_message())
        try:
            await self._serve(websocket, peer, viewer)
        finally:
            self.followers.unfollow(peer)
            self.hub.leave(peer)
            await _close(websocket, peer)

    async def _serve(self, websocket: WebSocket, peer: Peer, viewer: Viewer) -> None:
        """Until the browser leaves, its socket is closed, or either side fails."""
        tasks = [
            asyncio.create_task(peer.pump(), name="ws-pump"),
            asyncio.create_task(self._read(websocket, peer, viewer), name="ws-read"),
            asyncio.create_task(peer.closed.wait(), name="ws-closed"),
        ]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            ended = await asyncio.gather(*tasks, return_exceptions=True)
        for outcome in ended:
            if isinstance(outcome, OSError | WebSocketDisconnect):
                peer.close("gone")  # the browser went away while it was sent something
            elif isinstance(outcome, Exception):
                log.error("websocket: %r", outcome, exc_info=outcome)

    async def _read(self, websocket: WebSocket, peer: Peer, viewer: Viewer) -> None:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                peer.close("gone")
                return
            self._handle(peer, viewer, message)

    def _handle(self, peer: Peer, viewer: Viewer, message: Mapping[str, Any]) -> None:
        try:
            kind, job_id = parse_message(message.get("text"))
        except BadMessage as e:
            self.hub.send(peer, encode({"type": "error", "error": str(e)}))
            return
        if kind == "unfollow" or job_id is None:
            self.followers.unfollow(peer)
            return
        refused = self.followers.follow(peer, job_id, viewer.token)
        if refused is not None:
            self.hub.send(peer, encode({"type": "error", "error": refused}))


async def _close(websocket: WebSocket, peer: Peer) -> None:
    """Say why, if the browser still listens; a browser that does not read is not waited for."""
    if peer.why == "gone":
        return
    code = GOING_AWAY if peer.why.startswith("backend") else POLICY
    with contextlib.suppress(TimeoutError, Exception):
        async with asyncio.timeout(CLOSE_GRACE):
            await websocket.close(code=code, reason=peer.why[:120])
