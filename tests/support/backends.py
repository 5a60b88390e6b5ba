"""``narwhal up`` and a dashboard backend in the test process, on loopback ports.

``running_up`` serves what ``narwhal up`` serves (dispatcher, API, local
runner, metrics feed) in this event loop, as ``daemons.dispatcher.serve``
composes it; ``running_backend`` serves one ``backend.server.Backend`` on a
free port against it. Both stop in order on leaving, so the leak check
finds nothing behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import zmq.asyncio

from narwhal.backend.server import Backend
from narwhal.config import BackendConfig, DispatcherConfig, MeshConfig, RunnerConfig
from narwhal.daemons.dispatcher import serve
from narwhal.dispatcher import datadir
from narwhal.httpserver import listen, run_http
from tests.support.daemons import API_TOKEN, auth_headers


@dataclass
class Up:
    """A running in-process ``up``: its API's URL and its feed's endpoint."""

    api: str
    feed: str
    http: httpx.AsyncClient

    async def token(self, scope: str, name: str | None = None) -> str:
        """A new API token of ``scope`` (made with the admin token)."""
        body = {"name": name or f"t-{scope}", "scope": scope}
        response = await self.http.post("/api/tokens", json=body)
        assert response.status_code == 201, response.text
        return str(response.json()["token"])

    async def submit(self, repo: Path, **body: object) -> int:
        response = await self.http.post("/api/jobs", json={"repo": str(repo), **body})
        assert response.status_code == 201, response.text
        return int(response.json()["id"])

    async def job(self, job_id: int) -> dict[str, object]:
        response = await self.http.get(f"/api/jobs/{job_id}")
        assert response.status_code == 200, response.text
        return dict(response.json())


@contextlib.asynccontextmanager
async def running_up(tmp_path: Path, *, public_read: bool = False) -> AsyncIterator[Up]:
    """Dispatcher + API + local runner + metrics feed, as ``narwhal up --insecure`` runs them."""
    data = tmp_path / "data"
    dconf = DispatcherConfig(
        data_dir=data,
        http_port=0,
        api_token=API_TOKEN,
        public_read=public_read,
        metrics="tcp://127.0.0.1:0",
        mesh=MeshConfig(heartbeat_interval=0.5),
        allow_local_repos=True,
    )
    rconf = RunnerConfig(
        runner_id="local",
        listen="tcp://127.0.0.1:*",
        executor="local",
        work_dir=tmp_path / "work",
        cancel_grace=2,
        allow_local_repos=True,
        mesh=MeshConfig(heartbeat_interval=0.5),
    )
    lines: list[str] = []
    stop = asyncio.Event()
    context = zmq.asyncio.Context()
    lock = datadir.acquire(data)
    task = asyncio.create_task(
        serve(dconf, rconf, context=context, lock=lock, stop=stop, announce=lines.append)
    )
    try:
        async with asyncio.timeout(30):
            while not lines:
                if task.done():
                    task.result()
                await asyncio.sleep(0.02)
        api = re.search(r"http://\S+", lines[0])
        feed = re.search(r"metrics feed on (tcp://\S+)", lines[0])
        assert api and feed, lines[0]
        async with httpx.AsyncClient(
            base_url=api.group(0), headers=auth_headers(API_TOKEN), timeout=30
        ) as http:
            yield Up(
                api=api.group(0), feed=feed.group(1) if feed else "tcp://127.0.0.1:9", http=http
            )
    finally:
        stop.set()
        await task
        context.term()
        lock.release()


@dataclass
class Served:
    """A backend serving on ``url`` (``port``)."""

    backend: Backend
    url: str
    port: int

    def client(self, **kw: object) -> httpx.AsyncClient:
        """A client that sends what a page of this dashboard sends (its own Origin)."""
        headers = {"origin": self.url, **kw.pop("headers", {})}  # type: ignore[dict-item]
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=30, **kw)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def running_backend(
    up: Up, *, send_buffer: int | None = None, **config: object
) -> AsyncIterator[Served]:
    """A backend on a free port, reading ``up``'s feed and API (``config``: BackendConfig's).

    ``send_buffer``: the kernel's send buffer of each connection (SO_SNDBUF,
    which accepted sockets inherit from the listening one), fixed instead of
    growing to megabytes, so that a browser that does not read is noticed
    after kilobytes.
    """
    bconf = BackendConfig(
        http_port=0,
        metrics=up.feed,
        api=up.api,
        feed_timeout=2.0,
        **config,  # type: ignore[arg-type]
    )
    sock = listen("127.0.0.1", 0)
    if send_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
    port = sock.getsockname()[1]
    stop = asyncio.Event()
    context = zmq.asyncio.Context()
    try:
        async with Backend(bconf, host="127.0.0.1", port=port, context=context) as backend:
            http = asyncio.create_task(
                run_http(backend.app, sock, stop, grace=2, closing=backend.closing)
            )
            try:
                yield Served(backend=backend, url=f"http://127.0.0.1:{port}", port=port)
            finally:
                stop.set()
                await http
    finally:
        context.term()
