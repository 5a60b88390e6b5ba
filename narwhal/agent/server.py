"""Run the agent: webhook endpoints over HTTP, commit events out to RabbitMQ.

Shutdown order: stop accepting requests and let the ones in flight finish
(each waits at most the confirm timeout for the broker), then close the
publisher's channel and connection.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

from narwhal import __version__
from narwhal.agent.app import Webhooks, build_app, count_webhooks
from narwhal.agent.publisher import AmqpPublisher
from narwhal.config import AgentConfig
from narwhal.httpserver import listen, run_http
from narwhal.metrics import Registry
from narwhal.redact import redacted


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def serve_agent(
    config: AgentConfig, *, stop: asyncio.Event, announce: Callable[[str], None]
) -> None:
    """Serve webhooks until ``stop`` is set."""
    sock = listen(config.http_host, config.http_port)
    with sock:
        await _serve(config, sock, stop, announce)


async def _serve(
    config: AgentConfig,
    sock: socket.socket,
    stop: asyncio.Event,
    announce: Callable[[str], None],
) -> None:
    async with AmqpPublisher(config.amqp) as publisher:
        metrics = Registry()
        metrics.daemon_info(__version__)
        webhooks = Webhooks(config.webhooks, publisher, on_answer=count_webhooks(metrics))

        def health() -> dict[str, object]:
            return {"broker": "connected" if publisher.connected else "disconnected"}

        app = build_app(webhooks, health=health, metrics=metrics)
        enabled = config.webhooks.forges()
        announce(
            f"narwhal agent: webhooks on {url_of(sock)} ({', '.join(enabled)}),"
            f" queue {config.amqp.queue} at {redacted(config.amqp.url)}"
        )
        await run_http(app, sock, stop, grace=config.amqp.confirm_timeout + 1)
