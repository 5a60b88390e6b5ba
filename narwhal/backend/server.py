"""One backend: the feed's subscriber, the dispatcher's API client, sessions, sockets, the app.

``Backend(config, host=..., port=...)`` is an async context manager; its
``app`` is the guarded ASGI app to serve on ``host:port`` (the names it
answers to come from there). Its loops run under ``narwhal.supervise``: the
feed (each ``Snapshot`` and ``Update`` goes to the ``Replica``, then to
``Live``), and the re-check of the sessions whose browsers have a socket
open, so a token revoked on the dispatcher closes them within a minute.

Shutdown order: ``closing`` (while the HTTP server still runs) closes
every websocket and stops the log followers; ``aclose`` then stops the
feed and the session loop, and closes the API client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

import zmq.asyncio
from starlette.types import ASGIApp

from narwhal.backend.access import Access
from narwhal.backend.app import STATIC, build_app
from narwhal.backend.history import History
from narwhal.backend.hub import Hub
from narwhal.backend.live import Live
from narwhal.backend.logs import Followers
from narwhal.backend.sessions import RECHECK, Sessions
from narwhal.backend.upstream import Upstream
from narwhal.backend.websocket import Sockets
from narwhal.config import BackendConfig
from narwhal.httpguard import HostPolicy
from narwhal.mesh.feed import Snapshot
from narwhal.mesh.subscriber import Replica, Subscriber
from narwhal.supervise import spawn

log = logging.getLogger(__name__)


class Backend:
    """The dashboard's parts, started and closed in order (module docstring)."""

    def __init__(
        self,
        config: BackendConfig,
        *,
        host: str,
        port: int,
        context: zmq.asyncio.Context | None = None,
        sessions: Sessions | None = None,
        static: Path = STATIC,
    ) -> None:
        self.config = config
        self.upstream = Upstream(config.api)
        self.sessions = sessions or Sessions()
        self.access = Access(
            self.sessions,
            self.upstream,
            public_read=config.public_read,
            api_token=config.api_token,
        )
        self.hub = Hub(config.socket_queue)
        self.replica = Replica()
        self.subscriber = Subscriber(
            (config.metrics, *config.other_feeds),
            curve=config.curve,
            context=context,
            timeout=config.feed_timeout,
        )
        self.followers = Followers(self.upstream, self.hub, config.api_token)
        self.live = Live(self.hub, self.replica, self.subscriber.status, self.followers)
        self.app: ASGIApp = build_app(
            access=self.access,
            history=History(self.access, self.upstream, self.live),
            live=self.live,
            sockets=Sockets(self.access, self.hub, self.live, self.followers),
            policy=HostPolicy.of(host, port),
            static=static,
        )
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    async def __aenter__(self) -> Backend:
        spawn(self._tasks, "metrics feed", self._follow_feed)
        spawn(self._tasks, "session checks", self._check_sessions)
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def _follow_feed(self) -> None:
        async for event in self.subscriber.updates():
            self.replica.apply(event)
            if isinstance(event, Snapshot):
                self.live.on_snapshot()
            else:
                self.live.on_update(event)

    async def _check_sessions(self) -> None:
        """Close the sockets of sessions that ended or whose token the dispatcher refuses."""
        while True:
            await asyncio.sleep(min(RECHECK, self.sessions.recheck))
            for session in self.hub.sessions():
                ended = not self.sessions.alive(session)
                if ended or (
                    self.sessions.due(session) and not await self.access.still_good(session)
                ):
                    self.hub.sign_out(session)

    async def closing(self) -> None:
        """Close every websocket and stop the log followers (the HTTP server still runs)."""
        self.hub.close_all("backend stopping")
        await self.followers.aclose()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self.closing()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.upstream.aclose()
