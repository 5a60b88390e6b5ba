"""Discovered runners on loopback: a real dispatcher, real runners, real mDNS (127.0.0.1 only).

The runner ids carry a random token, so runs elsewhere on this machine that
also announce on loopback cannot be mistaken for these.
"""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import cast

import zmq
import zmq.asyncio

from narwhal import __version__
from narwhal.config import DiscoveryConfig, DispatcherConfig, MeshConfig, RunnerConfig
from narwhal.dispatcher.core import Dispatcher
from narwhal.dispatcher.discovered import DiscoveredRunners
from narwhal.dispatcher.pool import RunnerPool
from narwhal.mesh import protocol as p
from narwhal.mesh.announcement import Announcement
from narwhal.mesh.discovery import Announcer
from narwhal.mesh.transport import dealer_socket
from narwhal.runner.runner import Runner
from tests.support.dispatchers import running_dispatcher
from tests.support.eventually import eventually_async

LOOPBACK = ("127.0.0.1",)
MESH = MeshConfig(heartbeat_interval=0.1, liveness=3)


def announcement(runner_id: str, endpoint: str) -> Announcement:
    port = int(endpoint.rpartition(":")[2])
    return Announcement(runner_id=runner_id, addresses=LOOPBACK, port=port, capacity=1)


@asynccontextmanager
async def dispatcher(tmp_path: Path) -> AsyncIterator[Dispatcher]:
    conf = DispatcherConfig(data_dir=tmp_path / "data", mesh=MESH)
    discovery = DiscoveryConfig(enabled=True, interfaces=LOOPBACK)
    async with (
        running_dispatcher(conf) as d,
        DiscoveredRunners(discovery, cast("RunnerPool", d.mesh)),
    ):
        yield d


def states(d: Dispatcher) -> list[tuple[str, str, str]]:
    return sorted((link.runner_id or "?", link.endpoint, link.state) for link in d.mesh.peers())


async def start_runner(stack: AsyncExitStack, tmp_path: Path, runner_id: str) -> Runner:
    conf = RunnerConfig(
        runner_id=runner_id,
        listen="tcp://127.0.0.1:0",
        work_dir=tmp_path / "work",
        mesh=MESH,
        allow_local_repos=True,
    )
    return await stack.enter_async_context(Runner(conf))


def test_a_slow_second_claimant_is_refused_and_a_moved_runner_is_one_runner(
    tmp_path: Path,
) -> None:
    alpha = f"alpha-{secrets.token_hex(4)}"

    async def main() -> None:
        async with dispatcher(tmp_path) as d, AsyncExitStack() as stack:
            first_stack = AsyncExitStack()
            first = await start_runner(first_stack, tmp_path, alpha)
            await stack.enter_async_context(
                Announcer(announcement(alpha, first.endpoint), interfaces=LOOPBACK)
            )
            await eventually_async(
                lambda: states(d) == [(alpha, first.endpoint, "ready")], what="alpha ready"
            )

            # A second claimant that takes longer than a reconcile pass to
            # answer is still refused with the reason, not silently dropped.
            async with SlowRunner(alpha, delay=0.25) as slow:
                async with Announcer(announcement(alpha, slow.endpoint), interfaces=LOOPBACK):
                    await eventually_async(
                        lambda: slow.endpoint in d.mesh.refused, what="slow one refused"
                    )
                    assert "already connected from" in d.mesh.refused[slow.endpoint]
            await eventually_async(
                lambda: not d.mesh.refused, what="the refusal cleared by the goodbye"
            )

            # alpha comes back on another port while its old process (no
            # goodbye: its records stay) still looks alive: refused at first,
            # then, once the old one is found dead, the only alpha.
            second = await start_runner(stack, tmp_path, alpha)
            await stack.enter_async_context(
                Announcer(announcement(alpha, second.endpoint), interfaces=LOOPBACK)
            )
            await eventually_async(
                lambda: second.endpoint in d.mesh.refused, what="the new alpha refused"
            )
            await first_stack.aclose()  # dies: no goodbye
            wanted = [(alpha, second.endpoint, "ready")]
            await eventually_async(
                lambda: states(d) == wanted, what="one alpha, at its new endpoint"
            )
            assert not d.mesh.refused

    asyncio.run(asyncio.wait_for(main(), 60))


class SlowRunner:
    """A DEALER that answers HELLO with READY only after ``delay`` seconds."""

    def __init__(self, runner_id: str, *, delay: float) -> None:
        self.runner_id = runner_id
        self.delay = delay
        self.ctx = zmq.asyncio.Context()
        self.sock = dealer_socket(self.ctx, linger_ms=0)
        self.sock.bind("tcp://127.0.0.1:0")
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> SlowRunner:
        self.task = asyncio.create_task(self._answer())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _answer(self) -> None:
        session = uuid.uuid4().hex
        while True:
            message = p.decode(await self.sock.recv())
            if isinstance(message, p.Hello):
                await asyncio.sleep(self.delay)
                ready = p.Ready(
                    runner_id=self.runner_id,
                    session=session,
                    capacity=1,
                    labels={},
                    version=__version__,
                )
                await self.sock.send(p.encode(ready))

    async def aclose(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.wait([self.task])
            self.task = None
            self.sock.close(0)
            self.ctx.term()
