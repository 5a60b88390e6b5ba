"""In-memory stand-ins for fast tests, shipped with the package (like dramatiq's StubBroker).

``FakeMesh`` implements ``dispatcher.mesh.Mesh`` with no socket: a test
adds runners (``FakeRunner``) and plays them, frame by frame, and looks at
what the dispatcher sent them. Frames reach ``MeshEvents`` the way
``RunnerPool`` delivers them: in order per stream, live frames and REJECTs
in one ``on_frames`` batch, a DONE's slot released after it was stored, a
DONE of an attempt that is over ACKed and released without reaching the
dispatcher, a REJECT's slot released before, job frames outside any stream
through ``on_stray``.

The same promises are tested of both, the pool over real ZeroMQ sockets
(``tests/mesh/test_pool.py``, ``tests/test_testing.py``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from narwhal.dispatcher.links import check_endpoint, runner_json
from narwhal.dispatcher.mesh import Key, LinkState, MeshEvents, MeshStats, Peer, Source
from narwhal.errors import NarwhalError
from narwhal.mesh import protocol as p

F = TypeVar("F", bound=p.StreamMessage)


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
    #: What the runner reports of itself; a test sets it (or ``ready(state=...)``).
    report: p.RunnerState | None = None
    held: set[Key] = field(default_factory=set)
    #: The next ``seq`` expected per stream, and whether the stream is live.
    streams: dict[Key, list[Any]] = field(default_factory=dict)

    @property
    def free(self) -> int:
        return max(0, self.capacity - len(self.held)) if self.state == LinkState.READY else 0

    def serves(self, labels: Mapping[str, str]) -> bool:
        return all(self.labels.get(k) == v for k, v in labels.items())

    def to_json(self) -> dict[str, Any]:
        return runner_json(self, self.version, None)


class FakeRunner:
    """One runner a test plays on a ``FakeMesh``.

    Frames get the next ``seq`` of their stream unless one is given (to
    play a duplicate or a gap); each call is one batch and returns False if
    the dispatcher could not store it (``NarwhalError``): nothing of it was
    acknowledged and the stream is rewound, so calling again resends.
    """

    def __init__(self, mesh: FakeMesh, peer: FakePeer) -> None:
        self.mesh = mesh
        self.peer = peer
        #: What the dispatcher sent it, in order (JOB, CANCEL).
        self.sent: list[p.Message] = []
        #: The highest ``seq`` acknowledged per stream (after it was stored).
        self.acked: dict[Key, int] = {}
        #: The ``seq`` its next frame of each stream carries.
        self.next_seq: dict[Key, int] = {}
        #: False: ``send_job`` fails (a full send queue); the stream is open all the same.
        self.reachable = True

    @property
    def jobs(self) -> list[p.Job]:
        return [m for m in self.sent if isinstance(m, p.Job)]

    @property
    def cancels(self) -> list[p.Cancel]:
        return [m for m in self.sent if isinstance(m, p.Cancel)]

    def _frame(self, cls: type[F], key: Key, seq: int | None, **fields: Any) -> F:
        seq = self.next_seq.get(key, 0) if seq is None else seq
        self.next_seq[key] = seq + 1
        return cls(job_id=key[0], attempt=key[1], seq=seq, **fields)

    async def ready(
        self,
        *,
        active: tuple[tuple[int, ...], ...] = (),
        session: str | None = None,
        state: p.RunnerState | None = None,
    ) -> p.Ready:
        """Say READY (again); ``active``: ``(job id, attempt, next seq)`` it still runs.

        A new ``session`` is a restarted runner: it is lost (as the pool
        reconnects to it afresh); ``add_runner`` brings it back. ``state``:
        what it reports of itself (kept as the peer's ``report``).
        """
        if state is not None:
            self.peer.report = state
        for entry in active:
            if len(entry) == 3:
                self.next_seq[(entry[0], entry[1])] = entry[2]
        return await self.mesh.say_ready(self, active, session)

    def beat(self, state: p.RunnerState) -> None:
        """A HEARTBEAT carrying a new ``state``: the pool keeps it as the peer's report."""
        self.peer.report = state

    async def send(self, *messages: p.Message) -> bool:
        """Send ``messages`` as one batch; False if the dispatcher could not store it."""
        return await self.mesh.deliver(self, messages)

    async def accept(self, key: Key, *, seq: int | None = None) -> bool:
        return await self.send(self._frame(p.Accept, key, seq))

    async def checked_out(
        self,
        key: Key,
        *,
        sha: str = "0" * 40,
        pipeline: str = "steps: []\n",
        variants: tuple[dict[str, str], ...] = (),
        seq: int | None = None,
    ) -> bool:
        fields = {"sha": sha, "pipeline": pipeline, "variants": variants}
        return await self.send(self._frame(p.CheckedOut, key, seq, **fields))

    async def step(
        self, key: Key, index: int, name: str, status: str = "success", *, seq: int | None = None
    ) -> bool:
        """A step started and finished (two frames, one batch)."""
        started = self._frame(p.StepStarted, key, seq, index=index, name=name)
        exit_code = 0 if status == "success" else 1
        finished = self._frame(
            p.StepFinished,
            key,
            None,
            **{"index": index, "name": name, "status": status, "exit_code": exit_code},
            duration=0.0,
        )
        return await self.send(started, finished)

    async def log(self, key: Key, data: bytes, *, seq: int | None = None) -> bool:
        return await self.send(self._frame(p.Log, key, seq, data=data))

    async def done(
        self, key: Key, status: str = "success", reason: str = "", *, seq: int | None = None
    ) -> bool:
        frame = self._frame(p.Done, key, seq, status=status, reason=reason, duration=0.0)
        return await self.send(frame)

    async def reject(self, key: Key, reason: str = "busy") -> bool:
        return await self.send(p.Reject(job_id=key[0], attempt=key[1], reason=reason))

    async def lose(self, reason: str = "lost") -> None:
        """The runner goes (killed, silent, said goodbye): what it held is reported lost."""
        await self.mesh.lose(self, reason)


class FakeMesh:
    """An in-memory ``Mesh``: runners are ``FakeRunner``\\ s a test plays."""

    def __init__(self) -> None:
        self._events: MeshEvents | None = None
        self._peers: list[FakePeer] = []
        self.runners: dict[str, FakeRunner] = {}
        self._by_peer: dict[FakePeer, FakeRunner] = {}
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
        self._by_peer[peer] = runner
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
        runner.next_seq[(job.job_id, job.attempt)] = 0
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

    # what FakeRunner calls: frames delivered as RunnerPool delivers them

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
        return self._by_peer[self._own(peer)]

    async def say_ready(
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
            state=peer.report,
        )
        if peer.state == LinkState.READY and ready.session != peer.session:
            await self.lose(runner, f"runner {ready.runner_id} restarted")
            return ready
        peer.state, peer.session, peer.version = LinkState.READY, ready.session, ready.version
        await self.events.on_ready(peer, ready)
        return ready

    async def deliver(self, runner: FakeRunner, messages: Sequence[p.Message]) -> bool:
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
                    runner.next_seq[key] = min(runner.next_seq.get(key, seq), seq)
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

    async def lose(self, runner: FakeRunner, reason: str) -> None:
        peer = runner.peer
        if peer in self._peers:
            self._peers.remove(peer)
        peer.state = LinkState.LOST
        held = sorted(peer.held)
        peer.held.clear()
        self.events.on_released()
        await self.events.on_lost(peer, held, reason)
