"""A dispatcher on the shipped fakes, served for real on loopback, in a thread of its own.

``FakeStack`` runs a ``Dispatcher`` on ``FakeMesh`` and ``MemoryStore``
with its parts as the daemons serve them (``serve_parts``: the REST API,
``/metrics``, and with ``dashboard=True`` the metrics feed and a dashboard
``Backend`` reading both), each HTTP server on a free loopback port. Its
event loop runs in a thread, so a synchronous test drives it from outside:
the CLI's client (``narwhal.cli.main``) or a browser under Playwright's
sync API, which refuses to run inside an event loop. ``run`` hands a
coroutine to that loop (a ``FakeRunner`` frame, a submit) and returns its
result. Runners are fakes a test plays, so their reports are whatever the
test says.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import zmq.asyncio

from narwhal.backend.server import Backend
from narwhal.config import BackendConfig, DispatcherConfig
from narwhal.dispatcher.api import Shutdown
from narwhal.dispatcher.core import Dispatcher
from narwhal.dispatcher.guard import Guard, HostPolicy
from narwhal.dispatcher.server import serve_parts
from narwhal.dispatcher.store.memory import MemoryStore
from narwhal.httpserver import listen, run_http
from narwhal.testing import FakeMesh

T = TypeVar("T")
TOKEN = "nw_fake_stack_admin_token"
#: Seconds a call into the stack's loop may take.
TIMEOUT = 30.0


class FakeStack:
    """The served fake dispatcher (module docstring); a context manager."""

    def __init__(self, data_dir: Path, *, dashboard: bool = False) -> None:
        self.config = DispatcherConfig(
            data_dir=data_dir,
            api_token=TOKEN,
            metrics="tcp://127.0.0.1:0" if dashboard else None,
            allow_local_repos=True,
        )
        self.dashboard = dashboard
        self.mesh = FakeMesh()
        self.dispatcher: Dispatcher | None = None
        self.api = ""
        self.board = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._failed: BaseException | None = None
        self._thread = threading.Thread(target=self._serve, name="fake-stack")

    def __enter__(self) -> FakeStack:
        self._thread.start()
        if not self._ready.wait(TIMEOUT) or self._failed is not None:
            self._thread.join(TIMEOUT)
            raise RuntimeError(f"the fake stack did not start: {self._failed!r}")
        return self

    def __exit__(self, *_: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(TIMEOUT)
        if self._failed is not None:
            raise self._failed

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` in the stack's loop; its result."""
        assert self._loop is not None
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result(TIMEOUT)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    def _serve(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as e:  # said by __enter__ or __exit__, in the test's thread
            self._failed = e
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        context = zmq.asyncio.Context()
        try:
            async with (
                Dispatcher(self.config, store=MemoryStore(), mesh=self.mesh) as dispatcher,
                contextlib.AsyncExitStack() as extras,
            ):
                self.dispatcher = dispatcher
                sock = listen("127.0.0.1", 0)
                port = sock.getsockname()[1]
                self.api = f"http://127.0.0.1:{port}"
                served = await serve_parts(dispatcher, self.config, self.api, extras, Shutdown())
                app = Guard(served.api, HostPolicy.of("127.0.0.1", port))
                servers = [asyncio.create_task(run_http(app, sock, self._stop))]
                if self.dashboard:
                    assert served.publisher is not None
                    servers.append(await self._board(served.publisher.endpoint, context, extras))
                self._ready.set()
                await asyncio.gather(*servers)
        finally:
            context.term()

    async def _board(
        self, feed: str, context: zmq.asyncio.Context, extras: contextlib.AsyncExitStack
    ) -> asyncio.Task[None]:
        """A dashboard of this dispatcher; its link signs in with the admin token."""
        assert self._stop is not None
        sock = listen("127.0.0.1", 0)
        port = sock.getsockname()[1]
        config = BackendConfig(
            http_port=port, metrics=feed, api=self.api, api_token=TOKEN, feed_timeout=2.0
        )
        backend = await extras.enter_async_context(
            Backend(config, host="127.0.0.1", port=port, context=context)
        )
        self.board = f"http://127.0.0.1:{port}"
        return asyncio.create_task(
            run_http(backend.app, sock, self._stop, grace=2, closing=backend.closing)
        )
