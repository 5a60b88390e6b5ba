"""What a runner reports of itself (``RunnerState``), for placement and the operator.

Collected cheaply and never on the event loop. Three parts, each at its own
pace:

- the host (CPUs, load, memory, free disk in the work folder, OS and
  architecture): read in a thread, at most once per heartbeat interval;
- the container engine (whether it answers, its images): slow to ask, so
  asked in a thread by a loop of its own every ``engine_refresh`` seconds
  and after a job ends, and kept; the local executor has none;
- the mirror cache's warm repositories: the cache's index, in memory.

READY always carries the current state; a HEARTBEAT carries it only when
it differs enough from the one sent last (``differs``: load by half a
core, memory and disk by 64 MiB, anything in the images or in the mirrors'
repositories and commits), so a steady runner sends none.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Protocol, runtime_checkable

from narwhal.mesh import protocol as p
from narwhal.runner.mirror_index import MirrorIndex

#: Changes smaller than these are not worth a HEARTBEAT of their own.
LOAD_STEP = 0.5
BYTES_STEP = 64 << 20

#: ``platform.machine()`` as container engines name architectures.
_ARCHES = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}
_ARCHES |= {"armv7l": "arm", "armv6l": "arm", "i386": "386", "i686": "386"}


@runtime_checkable
class Engine(Protocol):
    """A container engine the runner can ask about itself (blocking calls)."""

    def answers(self) -> bool: ...

    def image_tags(self, most: int) -> tuple[str, ...]: ...


def engine_of(executor: object) -> Engine | None:
    """The engine behind an executor and its wrappers (``inner``); None for the local one."""
    while not isinstance(executor, Engine):
        executor = getattr(executor, "inner", None)
        if executor is None:
            return None
    return executor


def arch_name(machine: str) -> str:
    """An architecture as container engines name it: x86_64 is amd64, aarch64 arm64."""
    lowered = machine.lower()
    return _ARCHES.get(lowered, lowered)


def host(work: Path) -> p.RunnerState:
    """The host's figures now, as a state with no engine and no mirrors (blocking:
    a few system calls and /proc/meminfo); ``StateReporter.current`` adds the rest."""
    total, available = memory()
    try:
        load = max(0.0, os.getloadavg()[0])
    except (AttributeError, OSError):  # no load average on this system
        load = 0.0
    return p.RunnerState(
        cpus=cpu_count(),
        load=load,
        memory_total=total,
        memory_available=available,
        disk_free=shutil.disk_usage(work).free,
        os=platform.system().lower(),
        arch=arch_name(platform.machine()),
        docker=False,
    )


def cpu_count() -> int:
    """The CPUs this process may run on (its affinity), else the machine's."""
    with contextlib.suppress(AttributeError, OSError):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def memory(meminfo: str = "/proc/meminfo") -> tuple[int, int]:
    """Bytes of memory in all and available: /proc/meminfo, else sysconf, else (0, 0)."""
    found: dict[str, int] = {}
    with contextlib.suppress(OSError, ValueError), open(meminfo, "rb") as lines:
        for line in lines:
            key, _, rest = line.partition(b":")
            if key in (b"MemTotal", b"MemAvailable"):
                found[key.decode()] = int(rest.split()[0]) * 1024  # kB
    if "MemTotal" in found:
        return found["MemTotal"], found.get("MemAvailable", found["MemTotal"])
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        total = page * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return 0, 0
    try:
        available = page * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError):  # macOS: unknown, say all of it
        available = total
    return total, available


def differs(new: p.RunnerState, old: p.RunnerState | None) -> bool:
    """Whether ``new`` is worth sending after ``old`` (the one sent last)."""
    if old is None:
        return True
    if abs(new.load - old.load) >= LOAD_STEP:
        return True
    sizes = ("memory_total", "memory_available", "disk_free", "mirror_bytes")
    if any(abs(getattr(new, name) - getattr(old, name)) >= BYTES_STEP for name in sizes):
        return True
    exact = ("cpus", "os", "arch", "docker", "images", "mirror_limit")
    if any(getattr(new, name) != getattr(old, name) for name in exact):
        return True
    return _warm(new) != _warm(old)


def _warm(state: p.RunnerState) -> list[tuple[str, str]]:
    return [(mirror.repo, mirror.sha) for mirror in state.mirrors]


class StateReporter:
    """Keeps the runner's state and the one it sent last.

    ``refresh`` (awaited, off the loop) updates the host part, at most once
    per ``interval``; ``watch_engine`` is the engine's loop (a child task of
    the runner, when there is an engine); ``job_ended`` asks the engine
    again soon. ``current`` composes the state from what was collected;
    ``worth_sending`` says whether a heartbeat should carry it.
    """

    def __init__(
        self,
        work: Path,
        mirrors: MirrorIndex,
        engine: Engine | None,
        *,
        interval: float,
        engine_refresh: float,
    ) -> None:
        self._work = work
        self._mirrors = mirrors
        self.engine = engine
        self._interval = interval
        self._engine_refresh = engine_refresh
        self._host: p.RunnerState | None = None
        self._sampled = float("-inf")
        self._docker = False
        self._images: tuple[str, ...] = ()
        self._ended = asyncio.Event()
        self.last_sent: p.RunnerState | None = None

    async def start(self) -> None:
        """The first look at the host and the engine, before the first READY."""
        await self.refresh()
        if self.engine is not None:
            await self._look_at_engine()

    async def refresh(self) -> None:
        """Sample the host again, unless that was done within the interval."""
        now = time.monotonic()
        if now - self._sampled < self._interval and self._host is not None:
            return
        self._sampled = now
        self._host = await asyncio.to_thread(host, self._work)

    def job_ended(self) -> None:
        """A job ended: its images (pulled, maybe) are worth a look soon."""
        self._ended.set()

    async def watch_engine(self) -> None:
        """Ask the engine every ``engine_refresh`` seconds and after jobs end, never
        more often than once per interval."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._engine_refresh):
                    await self._ended.wait()
            self._ended.clear()
            await self._look_at_engine()
            await asyncio.sleep(self._interval)

    async def _look_at_engine(self) -> None:
        engine = self.engine
        if engine is None:
            return
        self._docker, self._images = await asyncio.to_thread(_ask, engine)

    def current(self) -> p.RunnerState:
        """The state from what was collected last (``start`` must have run)."""
        sampled = self._host
        if sampled is None:
            raise RuntimeError("StateReporter.start was not awaited")
        index = self._mirrors
        return dataclasses.replace(
            sampled,
            docker=self._docker,
            images=self._images[: p.MAX_IMAGES],
            mirrors=tuple(
                p.WarmRepo(repo=e.repo, sha=e.sha, used_at=max(0.0, e.used_at), size=e.size)
                for e in index.recent()[: p.MAX_MIRRORS]
            ),
            mirror_bytes=index.total,
            mirror_limit=index.limit or 0,
        )

    def worth_sending(self) -> p.RunnerState | None:
        """The current state if it differs enough from the one sent last, else None."""
        state = self.current()
        return state if differs(state, self.last_sent) else None


def _ask(engine: Engine) -> tuple[bool, tuple[str, ...]]:
    """Whether the engine answers, and its images if so (blocking)."""
    if not engine.answers():
        return False, ()
    return True, engine.image_tags(p.MAX_IMAGES)
