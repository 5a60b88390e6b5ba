"""Run a dispatcher with its REST API (and, for ``narwhal up``, a local runner).

Optional parts, from the config: the AMQP consumer of commit events
(``amqp``), the commit status reporter (``status.forges``), mDNS discovery
of runners (``discovery``) and, for ``narwhal up``, the agent's webhook
endpoints next to the API (``webhooks``), which publish to RabbitMQ when
``amqp`` is set and hand events straight to the dispatcher otherwise.

Shutdown order: stop accepting HTTP requests, close the local runner (its
running jobs are cancelled and reported), let the dispatcher record those
reports, stop browsing mDNS, close the webhook publisher, the AMQP consumer
and the status reporter (which sends what it has for a few seconds), then
close the dispatcher.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import zmq.asyncio
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.types import ASGIApp

from narwhal.agent.app import Webhooks, webhook_routes
from narwhal.agent.events import Sink
from narwhal.agent.publisher import AmqpPublisher
from narwhal.config import DispatcherConfig, RunnerConfig
from narwhal.dispatcher.amqp import AmqpConsumer, DirectSink, Intake
from narwhal.dispatcher.api import Access, build_app
from narwhal.dispatcher.core import Dispatcher
from narwhal.dispatcher.discovered import DiscoveredRunners
from narwhal.dispatcher.guard import Guard, HostPolicy
from narwhal.dispatcher.status import StatusReporter
from narwhal.dispatcher.tokens import Tokens, prepare_data_dir
from narwhal.httpserver import listen, run_http
from narwhal.redact import redacted

log = logging.getLogger(__name__)

#: How long shutdown waits for a local runner's last reports.
DRAIN_SECONDS = 3.0


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

    sock = listen(dconf.http_host, dconf.http_port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    prepare_data_dir(dconf.data_dir)
    async with (
        Dispatcher(dconf, context=context) as dispatcher,
        contextlib.AsyncExitStack() as extras,
    ):
        app = await _app(dispatcher, dconf, f"http://{shown}:{port}", extras)
        app = Guard(app, HostPolicy.of(host, port, dconf.status.public_url))
        if dconf.discovery.enabled:
            # Closed by ``extras``, so browsing stops before the dispatcher does.
            await extras.enter_async_context(DiscoveredRunners(dconf.discovery, dispatcher.runners))
        runner = Runner(rconf, context=context) if rconf is not None else None
        if runner is not None:
            await runner.start()
            dispatcher.connect(runner.endpoint)
        # The socket already listens: a client that reads this line can connect.
        announce(
            f"narwhal {dconf.data_dir}: API on http://{shown}:{port}"
            f"{_extras_line(dconf)}{_executor_part(rconf)}"
        )
        try:
            await run_http(app, sock, stop)
        finally:
            if runner is not None:
                await runner.aclose()
                await _drain(dispatcher)


async def _app(
    dispatcher: Dispatcher, dconf: DispatcherConfig, url: str, extras: contextlib.AsyncExitStack
) -> ASGIApp:
    """Start the optional parts (closed by ``extras``) and build the HTTP app."""
    reporter = None
    if dconf.status.forges:
        reporter = StatusReporter(dconf.status, data_dir=dconf.data_dir, public_url=url)
        await extras.enter_async_context(reporter)
        dispatcher.add_listener(reporter.on_job)
    intake = Intake(dispatcher, reporter)
    if dconf.amqp is not None:
        await extras.enter_async_context(AmqpConsumer(dconf.amqp, intake))
    tokens = await Tokens.open(dispatcher, env_token=dconf.api_token)
    api = build_app(dispatcher, Access(tokens, public_read=dconf.public_read))
    if dconf.webhooks is None:
        return api
    sink: Sink = DirectSink(intake)
    if dconf.amqp is not None:
        sink = await extras.enter_async_context(AmqpPublisher(dconf.amqp))
    routes = webhook_routes(Webhooks(dconf.webhooks, sink))
    return Starlette(routes=[*routes, Mount("", app=api)])


def _extras_line(dconf: DispatcherConfig) -> str:
    # Each part starts with a space: the API URL must stay a word of its own.
    line = ""
    if dconf.webhooks is not None:
        forges = [f for f in ("github", "gitea", "gitlab") if dconf.webhooks.secret(f)]
        line += f" + webhooks at /webhooks/{{{','.join(forges)}}}"
    if dconf.amqp is not None:
        line += f" + commit events from queue {dconf.amqp.queue} at {redacted(dconf.amqp.url)}"
    if dconf.status.forges:
        line += f" + statuses to {', '.join(api.forge for api in dconf.status.forges)}"
    if dconf.discovery.enabled:
        line += f" + mDNS discovery on {', '.join(dconf.discovery.interfaces) or 'every interface'}"
    return line


def _executor_part(rconf: RunnerConfig | None) -> str:
    """How the embedded runner runs steps: a user's first job depends on it."""
    if rconf is None:
        return ""
    if rconf.executor != "docker":
        return " + local runner, executor local (steps run with sh, no container)"
    pull = "pulled when missing" if rconf.docker_pull == "missing" else "never pulled"
    return (
        f" + local runner, executor docker (steps without image: run in {rconf.docker_image};"
        f" images {pull})"
    )


async def _drain(dispatcher: Dispatcher) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(DRAIN_SECONDS):
            await dispatcher.drained()
