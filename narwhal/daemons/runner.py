"""``narwhal runner``: a runner, announced on mDNS when discovery is on.

Shutdown order (``stop``, the first SIGINT or SIGTERM): the runner drains
(``Runner.drain``: running jobs finish for ``--drain-timeout``, then are
cancelled, and their last reports are acknowledged); then the mDNS goodbye;
then the socket closes. ``hurry`` (a second signal) kills running steps at
once; their jobs are still reported.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from narwhal.config import RunnerConfig
from narwhal.daemons.executors import resolved
from narwhal.daemons.signals import on, two_signals
from narwhal.mesh.announcement import Announcement
from narwhal.mesh.discovery import Announcer, announced_addresses
from narwhal.runner.runner import Runner, executor_for


async def runner_main(conf: RunnerConfig, announce: Callable[[str], None]) -> None:
    """``narwhal runner``, until a signal: drain, say goodbye on mDNS, close."""
    stop, hurry = two_signals()
    conf = await resolved(conf)
    async with Runner(conf, executor=executor_for(conf)) as runner:
        announcer = await _announce_runner(conf, runner.endpoint)
        try:
            shown = f" + mDNS as {announcer.announcement.instance!r}" if announcer else ""
            announce(f"narwhal runner {conf.runner_id} listening on {runner.endpoint}{shown}")
            await stop.wait()
        finally:
            # Goodbye only after the last job reports are in (a goodbye makes
            # the dispatcher drop the link and requeue what it still holds),
            # and before the socket closes.
            hurried = asyncio.create_task(on(hurry, runner.hurry))
            try:
                await runner.drain()
            finally:
                hurried.cancel()
            if announcer is not None:
                await announcer.aclose()


async def _announce_runner(conf: RunnerConfig, endpoint: str) -> Announcer | None:
    if not conf.discovery.enabled:
        return None
    host, _, port = endpoint.partition("://")[2].rpartition(":")
    interfaces = conf.discovery.interfaces
    announcement = Announcement(
        runner_id=conf.runner_id,
        addresses=announced_addresses(host, interfaces),
        port=int(port),
        capacity=conf.capacity,
        labels=dict(conf.labels),
        key=conf.curve.public_key.decode() if conf.curve is not None else None,
    )
    announcer = Announcer(announcement, interfaces=interfaces)
    await announcer.start()
    return announcer
