"""RunnerPool as a ``Mesh``, over real ZeroMQ sockets, reporting to a recording ``MeshEvents``.

Each test plays a runner by hand (``RawRunner``) and checks what the pool
now does on its own: slots released on DONE (after the frame was stored),
on REJECT (before) and on a lost runner (then reported with what it held),
DONEs of attempts that are over acknowledged without reaching the
dispatcher, and ACKs only for what was stored.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypeVar

import zmq.asyncio

from narwhal.config import MeshConfig
from narwhal.dispatcher.links import Link
from narwhal.dispatcher.liveness import silence
from narwhal.dispatcher.mesh import LinkState, Mesh, Source
from narwhal.dispatcher.pool import RunnerPool
from narwhal.errors import StoreError
from narwhal.mesh import protocol as p
from narwhal.supervise import spawn
from tests.support.events import RecordingEvents
from tests.support.eventually import eventually_async
from tests.support.peers import RawRunner

#: A raw runner sends no heartbeats: long enough for a test to run (a fast
#: one, ``QUICK``, for the tests of a runner that goes).
MESH = MeshConfig(heartbeat_interval=1.0, liveness=3, linger_ms=0)
QUICK = MeshConfig(heartbeat_interval=0.1, liveness=3, linger_ms=0)
KEY = (7, 1)

M = TypeVar("M", bound=p.Message)


async def recv(raw: RawRunner, kind: type[M], timeout: float = 5) -> M:
    """The next ``kind`` frame the runner gets (others skipped), without blocking the loop."""
    deadline = time.monotonic() + timeout
    while True:
        while raw.sock.poll(0):
            message = p.decode(raw.sock.recv())
            if isinstance(message, kind):
                return message
        assert time.monotonic() < deadline, f"no {kind.KIND} frame from the pool"
        await asyncio.sleep(0.01)


async def quiet(raw: RawRunner, kind: type[p.Message], seconds: float = 0.3) -> None:
    """Nothing of type ``kind`` reaches the runner for ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        while raw.sock.poll(0):
            message = p.decode(raw.sock.recv())
            assert not isinstance(message, kind), message
        await asyncio.sleep(0.01)


@asynccontextmanager
async def pool(config: MeshConfig = MESH) -> AsyncIterator[tuple[RunnerPool, RecordingEvents]]:
    ctx = zmq.asyncio.Context()
    mesh = RunnerPool(config, ctx)
    events = RecordingEvents()
    mesh.attach(events)
    tasks: set[asyncio.Task[None]] = set()
    for name, loop in mesh.loops().items():  # as the dispatcher runs them
        spawn(tasks, f"dispatcher {name} loop", loop)
    try:
        yield mesh, events
    finally:
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        mesh.close()
        ctx.term()


async def ready(
    mesh: RunnerPool, raw: RawRunner, runner_id: str = "r1", source: Source = Source.STATIC
) -> Link:
    """Connect to ``raw`` and have it say READY; the ready link."""
    mesh.connect(raw.endpoint, source=source)
    hello = await recv(raw, p.Hello)
    raw.ready(runner_id, session="s-" + runner_id, capacity=2)
    await eventually_async(
        lambda: any(k.state == LinkState.READY for k in mesh.peers()), what="READY"
    )
    assert hello.session
    return mesh.peers()[0]


def job(link: Link, key: tuple[int, int] = KEY) -> p.Job:
    assert link.session is not None
    return p.Job(
        job_id=key[0],
        attempt=key[1],
        runner_session=link.session,
        repo="/r",
        ref="refs/heads/main",
        sha=None,
        event="push",
    )


def frames(events: RecordingEvents) -> list[tuple[str, bool]]:
    """Every frame handed over so far: its kind, and whether its slot was held then."""
    return [(m.KIND, held) for batch in events.batches for _, m, held in batch]


def test_the_pool_is_a_mesh() -> None:
    async def main() -> None:
        async with pool() as (mesh, _):
            checked: Mesh = mesh  # mypy checks the protocol
            assert set(checked.loops()) == {"receive", "liveness", "monitor"}
            assert checked.peers() == [] and checked.stats().bad_frames == 0

    asyncio.run(main())


def test_a_done_is_stored_then_acked_and_then_frees_its_slot() -> None:
    async def main() -> None:
        raw = RawRunner()
        try:
            async with pool() as (mesh, events):
                link = await ready(mesh, raw)
                assert events.log[0] == ("ready", "r1", ())
                mesh.reserve(link, KEY)
                assert mesh.holder(KEY) is link and link.held == {KEY} and link.free == 1
                assert mesh.send_job(link, job(link))
                got = await recv(raw, p.Job)
                assert (got.job_id, got.attempt) == KEY and mesh.tracks(link, KEY)
                raw.send(p.Accept(job_id=7, attempt=1, seq=0))
                assert (await recv(raw, p.Ack)).streams == ((7, 1, 0),)
                raw.send(
                    p.Done(job_id=7, attempt=1, seq=1, status="success", reason="", duration=0)
                )
                assert (await recv(raw, p.Ack)).streams == ((7, 1, 1),)
                # Stored while the slot was still held; released only after.
                assert frames(events) == [("accept", True), ("done", True)]
                assert events.kinds()[-2:] == ["frames", "released"]
                assert link.held == set() and not mesh.tracks(link, KEY)
                assert mesh.holder(KEY) is None
        finally:
            raw.close()

    asyncio.run(main())


def test_a_batch_the_store_refuses_is_not_acked_and_is_taken_again_when_resent() -> None:
    async def main() -> None:
        raw = RawRunner()
        try:
            async with pool() as (mesh, events):
                link = await ready(mesh, raw)
                mesh.reserve(link, KEY)
                mesh.send_job(link, job(link))
                await recv(raw, p.Job)
                events.fail = StoreError("disk full")
                done = p.Done(job_id=7, attempt=1, seq=0, status="success", reason="", duration=0)
                raw.send(done)
                await eventually_async(
                    lambda: ("refused", 1) in events.log, what="the refused batch"
                )
                await quiet(raw, p.Ack)
                assert link.held == {KEY} and mesh.tracks(link, KEY)  # nothing was stored
                raw.send(done)  # the runner resends from its first unacknowledged frame
                assert (await recv(raw, p.Ack)).streams == ((7, 1, 0),)
                assert frames(events) == [("done", True)] and link.held == set()
        finally:
            raw.close()

    asyncio.run(main())


def test_a_done_of_an_attempt_that_is_over_is_acked_and_frees_its_slot_unseen() -> None:
    async def main() -> None:
        raw = RawRunner()
        try:
            async with pool() as (mesh, events):
                link = await ready(mesh, raw)
                mesh.adopt(link, KEY, next_seq=3, live=False)
                assert link.held == {KEY} and mesh.tracks(link, KEY)
                raw.send(p.Log(job_id=7, attempt=1, seq=3, data=b"late"))
                assert (await recv(raw, p.Ack)).streams == ((7, 1, 3),)
                released = events.released
                raw.send(p.Done(job_id=7, attempt=1, seq=4, status="failed", reason="", duration=0))
                assert (await recv(raw, p.Ack)).streams == ((7, 1, 4),)
                assert events.batches == []  # nothing of it reached the dispatcher
                assert link.held == set() and not mesh.tracks(link, KEY)
                assert events.released == released + 1
        finally:
            raw.close()

    asyncio.run(main())


def test_an_adopted_live_stream_goes_on_from_the_seq_the_runner_listed() -> None:
    async def main() -> None:
        raw = RawRunner()
        try:
            async with pool() as (mesh, events):
                link = await ready(mesh, raw)
                mesh.adopt(link, KEY, next_seq=5, live=True)
                raw.send(p.Log(job_id=7, attempt=1, seq=4, data=b"already stored"))
                assert (await recv(raw, p.Ack)).streams == ((7, 1, 4),)  # a duplicate
                raw.send(p.Log(job_id=7, attempt=1, seq=5, data=b"new"))
                assert (await recv(raw, p.Ack)).streams == ((7, 1, 5),)
                assert frames(events) == [("log", True)]
                raw.send(p.Log(job_id=7, attempt=1, seq=8, data=b"after a gap"))
                assert (await recv(raw, p.Ack)).streams == ((7, 1, 5),)  # resend from 6
                assert mesh.stats().resent_gaps == 1 and frames(events) == [("log", True)]
        finally:
            raw.close()

    asyncio.run(main())


def test_a_reject_frees_the_slot_before_the_dispatcher_hears_of_it() -> None:
    async def main() -> None:
        raw = RawRunner()
        try:
            async with pool() as (mesh, events):
                link = await ready(mesh, raw)
                mesh.reserve(link, KEY)
                mesh.send_job(link, job(link))
                await recv(raw, p.Job)
                raw.send(p.Reject(job_id=7, attempt=1, reason="no docker"))
                await eventually_async(lambda: events.batches, what="the REJECT handed over")
                assert frames(events) == [("reject", False)]
                assert events.kinds()[-2:] == ["released", "frames"]
                assert not mesh.tracks(link, KEY) and mesh.holder(KEY) is None
                raw.send(p.Reject(job_id=7, attempt=1, reason="again"))  # held no more
                await eventually_async(lambda: mesh.stats().bad_frames == 1, what="a bad frame")
                assert len(events.batches) == 1
        finally:
            raw.close()

    asyncio.run(main())


def test_a_lost_runner_frees_its_slots_then_reports_what_it_held() -> None:
    async def main() -> None:
        raw = RawRunner()
        async with pool(QUICK) as (mesh, events):
            link = await ready(mesh, raw)
            mesh.reserve(link, (9, 2))
            mesh.adopt(link, KEY, next_seq=0, live=True)
            raw.close()
            await eventually_async(lambda: "lost" in events.kinds(), what="the runner lost")
            lost = events.log[events.kinds().index("lost")]
            assert lost[:3] == ("lost", "r1", [KEY, (9, 2)]) and "lost: " in lost[3]
            assert events.kinds()[events.kinds().index("lost") - 1] == "released"
            assert link.held == set() and link.state == LinkState.LOST
            assert mesh.holder(KEY) is None
            assert [k.state for k in mesh.peers()] == [LinkState.CONNECTING]  # trying again

    asyncio.run(main())


def test_stray_frames_are_acked_if_settled_and_counted_bad_if_not() -> None:
    async def main() -> None:
        raw = RawRunner()
        try:
            async with pool() as (mesh, events):
                await ready(mesh, raw)
                raw.send(p.Accept(job_id=3, attempt=1, seq=0))
                assert (await recv(raw, p.Ack)).streams == ((3, 1, 0),)
                events.stray = False
                raw.send(p.Accept(job_id=4, attempt=1, seq=0))
                await eventually_async(lambda: mesh.stats().bad_frames == 1, what="a bad frame")
                await quiet(raw, p.Ack)
                assert events.log[-2:] == [("stray", "accept", True), ("stray", "accept", False)]
        finally:
            raw.close()

    asyncio.run(main())


def test_cancel_tells_the_runner_and_release_forgets_the_stream() -> None:
    async def main() -> None:
        raw = RawRunner()
        try:
            async with pool() as (mesh, events):
                link = await ready(mesh, raw)
                mesh.reserve(link, KEY)
                mesh.send_job(link, job(link))
                await recv(raw, p.Job)
                mesh.cancel(link, KEY, "cancelled by user")
                cancel = await recv(raw, p.Cancel)
                assert (cancel.job_id, cancel.attempt, cancel.reason) == (7, 1, "cancelled by user")
                released = events.released
                mesh.release(link, KEY)
                assert not mesh.tracks(link, KEY) and link.held == set()
                assert events.released == released + 1
        finally:
            raw.close()

    asyncio.run(main())


def test_a_second_claimant_of_a_runner_id_is_refused_and_reported() -> None:
    async def main() -> None:
        first, second = RawRunner(), RawRunner()
        try:
            async with pool() as (mesh, events):
                await ready(mesh, first)
                assert mesh.connect(second.endpoint) is not None
                await recv(second, p.Hello)
                second.ready("r1", session="other")
                refused = await recv(second, p.Refused)
                assert "already connected from" in refused.reason
                assert "already connected from" in mesh.refused[second.endpoint]
                assert [k.endpoint for k in mesh.peers()] == [first.endpoint]
                # Never ready, so no runner id and nothing held; reported lost all the same.
                assert ("lost", None, [], mesh.refused[second.endpoint]) in events.log
                assert mesh.connect(first.endpoint) is mesh.peers()[0]  # idempotent
        finally:
            first.close()
            second.close()

    asyncio.run(main())


def test_reports_before_attach_fail_loudly() -> None:
    async def main() -> None:
        ctx = zmq.asyncio.Context()
        mesh = RunnerPool(MESH, ctx)
        try:
            link = mesh.connect("tcp://127.0.0.1:9")
            assert link is not None
            try:
                mesh.release(link)
            except RuntimeError as e:
                assert "attach" in str(e)
            else:
                raise AssertionError("released without events")
        finally:
            mesh.close()
            ctx.term()

    asyncio.run(main())


def test_a_goodbye_drops_a_discovered_runner_and_reports_what_it_held() -> None:
    async def main() -> None:
        raw = RawRunner()
        try:
            async with pool() as (mesh, events):
                link = await ready(mesh, raw, source=Source.MDNS)
                assert link.source == Source.MDNS
                mesh.reserve(link, KEY)
                await mesh.forget(raw.endpoint, "runner r1 said goodbye")
                assert events.log[-2:] == [
                    ("released",),
                    ("lost", "r1", [KEY], "runner r1 said goodbye"),
                ]
                assert mesh.peers() == [] and link.held == set()
        finally:
            raw.close()

    asyncio.run(main())


def test_silence_is_death_sooner_once_the_connection_dropped() -> None:
    link = Link(endpoint="tcp://127.0.0.1:9", alias=b"1", state=LinkState.READY)
    link.last_seen = 100.0
    assert silence(link, 102.9, MESH) == ""
    assert silence(link, 103.5, MESH) == "silent for 3.5s"
    link.disconnected_at = 101.0
    assert silence(link, 102.4, MESH) == ""
    assert silence(link, 102.6, MESH) == "connection closed and silent for 2.6s"
