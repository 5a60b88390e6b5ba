"""SIGINT and SIGTERM for the daemons: the first asks for an orderly stop, the second hurries it."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable

log = logging.getLogger("narwhal")


def two_signals() -> tuple[asyncio.Event, asyncio.Event]:
    """SIGINT/SIGTERM once: ``stop`` (an orderly shutdown); again: ``hurry`` (at once)."""
    stop, hurry = asyncio.Event(), asyncio.Event()

    def on_signal() -> None:
        if not stop.is_set():
            log.info("shutting down; press Ctrl-C again to stop at once (running steps killed)")
            stop.set()
        elif not hurry.is_set():
            log.warning("stopping at once: running steps are killed, their jobs end cancelled")
            hurry.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    return stop, hurry


def one_signal() -> asyncio.Event:
    """SIGINT or SIGTERM sets the event (a daemon with nothing to hurry)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def on(event: asyncio.Event, action: Callable[[], None]) -> None:
    """Run ``action`` once ``event`` is set (a task, cancelled when no longer needed)."""
    await event.wait()
    action()
