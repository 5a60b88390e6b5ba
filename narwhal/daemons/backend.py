"""``narwhal backend``, and the dashboard ``narwhal up`` serves on its own address.

Both are one ``backend.server.Backend`` (the feed's subscriber, the API
client, sessions, sockets) served by uvicorn in the daemon's loop.

Shutdown order (``stop``): refuse new HTTP connections; close every
websocket and stop the log followers (``Backend.closing``); give requests
in flight ``HTTP_GRACE`` (``hurry``, the second signal: cut short); stop
the feed and close the API client.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import socket
from collections.abc import Callable
from pathlib import Path

import zmq.asyncio

from narwhal.backend.server import Backend
from narwhal.config import DEFAULT_BACKEND_PORT, BackendConfig
from narwhal.daemons.signals import two_signals
from narwhal.httpserver import listen, run_http

log = logging.getLogger(__name__)

#: How long requests in flight get once the websockets are closed.
HTTP_GRACE = 5.0

Announce = Callable[[str], None]


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def backend_main(bconf: BackendConfig, announce: Announce) -> None:
    """``narwhal backend``, until a signal."""
    stop, hurry = two_signals()
    context = zmq.asyncio.Context()
    try:
        sock = listen(bconf.http_host, bconf.http_port)
        await serve_backend(bconf, sock, context=context, stop=stop, hurry=hurry, announce=announce)
    finally:
        context.term()


async def serve_backend(
    bconf: BackendConfig,
    sock: socket.socket,
    *,
    context: zmq.asyncio.Context,
    stop: asyncio.Event,
    announce: Announce | None = None,
    hurry: asyncio.Event | None = None,
) -> None:
    """Serve the dashboard on ``sock`` (listening already) until ``stop`` is set."""
    host, port = sock.getsockname()[:2]
    try:
        backend = Backend(bconf, host=host, port=port, context=context)
    except BaseException:
        sock.close()
        raise
    async with backend:
        if announce is not None:
            announce(
                f"narwhal backend: dashboard on {url_of(sock)} + feed {bconf.metrics}"
                f" + API {bconf.api}{' + public read' if bconf.public_read else ''}"
            )
        await run_http(
            backend.app, sock, stop, grace=HTTP_GRACE, closing=backend.closing, hurry=hurry
        )


class Dashboard:
    """``narwhal up``'s dashboard: a backend served beside the API, stopped with it.

    A dashboard that fails is logged and leaves the rest of ``up`` running.
    """

    def __init__(
        self,
        bconf: BackendConfig,
        sock: socket.socket,
        context: zmq.asyncio.Context,
        stop: asyncio.Event | None = None,
    ) -> None:
        self.url = url_of(sock)
        self._bconf = bconf
        self._sock = sock
        self._context = context
        # ``up``'s own stop: the dashboard stops at the signal, while the API
        # and the runner drain, instead of adding its shutdown after theirs.
        self._stop = stop or asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Dashboard:
        serving = serve_backend(self._bconf, self._sock, context=self._context, stop=self._stop)
        self._task = asyncio.create_task(serving, name="dashboard")
        self._task.add_done_callback(_failed)
        return self

    async def __aexit__(self, *_: object) -> None:
        self._stop.set()
        if self._task is None:
            self._sock.close()
            return
        with contextlib.suppress(Exception):  # logged by _failed
            await self._task


def _failed(task: asyncio.Task[None]) -> None:
    """Say at once that the dashboard failed: the API and the runner go on without it."""
    if not task.cancelled() and task.exception() is not None:
        log.error("the dashboard failed: %s", task.exception(), exc_info=task.exception())


def dashboard_socket(host: str, port: int) -> socket.socket:
    """The dashboard's listening socket; the default port, when taken, gives way to a free one."""
    try:
        return listen(host, port)
    except OSError as e:
        if port != DEFAULT_BACKEND_PORT:
            raise
        log.warning("dashboard: %s; serving it on a free port instead", e)
        return listen(host, 0)


async def start_dashboard(
    bconf: BackendConfig | None,
    *,
    feed: str | None,
    api: str,
    token_file: Path,
    context: zmq.asyncio.Context,
    extras: contextlib.AsyncExitStack,
    stop: asyncio.Event | None = None,
) -> str:
    """``narwhal up``'s dashboard on ``up``'s own feed and API, read with the admin token.

    Returns the part of ``up``'s ready line that says where it is, with a
    sign-in link (the page takes the token from the fragment, which never
    leaves the browser); "" without a dashboard (or without a feed).
    """
    if bconf is None or feed is None:
        return ""
    try:
        token = (await asyncio.to_thread(token_file.read_text)).strip()
    except OSError as e:
        log.warning("no dashboard: cannot read the admin token: %s", e)
        return ""
    sock = dashboard_socket(bconf.http_host, bconf.http_port)
    bconf = dataclasses.replace(bconf, metrics=feed, api=api, api_token=token)
    board = await extras.enter_async_context(Dashboard(bconf, sock, context, stop))
    return f" + dashboard at {board.url}/#token={token}"
