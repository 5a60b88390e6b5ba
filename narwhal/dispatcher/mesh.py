"""The dispatcher's seam to its runners: what it may ask of the mesh, what it is told.

``RunnerPool`` (``dispatcher.pool``) is the ZeroMQ implementation and owns
its links entirely: connections, liveness, job streams, the slots each
runner offered. The dispatcher sees runners as read-only ``Peer`` views
and changes nothing on them but through ``Mesh``; the mesh reports back
through ``MeshEvents``. ``narwhal.testing`` ships an in-memory ``Mesh`` for
fast tests of the dispatcher's state machine.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from narwhal.mesh import protocol as p

#: One job attempt: (job id, attempt).
Key = tuple[int, int]


class LinkState(StrEnum):
    """Where a runner link is: the one home of these names (members are their strings).

    ``connecting`` until the runner's READY, then ``ready``; a link that
    goes is ``lost`` and replaced by a new one (``connecting`` again).
    """

    CONNECTING = "connecting"
    READY = "ready"
    LOST = "lost"


class Source(StrEnum):
    """How the dispatcher learnt of a runner endpoint."""

    #: Named by an operator (``--runner``, the API): never dropped by mDNS.
    STATIC = "static"
    #: Announced on the LAN: dropped again when the runner says goodbye.
    MDNS = "mdns"


class Peer(Protocol):
    """One runner as the dispatcher sees it (``links.Link`` is one)."""

    @property
    def runner_id(self) -> str | None: ...

    @property
    def endpoint(self) -> str: ...

    @property
    def source(self) -> Source: ...

    @property
    def state(self) -> LinkState: ...

    @property
    def session(self) -> str | None:
        """The runner process's session, which a JOB for it names (None before READY)."""
        ...

    @property
    def capacity(self) -> int: ...

    @property
    def labels(self) -> Mapping[str, str]: ...

    @property
    def free(self) -> int:
        """Slots it has left (0 unless ready)."""
        ...

    @property
    def report(self) -> p.RunnerState | None:
        """What the runner last said of itself (READY, HEARTBEAT); None: nothing yet."""
        ...

    @property
    def held(self) -> frozenset[Key] | set[Key]:
        """The job attempts it holds, one slot each."""
        ...

    def serves(self, labels: Mapping[str, str]) -> bool: ...

    def to_json(self) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class MeshStats:
    """Counters for ``/health`` and metrics."""

    bad_frames: int
    resent_gaps: int


class MeshEvents(Protocol):
    """What the mesh reports to the dispatcher (``Dispatcher`` implements it)."""

    async def on_ready(self, peer: Peer, ready: p.Ready) -> None:
        """A runner is ready (again); ``ready.active`` lists what it holds."""
        ...

    async def on_frames(self, frames: list[tuple[Peer, p.Message]]) -> None:
        """Live job-stream frames and REJECTs, in order: store them in one unit.

        Raising ``NarwhalError`` means nothing was stored: the mesh leaves
        them unacknowledged and the runners resend.
        """
        ...

    async def on_stray(self, peer: Peer, message: p.Message) -> bool:
        """A job frame outside any stream: True if the job is settled (ACK it)."""
        ...

    async def on_lost(self, peer: Peer, held: Sequence[Key], reason: str) -> None:
        """The runner is gone; ``held``: the attempts it held (their slots are free)."""
        ...

    def on_released(self) -> None:
        """A slot was given back (a DONE, a REJECT, a lost runner): schedule again."""
        ...


class Mesh(Protocol):
    """The runners the dispatcher can see, and what it may ask of them."""

    def attach(self, events: MeshEvents) -> None:
        """Where reports go; called once, before ``loops`` run."""
        ...

    def loops(self) -> dict[str, Callable[[], Awaitable[None]]]:
        """The mesh's long-lived loops by name, for the caller to supervise."""
        ...

    def close(self) -> None: ...

    def peers(self) -> Sequence[Peer]:
        """Every runner link, in connection order."""
        ...

    def connect(self, endpoint: str, *, source: Source = Source.STATIC) -> Peer | None:
        """Connect to a runner endpoint (idempotent); None if it is refused."""
        ...

    @property
    def refused(self) -> Mapping[str, str]:
        """Endpoints refused, and why."""
        ...

    def stats(self) -> MeshStats: ...

    def bad(self, peer: Peer, what: str, count: int = 1) -> None:
        """Count ``count`` bad frames (or READY entries) from ``peer``."""
        ...

    def reserve(self, peer: Peer, key: Key) -> None:
        """Hold one of ``peer``'s slots for ``key`` (before its assignment is stored)."""
        ...

    def release(self, peer: Peer, *keys: Key) -> None:
        """Give slots back (and forget their streams)."""
        ...

    def holder(self, key: Key) -> Peer | None:
        """The runner holding ``key``, if any."""
        ...

    def tracks(self, peer: Peer, key: Key) -> bool:
        """Whether ``peer`` has a stream for ``key`` (frames of it are expected)."""
        ...

    def send_job(self, peer: Peer, job: p.Job) -> bool:
        """Open ``job``'s stream on ``peer`` and send it (resent until answered).

        False if it could not go yet; it is resent all the same.
        """
        ...

    def adopt(self, peer: Peer, key: Key, *, next_seq: int, live: bool) -> None:
        """Track a job a runner's READY lists: it holds a slot until its DONE.

        Not ``live``: its frames are acknowledged and change nothing.
        """
        ...

    def cancel(self, peer: Peer, key: Key, reason: str) -> None:
        """Tell ``peer`` to stop ``key``."""
        ...
