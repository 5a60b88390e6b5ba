"""An in-process dispatcher as the daemons build it (SQLite store, ZeroMQ mesh)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import zmq.asyncio

from narwhal.config import DispatcherConfig
from narwhal.daemons.dispatcher import build
from narwhal.dispatcher.core import Dispatcher


@contextlib.asynccontextmanager
async def running_dispatcher(config: DispatcherConfig) -> AsyncIterator[Dispatcher]:
    """Start one, with a ZeroMQ context of its own that is terminated after it closed."""
    context = zmq.asyncio.Context()
    try:
        async with build(config, context) as dispatcher:
            yield dispatcher
    finally:
        context.term()
