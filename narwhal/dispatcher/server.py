"""Run a dispatcher with its REST API (and, for ``narwhal up``, a local runner).

Shutdown order: stop accepting HTTP requests, close the local runner (its
running jobs are cancelled and reported), let the dispatcher record those
reports, then close the dispatcher.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Iterator

import uvicorn
import zmq.asyncio

from narwhal.config import DispatcherConfig, RunnerConfig
from narwhal.dispatcher.api import build_app
from narwhal.dispatcher.core import Dispatcher

log = logging.getLogger(__name__)

#: How long shutdown waits for a local runner's last reports.
DRAIN_SECONDS = 3.0


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the entrypoint owns signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


async def serve(
    dconf: DispatcherConfig,
    rconf: RunnerConfig | None,
    *,
    context: zmq.asyncio.Context,
    stop: asyncio.Event,
    announce: Callable[[str], None],
) -> None:
    """Serve until ``stop`` is set."""
    from narwhal.runner.runner import Runner  # only ``narwhal up`` embeds a runner

    sock = _listen(dconf.http_host, dconf.http_port)
    host, port = sock.getsockname()[:2]
    async with Dispatcher(dconf, context=context) as dispatcher:
        runner = Runner(rconf, context=context) if rconf is not None else None
        if runner is not None:
            await runner.start()
            dispatcher.connect(runner.endpoint)
        config = uvicorn.Config(
            build_app(dispatcher, token=dconf.api_token),
            log_level="warning",
            lifespan="off",
            access_log=False,
        )
        server = _Server(config)
        http = asyncio.create_task(server.serve(sockets=[sock]))
        shown = f"[{host}]" if ":" in host else host
        announce(f"narwhal {dconf.data_dir}: API on http://{shown}:{port}")
        stopped = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({http, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            server.should_exit = True
            await http
            if runner is not None:
                await runner.aclose()
                await _drain(dispatcher)


async def _drain(dispatcher: Dispatcher) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(DRAIN_SECONDS):
            await dispatcher.drained()
