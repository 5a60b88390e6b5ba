"""Serving an ASGI app with uvicorn inside a daemon's own event loop.

Shared by the dispatcher's API, the agent's webhooks and the dashboard (a
leaf module: the agent and the backend never import the dispatcher).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import uvicorn
from starlette.types import ASGIApp

#: Seconds requests in flight still get once shutdown is hurried.
HURRIED_GRACE = 1.0
#: Largest websocket message a browser may send (the dashboard's are tiny).
WS_MAX_SIZE = 64 * 1024


class HttpServer(uvicorn.Server):
    """uvicorn without its own signal handling: the entrypoint owns signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: any free port); one-line errors."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say
    # they are TCP, and without it every keep-alive answer waits ~40 ms for
    # the peer's delayed ACK (Nagle).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    sock.listen(1024)
    sock.setblocking(False)
    return sock


async def run_http(
    app: ASGIApp,
    sock: socket.socket,
    stop: asyncio.Event,
    *,
    grace: float | None = None,
    closing: Callable[[], Awaitable[None]] | None = None,
    hurry: asyncio.Event | None = None,
) -> None:
    """Serve ``app`` on ``sock`` until ``stop`` is set, then shut down in order.

    New connections are refused at once (idle keep-alive ones are closed);
    ``closing()`` runs next, while requests in flight still go on (it is
    where a caller ends its long-lived responses, such as log streams);
    then requests still in flight get ``grace`` seconds (None: as long as
    they take), cut to ``HURRIED_GRACE`` when ``hurry`` is set, before they
    are cancelled.
    ``closing`` runs even when the server failed.
    """
    # wsproto, named: the one websocket implementation the project installs
    # and tests (uvicorn's "auto" would switch to another one if installed).
    config = uvicorn.Config(
        app,
        log_level="warning",
        lifespan="off",
        access_log=False,
        ws="wsproto",
        ws_max_size=WS_MAX_SIZE,
    )
    server = HttpServer(config)
    http = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await _first(http, stop)
    finally:
        server.should_exit = True
        try:
            if closing is not None:
                await closing()
            await _first(http, hurry, timeout=grace)
            if not http.done() and hurry is not None and hurry.is_set():
                # A moment still for responses that are ending (a log stream's last line).
                await _first(http, None, timeout=HURRIED_GRACE)
        finally:
            if not http.done():
                _abort(server)
            await http


async def _first(
    task: asyncio.Task[None], event: asyncio.Event | None, *, timeout: float | None = None
) -> None:
    """Until ``task`` ends, ``event`` is set (None: never) or ``timeout`` seconds pass."""
    waits: set[asyncio.Future[Any]] = {task}
    if event is not None:
        waits.add(asyncio.ensure_future(event.wait()))
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waits - {task}:
            waiter.cancel()


def _abort(server: uvicorn.Server) -> None:
    """Stop waiting for requests in flight: cancel them, drop their connections."""
    server.force_exit = True
    for task in list(server.server_state.tasks):
        task.cancel()
    for connection in list(server.server_state.connections):
        transport = getattr(connection, "transport", None)
        if transport is not None:
            transport.abort()
