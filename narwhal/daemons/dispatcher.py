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
import logging
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

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
from narwhal.dispatcher.store.base import JobStore
from narwhal.dispatcher.store.open import store_for, store_url
from narwhal.dispatcher.tokens import TOKEN_FILE
from narwhal.errors import LeadershipLost
from narwhal.events import Sink
from narwhal.httpserver import listen, run_http
from narwhal.runner.runner import Runner, executor_for
from narwhal.storeurl import StoreUrl

__all__ = ["DRAIN_SECONDS", "HTTP_GRACE", "dispatcher_main", "serve"]

Announce = Callable[[str], None]
log = logging.getLogger(__name__)


def build(dconf: DispatcherConfig, context: zmq.asyncio.Context) -> Dispatcher:
    """The dispatcher ``up`` and ``dispatcher`` run, leading: its store, the ZeroMQ mesh.

    The caller owns ``context`` and terminates it after the dispatcher closed.
    """
    store = store_for(store_url(dconf), lead=True)
    return Dispatcher(dconf, store=store, mesh=mesh_for(dconf, context))


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

    On PostgreSQL, several dispatchers may share the database: this one
    serves as a standby until it holds the leader lock (``_serve_shared``).
    """
    sock = listen(dconf.http_host, dconf.http_port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    site = _Site(sock, f"http://{shown}:{port}", HostPolicy.of(host, port, dconf.status.public_url))
    lock.record(site.url)
    hurry = hurry or asyncio.Event()
    shutdown = Shutdown()
    db = store_url(dconf)
    leading = _Leading(dconf, rconf, context, site, shutdown, stop, hurry, announce, dashboard)
    if db.kind == "postgresql":
        await _serve_shared(leading, db)
        return
    async with leading.parts(store_for(db)) as app:
        await run_http(
            Guard(app, site.policy),
            sock,
            stop,
            grace=HTTP_GRACE,
            closing=leading.closing,
            hurry=hurry,
        )


@dataclass(frozen=True, slots=True)
class _Site:
    """Where the API listens."""

    sock: socket.socket
    url: str
    policy: HostPolicy


@dataclass(slots=True)
class _Leading:
    """The dispatcher that leads, and what it needs to build its parts."""

    dconf: DispatcherConfig
    rconf: RunnerConfig | None
    context: zmq.asyncio.Context
    site: _Site
    shutdown: Shutdown
    stop: asyncio.Event
    hurry: asyncio.Event
    announce: Announce
    dashboard: BackendConfig | None
    role: str | None = None
    dispatcher: Dispatcher | None = None
    runner: Runner | None = None

    @contextlib.asynccontextmanager
    async def parts(self, store: JobStore) -> AsyncIterator[ASGIApp]:
        """The dispatcher and its parts (closed in reverse on the way out); yields the API."""
        dconf, url = self.dconf, self.site.url
        pool = mesh_for(dconf, self.context)
        async with (
            Dispatcher(dconf, store=store, mesh=pool) as dispatcher,
            contextlib.AsyncExitStack() as extras,
        ):
            self.dispatcher = dispatcher
            served = await serve_parts(
                dispatcher,
                dconf,
                url,
                extras,
                self.shutdown,
                metrics_fallback=self.rconf is not None,
                role=self.role,
            )
            app = await _with_webhooks(served, dconf, extras)
            if dconf.discovery.enabled:
                # Closed by ``extras``, so browsing stops before the dispatcher does.
                await extras.enter_async_context(DiscoveredRunners(dconf.discovery, pool))
            if self.rconf is not None:
                # In ``extras`` too: closed (a no-op by then) if ``run_http`` never ran.
                self.runner = Runner(
                    self.rconf, context=self.context, executor=executor_for(self.rconf)
                )
                await extras.enter_async_context(self.runner)
                dispatcher.mesh.connect(self.runner.endpoint)
            board = await start_dashboard(
                self.dashboard,
                feed=served.publisher.endpoint if served.publisher is not None else None,
                api=url,
                token_file=dconf.data_dir / TOKEN_FILE,
                context=self.context,
                extras=extras,
                stop=self.stop,
            )
            # The socket already listens: a client that reads this line can connect.
            self.announce(
                f"narwhal {dconf.data_dir}: API on {url}{parts_line(dconf, served.publisher)}"
                f"{_executor_part(self.rconf)}{board}"
            )
            yield app

    async def closing(self) -> None:
        """``run_http``'s: once new connections are refused, before requests end."""
        self.shutdown.begun.set()
        if self.runner is not None and self.dispatcher is not None:
            await _close_runner(self.runner, self.dispatcher, self.hurry)
        self.shutdown.ending.set()


async def _serve_shared(leading: _Leading, db: StoreUrl) -> None:
    """One of several dispatchers on one PostgreSQL database (docs/ha.md).

    The API answers from the start, as a standby (``dispatcher.standby``)
    while this dispatcher waits for the leader lock; once granted, it
    builds the dispatcher (whose recovery adopts the running jobs from the
    runners' READY lists), hands the socket to the full API and listens for
    the standbys' notices. A lost lock session ends it with
    ``LeadershipLost`` at once: a supervisor starts it again, as a standby.
    Runners are never connected before the lock is held.
    """
    # Imported here: SQLite users never load psycopg.
    from narwhal.dispatcher.leadership import Leadership
    from narwhal.dispatcher.notices import Notices
    from narwhal.dispatcher.standby import Standby, Switch, standby_app
    from narwhal.dispatcher.store.postgres import PostgresStore

    dconf, site, stop = leading.dconf, leading.site, leading.stop
    async with Leadership(db) as leadership, contextlib.AsyncExitStack() as standing:
        standby = await standing.enter_async_context(Standby(dconf, PostgresStore(db)))
        switch = Switch(standby_app(standby, leadership, leading.shutdown))
        http = asyncio.create_task(
            run_http(
                Guard(switch, site.policy),
                site.sock,
                stop,
                grace=HTTP_GRACE,
                closing=leading.closing,
                hurry=leading.hurry,
            ),
            name="dispatcher http",
        )
        leading.announce(
            f"narwhal {dconf.data_dir}: standby API on {site.url}"
            f" (waiting for the leader lock on {db.shown})"
        )
        acquiring = asyncio.create_task(leadership.acquire(), name="leader lock")
        done, _ = await asyncio.wait({http, acquiring}, return_when=asyncio.FIRST_COMPLETED)
        if acquiring not in done:  # stopped while standing by
            acquiring.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await acquiring
            await http
            return
        failed = acquiring.exception()
        if failed is not None:  # the database is gone: one line, a non-zero exit
            stop.set()
            await http
            raise failed
        leading.role = "leader"
        log.info("leader: took the lock after %.2f s", leadership.waited or 0.0)
        # Its writes fenced by the epoch it bumps (``PostgresStore``'s ``lead``).
        async with leading.parts(store_for(db, lead=True)) as app:
            assert leading.dispatcher is not None  # noqa: S101 - set by parts()
            await Notices(leading.dispatcher, leadership).start()
            switch.app = app
            # Its store's connections are not needed any more (a log it was
            # streaming ends; the client follows again, from the leader).
            await standing.aclose()
            lost = asyncio.create_task(leadership.lost.wait(), name="leader lock lost")
            await asyncio.wait({http, lost}, return_when=asyncio.FIRST_COMPLETED)
            lost.cancel()
            if leadership.lost.is_set():
                # Another dispatcher may lead now: stop scheduling and let go
                # of the runners at once, before the API winds down.
                await leading.dispatcher.aclose()
                leading.hurry.set()
                stop.set()
            await http
        if leadership.lost.is_set():
            raise LeadershipLost(
                f"lost the leader lock session on {db.shown}; stopped leading (start again)"
            )


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
