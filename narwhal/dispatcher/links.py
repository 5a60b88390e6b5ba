"""The dispatcher's view of each runner connection (a ``mesh.Peer``).

A ``Link`` is one outgoing ZeroMQ connection to a runner endpoint under one
routing alias. Aliases are never reused within a process: libzmq aborts the
whole process when a ``CONNECT_ROUTING_ID`` is used twice, even after a
disconnect, so every reconnect gets a new generation number.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from narwhal.dispatcher.mesh import Key, LinkState, Peer, Source
from narwhal.errors import ConfigError
from narwhal.mesh import protocol as p
from narwhal.redact import redacted

log = logging.getLogger(__name__)

#: Reconnect back-off for a runner that does not answer (Paranoid Pirate).
BACKOFF_MAX = 32.0

#: Bound once: an enum member's attribute lookup costs 8 times a comparison
#: (Python 3.11), and ``free`` is read for every runner every round.
_READY = LinkState.READY


@dataclass(slots=True)
class Stream:
    """The dispatcher's side of one job stream: the next ``seq`` it expects.

    ``live`` is False for an attempt that was superseded or already ended:
    its frames are acknowledged (so the runner can forget them) but change
    nothing.
    """

    expected: int = 0
    live: bool = True
    #: The JOB frame, until the runner's first frame shows it arrived; sent
    #: again if no answer comes (a frame can be lost when a connection drops).
    request: bytes | None = None
    sent_at: float = 0.0


@dataclass(slots=True, kw_only=True)
class Link:
    """One connection to a runner and the slots it offered on it.

    Only ``RunnerPool`` changes it; everyone else reads it as a ``Peer``.
    """

    endpoint: str
    alias: bytes
    source: Source = Source.STATIC
    state: LinkState = LinkState.CONNECTING
    runner_id: str | None = None
    #: The z85 CURVE key its READY was accepted with; every later frame must
    #: carry it (None: no READY yet, or the mesh is not authenticated).
    key: str | None = None
    session: str | None = None
    version: str | None = None
    capacity: int = 0
    labels: dict[str, str] = field(default_factory=dict)
    #: What the runner last reported of itself (READY, HEARTBEAT).
    report: p.RunnerState | None = None
    #: (job id, attempt) pairs this runner holds; one slot each.
    jobs: set[Key] = field(default_factory=set)
    #: Job streams on this connection, by (job id, attempt).
    streams: dict[Key, Stream] = field(default_factory=dict)
    connected_at: float = field(default_factory=time.monotonic)
    last_seen: float = 0.0
    last_seen_wall: float | None = None
    #: When libzmq saw the TCP connection drop (a killed runner's closes at
    #: once); cleared by the next frame. Shortens the wait for a dead runner.
    disconnected_at: float | None = None
    last_beat: float = 0.0
    backoff: float = 1.0

    @property
    def free(self) -> int:
        return max(0, self.capacity - len(self.jobs)) if self.state == _READY else 0

    @property
    def held(self) -> set[Key]:
        return self.jobs

    def serves(self, labels: Mapping[str, str]) -> bool:
        return all(self.labels.get(k) == v for k, v in labels.items())

    def seen(self) -> None:
        self.last_seen = time.monotonic()
        self.last_seen_wall = time.time()
        self.disconnected_at = None

    def to_json(self) -> dict[str, Any]:
        return runner_json(self, self.version, self.last_seen_wall)


def runner_json(peer: Peer, version: str | None, last_seen: float | None) -> dict[str, Any]:
    """A runner as the API shows it (``GET /api/runners``), for any ``Peer``."""
    return {
        "id": peer.runner_id,
        "endpoint": peer.endpoint,
        "source": peer.source,
        "state": peer.state,
        "capacity": peer.capacity,
        "free": peer.free,
        "labels": peer.labels,
        "version": version,
        "jobs": sorted(j for j, _ in peer.held),
        "last_seen": last_seen,
        "report": report_json(peer.report),
    }


def report_json(report: p.RunnerState | None) -> dict[str, Any] | None:
    """A runner's ``RunnerState`` for API answers; mirrors' URLs never show credentials."""
    if report is None:
        return None
    shown = dataclasses.asdict(report)
    shown["images"] = list(report.images)
    shown["mirrors"] = [{**m, "repo": redacted(m["repo"])} for m in shown["mirrors"]]
    return shown


class Ceiling:
    """The most slots a runner may claim (``--max-runner-capacity``).

    A larger claim is clamped, not refused: a runner configured with more
    slots than the operator allows still serves with the allowed number,
    and what a READY can claim (slots, jobs listed in ``active``) is bounded
    either way. Logged once per runner id.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._warned: set[str] = set()

    def clamp(self, runner_id: str, claimed: int) -> int:
        if claimed <= self.limit:
            return max(0, claimed)
        if runner_id not in self._warned:
            if len(self._warned) >= 1024:  # ids are claims: bound what they cost
                self._warned.clear()
            self._warned.add(runner_id)
            log.warning(
                "runner %s claims capacity %d: clamped to %d (--max-runner-capacity)",
                runner_id,
                claimed,
                self.limit,
            )
        return self.limit


def check_endpoint(url: str) -> str:
    """Validate a runner endpoint like ``tcp://host:port``; return it normalised."""
    url = url.strip()
    scheme, sep, rest = url.partition("://")
    host, colon, port = rest.rpartition(":")
    if scheme not in ("tcp", "ipc") or not sep or not rest:
        raise ConfigError(f"runner endpoint must look like tcp://HOST:PORT, got {url!r}")
    if scheme == "tcp" and (
        not colon or not host or not port.isdigit() or not 0 < int(port) < 65536
    ):
        raise ConfigError(f"runner endpoint must look like tcp://HOST:PORT, got {url!r}")
    return url
