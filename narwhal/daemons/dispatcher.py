"""``narwhal dispatcher`` and ``narwhal up``: the dispatcher, its API, and ``up``'s extras.

``up`` adds the agent's webhook endpoints next to the API (publishing to
RabbitMQ when ``amqp`` is set, else handing events straight to the
dispatcher), a runner in the same process, with the executor
``executors`` picks, and the dashboard on its own address
(``daemons.backend``), subscribed to ``up``'s own metrics feed.

Shutdown order (``stop``, the first SIGINT or SIGTERM): refuse new HTTP
connections (open log streams keep streaming); close the local runner (its
running jobs drain for ``--drain-timeout``, then are cancelled and
reported) and let the dispatcher record those reports (up to
``DRAIN_SECONDS``); end the log streams still open with a last line saying
why; give other requests in flight ``HTTP_GRACE``; close ``up``'s
dashboard (its websockets, its HTTP server, its feed subscriber); stop browsing mDNS,
close the webhook publisher, the AMQP consumer, the status reporter
(which sends what it has for a few seconds) and the metrics feed's
publisher, close the dispatcher; the
caller then releases the data directory's lock. ``hurry`` (the second
signal) cuts the waits short: no more draining, steps get SIGKILL at once,
requests in flight are cancelled; the jobs are still reported, so they end
``cancelled``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import zmq.asyncio
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.types import ASGIApp

from narwhal.agent.app import Webhooks, count_webhooks, webhook_routes
from narwhal.agent.publisher import AmqpPublisher
from narwhal.config import BackendConfig, DispatcherConfig, RunnerConfig
from narwhal.daemons.backend import start_dashboard
from narwhal.daemons.executors import resolved
from narwhal.daemons.signals import on, two_signals
from narwhal.dispatcher.amqp import DirectSink
from narwhal.dispatcher.api import Shutdown
from narwhal.dispatcher.core import Dispatcher
from narwhal.dispatcher.datadir import DataDirLock
from narwhal.dispatcher.discovered import DiscoveredRunners
from narwhal.dispatcher.guard import Guard, HostPolicy
from narwhal.dispatcher.pool import RunnerPool
from narwhal.dispatcher.server import (
    DRAIN_SECONDS,
    HTTP_GRACE,
    Served,
    drain,
    parts_line,
    serve_parts,
)
from narwhal.dispatcher.store.open import store_for, store_url
from narwhal.dispatcher.tokens import TOKEN_FILE
from narwhal.events import Sink
from narwhal.httpserver import listen, run_http
from narwhal.runner.runner import Runner, executor_for

__all__ = ["DRAIN_SECONDS", "HTTP_GRACE", "dispatcher_main", "serve"]

Announce = Callable[[str], None]


def build(dconf: DispatcherConfig, context: zmq.asyncio.Context) -> Dispatcher:
    """The dispatcher ``up`` and ``dispatcher`` run: the SQLite store, the ZeroMQ mesh.

    The caller owns ``context`` and terminates it after the dispatcher closed.
    """
    return Dispatcher(dconf, store=store_for(store_url(dconf)), mesh=mesh_for(dconf, context))


def mesh_for(dconf: DispatcherConfig, context: zmq.asyncio.Context) -> RunnerPool:
    return RunnerPool(
        dconf.mesh, context, curve=dconf.curve, max_capacity=dconf.max_runner_capacity
    )


async def dispatcher_main(
    dconf: DispatcherConfig,
    rconf: RunnerConfig | None,
    lock: DataDirLock,
    announce: Announce,
    dashboard: BackendConfig | None = None,
) -> None:
    """``narwhal dispatcher`` (``rconf`` None) or ``narwhal up``, until a signal."""
    stop, hurry = two_signals()
    if rconf is not None:
        rconf = await resolved(rconf)
    ctx = zmq.asyncio.Context()
    try:
        await serve(
            dconf,
            rconf,
            context=ctx,
            lock=lock,
            stop=stop,
            hurry=hurry,
            announce=announce,
            dashboard=dashboard,
        )
    finally:
        ctx.term()


async def serve(
    dconf: DispatcherConfig,
    rconf: RunnerConfig | None,
    *,
    context: zmq.asyncio.Context,
    lock: DataDirLock,
    stop: asyncio.Event,
    announce: Announce,
    hurry: asyncio.Event | None = None,
    dashboard: BackendConfig | None = None,
) -> None:
    """Serve until ``stop`` is set, then shut down (``hurry``: at once; module docstring).

    ``lock``: the data dir's, held by the caller (``datadir.hold``) since
    before anything was written into the data dir. ``rconf``: ``narwhal
    up``'s embedded runner, its executor already resolved. ``dashboard``:
    ``up``'s dashboard, on its own address (``daemons.backend``).
    """
    sock = listen(dconf.http_host, dconf.http_port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}"
    lock.record(url)
    hurry = hurry or asyncio.Event()
    shutdown = Shutdown()
    pool = mesh_for(dconf, context)
    async with (
        Dispatcher(dconf, store=store_for(store_url(dconf)), mesh=pool) as dispatcher,
        contextlib.AsyncExitStack() as extras,
    ):
        served = await serve_parts(
            dispatcher, dconf, url, extras, shutdown, metrics_fallback=rconf is not None
        )
        app = await _with_webhooks(served, dconf, extras)
        app = Guard(app, HostPolicy.of(host, port, dconf.status.public_url))
        if dconf.discovery.enabled:
            # Closed by ``extras``, so browsing stops before the dispatcher does.
            await extras.enter_async_context(DiscoveredRunners(dconf.discovery, pool))
        runner = None
        if rconf is not None:
            # In ``extras`` too: closed (a no-op by then) if ``run_http`` never ran.
            runner = Runner(rconf, context=context, executor=executor_for(rconf))
            await extras.enter_async_context(runner)
            dispatcher.mesh.connect(runner.endpoint)
        board = await start_dashboard(
            dashboard,
            feed=served.publisher.endpoint if served.publisher is not None else None,
            api=url,
            token_file=dconf.data_dir / TOKEN_FILE,
            context=context,
            extras=extras,
            stop=stop,
        )
        # The socket already listens: a client that reads this line can connect.
        announce(
            f"narwhal {dconf.data_dir}: API on {url}{parts_line(dconf, served.publisher)}"
            f"{_executor_part(rconf)}{board}"
        )

        async def closing() -> None:
            shutdown.begun.set()
            if runner is not None:
                await _close_runner(runner, dispatcher, hurry)
            shutdown.ending.set()

        await run_http(app, sock, stop, grace=HTTP_GRACE, closing=closing, hurry=hurry)


async def _with_webhooks(
    served: Served, dconf: DispatcherConfig, extras: contextlib.AsyncExitStack
) -> ASGIApp:
    """``narwhal up``: the agent's webhook endpoints next to the API.

    They publish to RabbitMQ when ``amqp`` is set (the publisher closes
    before the consumer), else hand events straight to the dispatcher; their
    answers are counted in the dispatcher's ``/metrics``.
    """
    if dconf.webhooks is None:
        return served.api
    sink: Sink = DirectSink(served.intake)
    if dconf.amqp is not None:
        sink = await extras.enter_async_context(AmqpPublisher(dconf.amqp))
    on_answer = count_webhooks(served.metrics.registry)
    routes = webhook_routes(Webhooks(dconf.webhooks, sink, on_answer=on_answer))
    return Starlette(routes=[*routes, Mount("", app=served.api)])


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


async def _close_runner(runner: Runner, dispatcher: Dispatcher, hurry: asyncio.Event) -> None:
    """Close the embedded runner (a ``hurry`` on the way kills its steps now); store its reports."""
    hurried = asyncio.create_task(on(hurry, runner.hurry))
    try:
        await runner.aclose()
        await drain(dispatcher)
    finally:
        hurried.cancel()
