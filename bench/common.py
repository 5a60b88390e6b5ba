"""Helpers shared by the benchmarks: stand-in processes, ports, figures."""

from __future__ import annotations

import os
import platform
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import msgpack
import zmq

ROOT = Path(__file__).resolve().parent.parent


def exit_on_sigterm() -> None:
    """Turn SIGTERM (``timeout``, CI) into SystemExit, so ``finally`` blocks stop
    the daemons and stand-ins a benchmark started instead of leaving them running."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def standins(count: int, capacity: int, *, processes: int | None = None) -> Iterator[list[str]]:
    """Start ``count`` stand-in runners spread over a few processes; yield their endpoints."""
    processes = min(count, processes or count)
    sizes = [count // processes + (i < count % processes) for i in range(processes)]
    procs = []
    endpoints: list[str] = []
    try:
        for size in sizes:
            proc = subprocess.Popen(
                [sys.executable, "-m", "bench.standin", str(capacity), str(size)],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                text=True,
            )
            procs.append(proc)
            assert proc.stdout is not None
            word, *ports = proc.stdout.readline().split()
            if word != "ready":
                raise RuntimeError("a stand-in did not start")
            endpoints += [f"tcp://127.0.0.1:{port}" for port in ports]
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
