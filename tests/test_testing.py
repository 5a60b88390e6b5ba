"""FakeMesh delivers what its runners say the way RunnerPool does (see tests/mesh/test_pool.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from narwhal.dispatcher.mesh import LinkState, Mesh, MeshEvents, Source
from narwhal.dispatcher.placement import Placed, Spread
from narwhal.errors import ConfigError, StoreError
from narwhal.mesh import protocol as p
from narwhal.testing import FakeMesh, FakeRunner
from tests.dispatcher.test_placement import job
from tests.support.events import RecordingEvents

KEY = (7, 1)


def run(test: Callable[[FakeMesh, RecordingEvents], Coroutine[Any, Any, None]]) -> None:
    mesh = FakeMesh()
    events = RecordingEvents()
    mesh.attach(events)
    asyncio.run(test(mesh, events))


def job_frame(runner: FakeRunner, key: tuple[int, int] = KEY) -> p.Job:
    assert runner.peer.session is not None
    return p.Job(
        job_id=key[0],
        attempt=key[1],
        runner_session=runner.peer.session,
        repo="/r",
        ref="refs/heads/main",
        sha=None,
        event="push",
    )


def kinds(events: RecordingEvents) -> list[tuple[str, bool]]:
    return [(m.KIND, held) for batch in events.batches for _, m, held in batch]


def test_the_fake_is_a_mesh_and_its_runners_are_peers() -> None:
    async def main(mesh: FakeMesh, events: RecordingEvents) -> None:
        checked: Mesh = mesh  # mypy checks the protocol
        recording: MeshEvents = events
        assert checked.loops() == {} and recording is events
        runner = await mesh.add_runner("r1", 2, {"os": "linux"})
        peer = runner.peer
        assert events.log == [("ready", "r1", ())]
        assert mesh.peers() == [peer] and peer.state == LinkState.READY and peer.free == 2
        assert peer.to_json()["id"] == "r1" and peer.to_json()["jobs"] == []
        assert peer.serves({"os": "linux"}) and not peer.serves({"os": "mac"})
        # The views the dispatcher's helpers take work on it as on a Link.
        placed = Spread().round(mesh.peers()).take(job(1, "queued"))
        assert isinstance(placed, Placed) and placed.peer is peer
        mesh.reserve(peer, KEY)
        mesh.reserve(peer, (8, 1))
        waiting = Spread().explain(job(2, "queued"), mesh.peers())
        assert waiting is not None and waiting.reason == "full", waiting

    run(main)


def test_a_job_runs_to_its_done_which_frees_the_slot_after_it_was_stored() -> None:
    async def main(mesh: FakeMesh, events: RecordingEvents) -> None:
        runner = await mesh.add_runner("r1")
        mesh.reserve(runner.peer, KEY)
        assert mesh.send_job(runner.peer, job_frame(runner))
        assert [(j.job_id, j.attempt) for j in runner.jobs] == [KEY]
        assert mesh.tracks(runner.peer, KEY) and mesh.holder(KEY) is runner.peer
        assert await runner.accept(KEY)
        assert await runner.checked_out(KEY)
        assert await runner.step(KEY, 0, "build")
        assert await runner.log(KEY, b"hello\n")
        assert runner.acked[KEY] == 4
        assert await runner.done(KEY)
        assert runner.acked[KEY] == 5
        assert kinds(events) == [
            ("accept", True),
            ("checked_out", True),
            ("step_started", True),
            ("step_finished", True),
            ("log", True),
            ("done", True),  # stored while the slot was held
        ]
        assert events.kinds()[-2:] == ["frames", "released"]
        assert mesh.holder(KEY) is None and not mesh.tracks(runner.peer, KEY)

    run(main)


def test_a_refused_batch_is_not_acked_and_the_runner_sends_it_again() -> None:
    async def main(mesh: FakeMesh, events: RecordingEvents) -> None:
        runner = await mesh.add_runner("r1")
        mesh.reserve(runner.peer, KEY)
        mesh.send_job(runner.peer, job_frame(runner))
        events.fail = StoreError("disk full")
        assert not await runner.accept(KEY)
        assert KEY not in runner.acked and mesh.holder(KEY) is runner.peer
        assert await runner.accept(KEY)  # the same seq again
        assert runner.acked[KEY] == 0 and kinds(events) == [("accept", True)]

    run(main)


def test_a_done_of_an_attempt_that_is_over_never_reaches_the_dispatcher() -> None:
    async def main(mesh: FakeMesh, events: RecordingEvents) -> None:
        runner = await mesh.add_runner("r1")
        await runner.ready(active=((7, 1, 3),))
        mesh.adopt(runner.peer, KEY, next_seq=3, live=False)
        mesh.cancel(runner.peer, KEY, "superseded")
        assert [c.reason for c in runner.cancels] == ["superseded"]
        assert await runner.log(KEY, b"late")
        assert await runner.done(KEY, "failed")
        assert runner.acked[KEY] == 4 and events.batches == []
        assert runner.peer.held == set() and events.kinds()[-1] == "released"

    run(main)


def test_duplicates_and_gaps_change_nothing() -> None:
    async def main(mesh: FakeMesh, events: RecordingEvents) -> None:
        runner = await mesh.add_runner("r1")
        mesh.adopt(runner.peer, KEY, next_seq=2, live=True)
        assert await runner.log(KEY, b"old", seq=1)
        assert await runner.log(KEY, b"gap", seq=5)
        assert events.batches == []
        assert await runner.log(KEY, b"next", seq=2)
        assert kinds(events) == [("log", True)]

    run(main)


def test_a_reject_frees_its_slot_before_the_dispatcher_hears_of_it() -> None:
    async def main(mesh: FakeMesh, events: RecordingEvents) -> None:
        runner = await mesh.add_runner("r1")
        mesh.reserve(runner.peer, KEY)
        mesh.send_job(runner.peer, job_frame(runner))
        assert await runner.reject(KEY, "no docker")
        assert kinds(events) == [("reject", False)]
        assert events.kinds()[-2:] == ["released", "frames"]
        assert await runner.reject(KEY)  # held no more: a bad frame
        assert mesh.stats().bad_frames == 1 and len(events.batches) == 1

    run(main)


def test_strays_go_to_the_dispatcher_and_are_acked_if_settled() -> None:
    async def main(mesh: FakeMesh, events: RecordingEvents) -> None:
        runner = await mesh.add_runner("r1")
        assert await runner.accept((3, 1))
        assert runner.acked[(3, 1)] == 0
        events.stray = False
        assert await runner.accept((4, 1))
        assert (4, 1) not in runner.acked and mesh.stats().bad_frames == 1

    run(main)


def test_a_lost_runner_frees_its_slots_then_reports_them() -> None:
    async def main(mesh: FakeMesh, events: RecordingEvents) -> None:
        runner = await mesh.add_runner("r1", 3)
        mesh.reserve(runner.peer, (9, 2))
        mesh.reserve(runner.peer, KEY)
        await runner.lose("runner r1 lost: silent for 3.0s")
        assert events.log[-2:] == [
            ("released",),
            ("lost", "r1", [KEY, (9, 2)], "runner r1 lost: silent for 3.0s"),
        ]
        assert mesh.peers() == [] and runner.peer.state == LinkState.LOST
        assert mesh.holder(KEY) is None

    run(main)


def test_a_restarted_runner_is_lost_and_its_new_session_is_not_ready() -> None:
    async def main(mesh: FakeMesh, events: RecordingEvents) -> None:
        runner = await mesh.add_runner("r1")
        mesh.reserve(runner.peer, KEY)
        await runner.ready(session="new")
        assert events.log[-1] == ("lost", "r1", [KEY], "runner r1 restarted")

    run(main)


def test_connect_is_idempotent_and_refusals_are_listed() -> None:
    async def main(mesh: FakeMesh, events: RecordingEvents) -> None:
        peer = mesh.connect("tcp://10.0.0.1:7000", source=Source.MDNS)
        assert peer is not None and peer.state == LinkState.CONNECTING
        assert mesh.connect("tcp://10.0.0.1:7000") is peer and peer.source == Source.STATIC
        runner = await mesh.add_runner("r1", endpoint="tcp://10.0.0.1:7000")
        assert runner.peer is peer and runner.peer.state == LinkState.READY
        mesh.refuse("tcp://10.0.0.2:7000", "its key is not trusted")
        assert mesh.connect("tcp://10.0.0.2:7000") is None
        assert mesh.refused == {"tcp://10.0.0.2:7000": "its key is not trusted"}
        with pytest.raises(ConfigError):
            mesh.connect("http://nope")
        unreachable = await mesh.add_runner("r2")
        unreachable.reachable = False
        assert not mesh.send_job(unreachable.peer, job_frame(unreachable))
        assert mesh.tracks(unreachable.peer, KEY) and unreachable.jobs == []

    run(main)
