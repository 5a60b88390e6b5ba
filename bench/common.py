"""Helpers shared by the benchmarks: stand-in processes, ports, figures."""

from __future__ import annotations

import asyncio
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import msgpack
import zmq
import zmq.asyncio

from narwhal.config import DispatcherConfig, MeshConfig, ServerCurve
from narwhal.daemons.dispatcher import build
from narwhal.dispatcher.core import Dispatcher
from narwhal.storeurl import StoreUrl
from tests.support.keys import MeshKeys

ROOT = Path(__file__).resolve().parent.parent


def exit_on_sigterm() -> None:
    """Turn SIGTERM (``timeout``, CI) into SystemExit, so ``finally`` blocks stop
    the daemons and stand-ins a benchmark started instead of leaving them running."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


@asynccontextmanager
async def dispatcher(
    endpoints: Sequence[str] = (),
    *,
    heartbeat: float,
    curve: ServerCurve | None = None,
    db: StoreUrl | None = None,
) -> AsyncIterator[Dispatcher]:
    """An in-process dispatcher connected to ``endpoints``, on a throw-away
    SQLite store unless ``db`` names one."""
    with tempfile.TemporaryDirectory() as data:
        config = DispatcherConfig(
            data_dir=Path(data),
            runners=tuple(endpoints),
            mesh=MeshConfig(heartbeat_interval=heartbeat, liveness=5),
            curve=curve,
            db=db,
        )
        context = zmq.asyncio.Context()
        try:
            async with build(config, context) as running:
                yield running
        finally:
            context.term()


async def all_ready(dispatcher: Dispatcher, count: int) -> None:
    """Setup, before timing: poll until ``count`` runners sent READY."""
    while sum(link.state == "ready" for link in dispatcher.mesh.peers()) < count:  # noqa: ASYNC110
        await asyncio.sleep(0.01)


def admin_headers(data_dir: Path) -> dict[str, str]:
    """The API headers of a started ``narwhal up``/``dispatcher``: its admin token."""
    return {"Authorization": f"Bearer {(data_dir / 'admin.token').read_text().strip()}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def curve_standins(count: int, capacity: int) -> Iterator[tuple[list[str], ServerCurve]]:
    """Stand-ins that are CurveZMQ clients, and the dispatcher side that trusts each one."""
    with tempfile.TemporaryDirectory() as tmp:
        keys = MeshKeys(Path(tmp))
        curve = ServerCurve(
            public_key=keys.server.public,
            secret_key=keys.server.secret,
            runners_dir=keys.dir / "runners",
        )
        found: dict[str, bytes] = {}
        with standins(count, capacity, server_key=keys.server.public, keys=found) as endpoints:
            for endpoint, key in found.items():
                keys.trust(key, f"standin-{endpoint.rpartition(':')[2]}")
            yield endpoints, curve


@contextmanager
def standins(
    count: int,
    capacity: int,
    *,
    processes: int | None = None,
    server_key: bytes | None = None,
    keys: dict[str, bytes] | None = None,
) -> Iterator[list[str]]:
    """Start ``count`` stand-in runners spread over a few processes; yield their endpoints.

    With ``server_key`` they are CurveZMQ clients; ``keys`` gets each one's public key.
    """
    processes = min(count, processes or count)
    sizes = [count // processes + (i < count % processes) for i in range(processes)]
    procs = []
    endpoints: list[str] = []
    try:
        for size in sizes:
            key = [server_key.decode()] if server_key is not None else []
            proc = subprocess.Popen(
                [sys.executable, "-m", "bench.standin", str(capacity), str(size), *key],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                text=True,
            )
            procs.append(proc)
            assert proc.stdout is not None
            word, *ports = proc.stdout.readline().split()
            if word != "ready":
                raise RuntimeError("a stand-in did not start")
            for item in ports:
                port, _, public = item.partition("=")
                endpoints.append(f"tcp://127.0.0.1:{port}")
                if keys is not None and public:
                    keys[endpoints[-1]] = public.encode()
        yield endpoints
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def peak_rss(pid: int) -> int:
    """Peak resident set size of a live process, in bytes (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def machine() -> str:
    packer = ".".join(map(str, msgpack.version))
    return (
        f"{os.cpu_count()} cores, Python {platform.python_version()},"
        f" pyzmq {zmq.__version__} (libzmq {zmq.zmq_version()}), msgpack {packer}"
    )
