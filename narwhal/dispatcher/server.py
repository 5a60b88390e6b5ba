"""The dispatcher's own parts around its core: REST API, commit intake, statuses.

Optional parts, from the config: the AMQP consumer of commit events
(``amqp``), the commit status reporter (``status.forges``) and the metrics
feed's publisher (``metrics``). Composing
them with the rest of a daemon (the HTTP server, mDNS discovery, the
webhook endpoints of ``narwhal up`` and its embedded runner) is
``narwhal.daemons``'s: this package never imports the agent or the runner.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from starlette.types import ASGIApp

from narwhal.config import DispatcherConfig
from narwhal.dispatcher.amqp import AmqpConsumer, Intake
from narwhal.dispatcher.api import Access, Shutdown, build_app
from narwhal.dispatcher.core import Dispatcher
from narwhal.dispatcher.feed import on_jobs
from narwhal.dispatcher.metrics import DispatcherMetrics
from narwhal.dispatcher.publisher import Publisher
from narwhal.dispatcher.status import StatusReporter
from narwhal.dispatcher.tokens import ADMIN, Tokens, shared_admin
from narwhal.redact import redacted

#: How long shutdown waits for a local runner's last reports.
DRAIN_SECONDS = 3.0
#: How long requests still in flight get once log streams have ended.
HTTP_GRACE = 5.0


@dataclass(frozen=True, slots=True)
class Served:
    """What the dispatcher serves: its REST API, where commit events go in, its metrics."""

    api: ASGIApp
    intake: Intake
    metrics: DispatcherMetrics
    publisher: Publisher | None = None


async def serve_parts(
    dispatcher: Dispatcher,
    dconf: DispatcherConfig,
    url: str,
    extras: contextlib.AsyncExitStack,
    shutdown: Shutdown,
    *,
    metrics_fallback: bool = False,
    role: str | None = None,
) -> Served:
    """Start the optional parts (closed by ``extras``, in reverse) and build the API.

    ``url`` is the API's own address: the links in commit statuses point
    there unless ``status.public_url`` says otherwise. ``metrics_fallback``:
    the feed binds free ports if its own are taken (``narwhal up``).
    ``role``: what ``/health`` says this dispatcher is (``api.build_app``);
    set when dispatchers share the store, whose admin tokens then have a
    row each (``tokens.shared_admin``).
    """
    metrics = DispatcherMetrics(dispatcher, per_repo=dconf.metrics_per_repo)
    extras.callback(metrics.close)
    publisher = None
    if dconf.metrics is not None:
        publisher = Publisher(
            dconf.metrics, dispatcher.feed, curve=dconf.curve, fallback=metrics_fallback
        )
        jobs = dispatcher.jobs
        publisher.seed(
            [*jobs.queue.values(), *jobs.active.values()],
            [peer.to_json() for peer in dispatcher.mesh.peers()],
        )
        await extras.enter_async_context(publisher)
        metrics.watch_feed(publisher)
    reporter = None
    if dconf.status.forges:
        reporter = StatusReporter(
            dconf.status, data_dir=dconf.data_dir, public_url=url, on_result=metrics.status_result
        )
        await extras.enter_async_context(reporter)
        dispatcher.feed.subscribe(on_jobs(reporter.on_job))
    intake = Intake(dispatcher, reporter)
    if dconf.amqp is not None:
        await extras.enter_async_context(AmqpConsumer(dconf.amqp, intake))
    admin = shared_admin(dconf.data_dir) if role is not None else ADMIN
    tokens = await Tokens.open(dispatcher, env_token=dconf.api_token, admin=admin)
    if role is not None:
        dispatcher.spawn("dispatcher token loop", tokens.follow)
    access = Access(tokens, public_read=dconf.public_read)
    api = build_app(dispatcher, access, shutdown, metrics.registry, role=role)
    return Served(api=api, intake=intake, metrics=metrics, publisher=publisher)


def parts_line(dconf: DispatcherConfig, publisher: Publisher | None = None) -> str:
    """The optional parts, for the line a daemon prints once it listens."""
    # Each part starts with a space: the API URL must stay a word of its own.
    line = ""
    if publisher is not None:
        line += f" + metrics feed on {publisher.endpoint}"
    if dconf.webhooks is not None:
        line += f" + webhooks at /webhooks/{{{','.join(dconf.webhooks.forges())}}}"
    if dconf.amqp is not None:
        line += f" + commit events from queue {dconf.amqp.queue} at {redacted(dconf.amqp.url)}"
    if dconf.status.forges:
        line += f" + statuses to {', '.join(api.forge for api in dconf.status.forges)}"
    if dconf.discovery.enabled:
        line += f" + mDNS discovery on {', '.join(dconf.discovery.interfaces) or 'every interface'}"
    return line


async def drain(dispatcher: Dispatcher) -> None:
    """Let the dispatcher record the reports in flight, for ``DRAIN_SECONDS`` at most."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(DRAIN_SECONDS):
            await dispatcher.drained()
