"""The autouse leak check: a test leaves no thread, no child process and no
open file descriptor behind (python-zeroconf's ``verify_threads_ended``,
widened).

A leak fails the test that made it, not a later one that trips over it: a
runner left alive keeps its port and its jobs, a descriptor left open is a
socket or a database another test then finds busy. Whatever stops on its
own (a thread joining, a daemon reaped) gets a short grace period first.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

#: How long a thread, a process or a descriptor may take to go after the test.
GRACE = 5.0
#: Descriptors a test may leave open: none. The one library cache met so far,
#: the Docker SDK's pool of connections to the engine (a session-scoped
#: client), is emptied by the ``docker_client`` fixture after each test
#: instead; objects that close their descriptor only when collected (an
#: unclosed sqlite3 connection sits in a reference cycle) get a
#: ``gc.collect()`` before they count. Raise this only for a cache that
#: cannot be emptied, and name it here.
FD_TOLERANCE = 0


def _threads(before: set[threading.Thread]) -> list[threading.Thread]:
    return [t for t in set(threading.enumerate()) - before if t.is_alive() and not t.daemon]


def _children() -> dict[int, str]:
    """Live descendants of this process: pid -> command line (zombies excluded)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        state, ppid = stat.rpartition(")")[2].split()[:2]
        if state != "Z":
            parents[int(entry.name)] = int(ppid)
    found: dict[int, str] = {}
    frontier = [os.getpid()]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent and pid not in found:
                found[pid] = _cmdline(pid)
                frontier.append(pid)
    return found


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def _descriptors() -> set[tuple[int, str]]:
    """Open descriptors of this process, with what each points at."""
    found = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:  # the descriptor listdir itself used, closed by now
            continue
        found.add((int(name), target))
    return found


def _sockets() -> dict[str, str]:
    """Socket inode -> what it is (a unix path, TCP addresses), from /proc/net."""
    found: dict[str, str] = {}
    for kind in ("unix", "tcp", "tcp6", "udp", "udp6"):
        try:
            lines = Path(f"/proc/self/net/{kind}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if kind == "unix" and len(fields) >= 7:
                found[fields[6]] = f"unix {fields[7] if len(fields) > 7 else '(unnamed)'}"
            elif kind != "unix" and len(fields) >= 10:
                found[fields[9]] = f"{kind} {_address(fields[1])} -> {_address(fields[2])}"
    return found


def _address(hex_address: str) -> str:
    host, _, port = hex_address.partition(":")
    return f"{host}:{int(port, 16)}"


def _describe(opened: list[tuple[int, str]]) -> str:
    sockets = _sockets()
    shown = []
    for fd, target in opened:
        inode = target.removeprefix("socket:[").removesuffix("]")
        shown.append(f"{fd} -> {target}" + (f" ({sockets[inode]})" if inode in sockets else ""))
    return ", ".join(shown)


def _settled(check: object, grace: float = GRACE) -> None:
    deadline = time.monotonic() + grace
    while check() and time.monotonic() < deadline:  # type: ignore[operator]
        time.sleep(0.05)


@dataclass(frozen=True)
class Snapshot:
    """What the process had before a test: the baseline the leak check compares with."""

    threads: frozenset[threading.Thread]
    children: frozenset[int]
    descriptors: frozenset[tuple[int, str]]

    @classmethod
    def take(cls) -> Snapshot:
        return cls(
            frozenset(threading.enumerate()), frozenset(_children()), frozenset(_descriptors())
        )

    def _opened(self) -> list[tuple[int, str]]:
        return sorted(_descriptors() - self.descriptors)

    def leaks(self, grace: float = GRACE) -> list[str]:
        """What is left since the snapshot, once ``grace`` let it go; left children are killed."""
        _settled(lambda: _threads(set(self.threads)), grace)
        _settled(lambda: set(_children()) - self.children, grace)
        _settled(lambda: len(self._opened()) > FD_TOLERANCE, grace)
        if len(self._opened()) > FD_TOLERANCE:
            # An object in a reference cycle (an unclosed sqlite3 connection and
            # its statements) closes its descriptor when the collector runs; it is
            # garbage, not a leak. Collecting only here keeps the check cheap.
            gc.collect()
        problems = []
        if leaked := _threads(set(self.threads)):
            problems.append(f"threads leaked: {leaked}")
        if running := {p: c for p, c in _children().items() if p not in self.children}:
            for pid in running:  # so that the next test does not meet them
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            listed = "; ".join(f"pid {pid}: {cmd}" for pid, cmd in sorted(running.items()))
            problems.append(f"child processes left running (now killed): {listed}")
        opened = self._opened()
        if len(opened) > FD_TOLERANCE:
            problems.append(
                f"{len(opened)} file descriptors left open (tolerance {FD_TOLERANCE}):"
                f" {_describe(opened)}"
            )
        return problems


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Fail a test that leaves threads, child processes or descriptors behind."""
    before = Snapshot.take()
    yield
    if problems := before.leaks():
        pytest.fail("\n".join(problems))
