"""In-memory stand-ins for fast tests, shipped with the package (like dramatiq's StubBroker).

``FakeMesh`` implements ``dispatcher.mesh.Mesh`` with no socket: a test
adds runners (``FakeRunner``) and plays them, frame by frame, and looks at
what the dispatcher sent them. Frames reach ``MeshEvents`` the way
``RunnerPool`` delivers them: in order per stream, live frames and REJECTs
in one ``on_frames`` batch, a DONE's slot released after it was stored, a
DONE of an attempt that is over ACKed and released without reaching the
dispatcher, a REJECT's slot released before, job frames outside any stream
through ``on_stray``. ``RecordingEvents`` is a ``MeshEvents`` that records
what a mesh reports, for tests of a mesh itself.

The real pool is tested over real ZeroMQ sockets too (``tests/mesh``);
what this fake promises is checked against both.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from narwhal.dispatcher.links import check_endpoint
from narwhal.dispatcher.mesh import Key, LinkState, MeshEvents, MeshStats, Peer, Source
from narwhal.errors import NarwhalError
from narwhal.mesh import protocol as p


@dataclass(eq=False, kw_only=True)
class FakePeer:
    """A runner link of a ``FakeMesh`` (a ``Peer``); compared by identity, like a ``Link``."""

    endpoint: str
    source: Source = Source.STATIC
    state: LinkState = LinkState.CONNECTING
    runner_id: str | None = None
    session: str | None = None
    version: str | None = None
    capacity: int = 0
    labels: dict[str, str] = field(default_factory=dict)
    held: set[Key] = field(default_factory=set)
    #: The next ``seq`` expected per stream, and whether the stream is live.
    streams: dict[Key, list[Any]] = field(default_factory=dict)

    @property
    def free(self) -> int:
        return max(0, self.capacity - len(self.held)) if self.state == LinkState.READY else 0

    def serves(self, labels: Mapping[str, str]) -> bool:
        return all(self.labels.get(k) == v for k, v in labels.items())

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.runner_id,
            "endpoint": self.endpoint,
            "source": self.source,
            "state": self.state,
            "capacity": self.capacity,
            "free": self.free,
            "labels": self.labels,
            "version": self.version,
            "jobs": sorted(j for j, _ in self.held),
            "last_seen": None,
        }


class FakeRunner:
    """One runner a test plays on a ``FakeMesh``."""

    def __init__(self, mesh: FakeMesh, peer: FakePeer) -> None:
        self.mesh = mesh
        self.peer = peer
        #: What the dispatcher sent it, in order (JOB, CANCEL).
        self.sent: list[p.Message] = []
        #: The highest ``seq`` acknowledged per stream (after it was stored).
        self.acked: dict[Key, int] = {}
        #: False: ``send_job`` fails (a full send queue); the stream is open all the same.
        self.reachable = True
        self._next: dict[Key, int] = {}

    @property
    def jobs(self) -> list[p.Job]:
        return [m for m in self.sent if isinstance(m, p.Job)]

    @property
    def cancels(self) -> list[p.Cancel]:
        return [m for m in self.sent if isinstance(m, p.Cancel)]

    def _seq(self, key: Key, seq: int | None) -> int:
        if seq is None:
            seq = self._next.get(key, 0)
        self._next[key] = seq + 1
        return seq

    async def ready(
        self, *, active: tuple[tuple[int, ...], ...] = (), session: str | None = None
    ) -> p.Ready:
        """Say READY (again); ``active``: ``(job id, attempt, next seq)`` it still runs."""
        for entry in active:
            if len(entry) == 3:
                self._next[(entry[0], entry[1])] = entry[2]
        return await self.mesh._ready(self, active, session)

    async def send(self, *messages: p.Message) -> bool:
        """Send ``messages`` as one batch; False if the dispatcher could not store it."""
        return await self.mesh._deliver(self, messages)

    async def accept(self, key: Key, *, seq: int | None = None) -> bool:
        return await self.send(p.Accept(job_id=key[0], attempt=key[1], seq=self._seq(key, seq)))

    async def checked_out(
        self,
        key: Key,
        *,
        sha: str = "0" * 40,
        pipeline: str = "steps: []\n",
        variants: tuple[dict[str, str], ...] = (),
        seq: int | None = None,
    ) -> bool:
        frame = p.CheckedOut(
            job_id=key[0],
            attempt=key[1],
            seq=self._seq(key, seq),
            sha=sha,
            pipeline=pipeline,
            variants=variants,
        )
        return await self.send(frame)

    async def step(
        self, key: Key, index: int, name: str, status: str = "success", *, seq: int | None = None
    ) -> bool:
        """A step started and finished (two frames, one batch)."""
        started = p.StepStarted(
            job_id=key[0], attempt=key[1], seq=self._seq(key, seq), index=index, name=name
        )
        finished = p.StepFinished(
            job_id=key[0],
            attempt=key[1],
            seq=self._seq(key, None),
            index=index,
            name=name,
            status=status,
            exit_code=0 if status == "success" else 1,
            duration=0.0,
        )
        return await self.send(started, finished)

    async def log(self, key: Key, data: bytes, *, seq: int | None = None) -> bool:
        frame = p.Log(job_id=key[0], attempt=key[1], seq=self._seq(key, seq), data=data)
        return await self.send(frame)

    async def done(
        self, key: Key, status: str = "success", reason: str = "", *, seq: int | None = None
    ) -> bool:
        frame = p.Done(
            job_id=key[0],
            attempt=key[1],
            seq=self._seq(key, seq),
            status=status,
            reason=reason,
            duration=0.0,
        )
        return await self.send(frame)

    async def reject(self, key: Key, reason: str = "busy") -> bool:
        return await self.send(p.Reject(job_id=key[0], attempt=key[1], reason=reason))

    async def lose(self, reason: str = "lost") -> None:
        """The runner goes (killed, silent, said goodbye): what it held is reported lost."""
        await self.mesh._lose(self, reason)


class FakeMesh:
    """An in-memory ``Mesh``: runners are ``FakeRunner``\\ s a test plays."""

    def __init__(self) -> None:
        self._events: MeshEvents | None = None
        self._peers: list[FakePeer] = []
        self.runners: dict[str, FakeRunner] = {}
        self._by_peer: dict[int, FakeRunner] = {}
        self._refused: dict[str, str] = {}
        self.bad_frames = 0
        self.closed = False

    @property
    def events(self) -> MeshEvents:
        if self._events is None:
            raise RuntimeError("FakeMesh: attach(events) first")
        return self._events

    # what a test does

    async def add_runner(
        self,
        runner_id: str,
        capacity: int = 1,
        labels: Mapping[str, str] | None = None,
        *,
        endpoint: str | None = None,
        source: Source = Source.STATIC,
    ) -> FakeRunner:
        """Connect a runner and have it say READY (``on_ready`` runs)."""
        endpoint = endpoint or f"tcp://{runner_id}.fake:{9000 + len(self._peers)}"
        peer = self._find(endpoint) or self._open(endpoint, source)
        peer.runner_id, peer.capacity, peer.labels = runner_id, capacity, dict(labels or {})
        runner = FakeRunner(self, peer)
        self.runners[runner_id] = runner
        self._by_peer[id(peer)] = runner
        await runner.ready()
        return runner

    def refuse(self, endpoint: str, reason: str) -> None:
        """List ``endpoint`` refused (``connect`` then returns None)."""
        self._refused[endpoint] = reason

    # the Mesh protocol

    def attach(self, events: MeshEvents) -> None:
        self._events = events

    def loops(self) -> dict[str, Callable[[], Awaitable[None]]]:
        return {}  # frames come when the test sends them

    def close(self) -> None:
        self.closed = True

    def peers(self) -> list[FakePeer]:
        return list(self._peers)

    def connect(self, endpoint: str, *, source: Source = Source.STATIC) -> FakePeer | None:
        endpoint = check_endpoint(endpoint)
        known = self._find(endpoint)
        if known is not None:
            if source == Source.STATIC:
                known.source = Source.STATIC
            return known
        if endpoint in self._refused:
            return None
        return self._open(endpoint, source)

    @property
    def refused(self) -> Mapping[str, str]:
        return self._refused

    def stats(self) -> MeshStats:
        return MeshStats(bad_frames=self.bad_frames, resent_gaps=0)

    def bad(self, peer: Peer, what: str, count: int = 1) -> None:
        self.bad_frames += count

    def reserve(self, peer: Peer, key: Key) -> None:
        self._own(peer).held.add(key)

    def release(self, peer: Peer, *keys: Key) -> None:
        own = self._own(peer)
        for key in keys:
            own.held.discard(key)
            own.streams.pop(key, None)
        self.events.on_released()

    def holder(self, key: Key) -> FakePeer | None:
        return next((peer for peer in self._peers if key in peer.held), None)

    def tracks(self, peer: Peer, key: Key) -> bool:
        return key in self._own(peer).streams

    def send_job(self, peer: Peer, job: p.Job) -> bool:
        runner = self._runner(peer)
        runner.peer.streams[(job.job_id, job.attempt)] = [0, True]
        runner._next[(job.job_id, job.attempt)] = 0
        if not runner.reachable:
            return False
        runner.sent.append(job)
        return True

    def adopt(self, peer: Peer, key: Key, *, next_seq: int, live: bool) -> None:
        own = self._own(peer)
        own.held.add(key)
        own.streams[key] = [next_seq, live]

    def cancel(self, peer: Peer, key: Key, reason: str) -> None:
        self._runner(peer).sent.append(p.Cancel(job_id=key[0], attempt=key[1], reason=reason))

    # how frames are delivered (as RunnerPool does)

    def _find(self, endpoint: str) -> FakePeer | None:
        return next((peer for peer in self._peers if peer.endpoint == endpoint), None)

    def _open(self, endpoint: str, source: Source) -> FakePeer:
        peer = FakePeer(endpoint=endpoint, source=source)
        self._peers.append(peer)
        return peer

    def _own(self, peer: Peer) -> FakePeer:
        if not isinstance(peer, FakePeer):
            raise TypeError(f"not a peer of this mesh: {peer!r}")
        return peer

    def _runner(self, peer: Peer) -> FakeRunner:
        return self._by_peer[id(self._own(peer))]

    async def _ready(
        self, runner: FakeRunner, active: tuple[tuple[int, ...], ...], session: str | None
    ) -> p.Ready:
        peer = runner.peer
        assert peer.runner_id is not None  # noqa: S101 - set by add_runner
        ready = p.Ready(
            runner_id=peer.runner_id,
            session=session or peer.session or f"{peer.runner_id}-session",
            capacity=peer.capacity,
            labels=dict(peer.labels),
            version="fake",
            active=active,
        )
        if peer.state == LinkState.READY and ready.session != peer.session:
            await self._lose(runner, f"runner {ready.runner_id} restarted")
            return ready
        peer.state, peer.session, peer.version = LinkState.READY, ready.session, ready.version
        await self.events.on_ready(peer, ready)
        return ready

    async def _deliver(self, runner: FakeRunner, messages: Sequence[p.Message]) -> bool:
        peer = runner.peer
        batch: list[tuple[Peer, p.Message]] = []
        for message in messages:
            if isinstance(message, p.STREAM_MESSAGES):
                await self._stream_frame(runner, cast("p.StreamMessage", message), batch)
            elif (
                isinstance(message, p.Reject) and (message.job_id, message.attempt) in peer.streams
            ):
                batch.append((peer, message))
            else:
                self.bad_frames += 1
        return await self._commit(runner, batch)

    async def _stream_frame(
        self, runner: FakeRunner, message: p.StreamMessage, batch: list[tuple[Peer, p.Message]]
    ) -> None:
        key = (message.job_id, message.attempt)
        stream = runner.peer.streams.get(key)
        if stream is None:
            if await self.events.on_stray(runner.peer, message):
                runner.acked[key] = message.seq
            else:
                self.bad_frames += 1
            return
        if message.seq != stream[0]:  # a duplicate or a gap: nothing changes
            return
        stream[0] += 1
        if stream[1]:
            batch.append((runner.peer, message))
        else:
            runner.acked[key] = message.seq
            if type(message) is p.Done:  # an attempt that is over: its DONE frees the slot
                self.release(runner.peer, key)

    async def _commit(self, runner: FakeRunner, batch: list[tuple[Peer, p.Message]]) -> bool:
        if not batch:
            return True
        peer = runner.peer
        rejected = [(m.job_id, m.attempt) for _, m in batch if isinstance(m, p.Reject)]
        if rejected:
            self.release(peer, *rejected)
        try:
            await self.events.on_frames(batch)
        except NarwhalError:
            for _, message in batch:  # rewound: the runner sends them again
                seq = getattr(message, "seq", None)
                key = (message.job_id, message.attempt)  # type: ignore[attr-defined]
                if seq is not None and key in peer.streams:
                    peer.streams[key][0] = min(peer.streams[key][0], seq)
                    runner._next[key] = min(runner._next.get(key, seq), seq)
            return False
        done = []
        for _, message in batch:
            seq = getattr(message, "seq", None)
            key = (message.job_id, message.attempt)  # type: ignore[attr-defined]
            if seq is not None:
                runner.acked[key] = max(seq, runner.acked.get(key, -1))
            if isinstance(message, p.Done):
                done.append(key)
        if done:
            self.release(peer, *done)
        return True

    async def _lose(self, runner: FakeRunner, reason: str) -> None:
        peer = runner.peer
        if peer in self._peers:
            self._peers.remove(peer)
        peer.state = LinkState.LOST
        held = sorted(peer.held)
        peer.held.clear()
        self.events.on_released()
        await self.events.on_lost(peer, held, reason)


class RecordingEvents:
    """A ``MeshEvents`` that records each report, in order, in ``log``.

    ``stray``: what ``on_stray`` answers; ``fail``: raised by the next
    ``on_frames`` (then cleared), as a store that refuses a write would.
    """

    def __init__(self, *, stray: bool = True) -> None:
        self.stray = stray
        self.fail: NarwhalError | None = None
        self.log: list[tuple[Any, ...]] = []
        self.released = 0
        #: Per ``on_frames`` call: each frame, with whether its runner then held its slot.
        self.batches: list[list[tuple[Peer, p.Message, bool]]] = []

    async def on_ready(self, peer: Peer, ready: p.Ready) -> None:
        self.log.append(("ready", peer.runner_id, ready.active))

    async def on_frames(self, frames: list[tuple[Peer, p.Message]]) -> None:
        if self.fail is not None:
            error, self.fail = self.fail, None
            self.log.append(("refused", len(frames)))
            raise error
        self.batches.append(
            [(peer, m, (m.job_id, m.attempt) in peer.held) for peer, m in frames]  # type: ignore[attr-defined]
        )
        self.log.append(("frames", [m.KIND for _, m in frames]))

    async def on_stray(self, peer: Peer, message: p.Message) -> bool:
        self.log.append(("stray", message.KIND, self.stray))
        return self.stray

    async def on_lost(self, peer: Peer, held: Sequence[Key], reason: str) -> None:
        self.log.append(("lost", peer.runner_id, list(held), reason))

    def on_released(self) -> None:
        self.released += 1
        self.log.append(("released",))

    def kinds(self) -> list[str]:
        """The reports so far, by name."""
        return [entry[0] for entry in self.log]
