"""Serving an ASGI app with uvicorn inside a daemon's own event loop.

Shared by the dispatcher's API and the agent's webhooks (a leaf module: the
agent never imports the dispatcher).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator

import uvicorn
from starlette.types import ASGIApp


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
    app: ASGIApp, sock: socket.socket, stop: asyncio.Event, *, grace: float | None = None
) -> None:
    """Serve ``app`` on ``sock`` until ``stop`` is set; requests in flight finish.

    ``grace``: seconds they get (None: as long as they take).
    """
    config = uvicorn.Config(
        app,
        log_level="warning",
        lifespan="off",
        access_log=False,
        timeout_graceful_shutdown=None if grace is None else max(1, int(grace + 0.999)),
    )
    server = HttpServer(config)
    http = asyncio.create_task(server.serve(sockets=[sock]))
    stopped = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({http, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        server.should_exit = True
        await http
