"""Frames are bound to who sent them: attacks by a connected peer on a real dispatcher.

A raw DEALER (``tests.support.peers.RawRunner``) speaks the protocol next to
real ``narwhal runner`` processes and lies: it lists jobs it does not hold,
forges their frames, claims absurd capacity. None of it may change a job,
stall the dispatcher or stop its liveness checks.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from narwhal.mesh import protocol as p
from tests.support.cluster import Cluster
from tests.support.eventually import eventually
from tests.support.peers import RawRunner
from tests.support.repos import Repo

MakeRepo = Callable[..., Repo]


#: Makes a raw peer whose key the cluster trusts as the runner id given.
Raw = Callable[[str], RawRunner]


@pytest.fixture
def raw(cluster: Cluster) -> Iterator[Raw]:
    peers: list[RawRunner] = []

    def make(runner_id: str) -> RawRunner:
        peers.append(cluster.raw_runner(runner_id))
        return peers[-1]

    yield make
    for peer in peers:
        if not peer.sock.closed:
            peer.close()


def _pipeline(script: str) -> dict[str, str]:
    lines = "".join(f"      - {line}\n" for line in script.strip().splitlines())
    return {"narwhal.yml": f"steps:\n  - name: work\n    commands:\n{lines}"}


def _runner(cluster: Cluster, runner_id: str) -> dict[str, Any] | None:
    for runner in cluster.client().http.get("/api/runners").json()["runners"]:
        if runner["id"] == runner_id:
            return dict(runner)
    return None


def _ready(cluster: Cluster, runner_id: str) -> bool:
    runner = _runner(cluster, runner_id)
    return runner is not None and runner["state"] == "ready"


def test_ready_with_unknown_job_then_disconnect_leaves_liveness_working(
    cluster: Cluster, raw: Raw, make_repo: MakeRepo
) -> None:
    # Trusted before the dispatcher reads its allow-list: never refused first.
    peer = raw("ghost")
    for name in ("a", "b"):
        cluster.start_runner(name)
    api = cluster.start_dispatcher()
    cluster.wait_ready(2)
    cluster.attach(peer)
    ready = peer.ready("ghost", active=((424242, 1, 0),))
    assert len(p.encode(ready)) < 120  # the 118-byte frame of the report
    eventually(lambda: _ready(cluster, "ghost"), what="ghost ready")
    peer.close()
    eventually(lambda: not _ready(cluster, "ghost"), what="ghost lost")
    # Liveness must still work: a real runner killed now is detected.
    job_id = api.submit(make_repo(_pipeline("echo attempt-$NARWHAL_JOB_ATTEMPT\nsleep 1")))
    api.wait(job_id, {"running"})
    first = cluster.job_holder(job_id)
    cluster.kill(cluster.runners[first])
    job = api.wait(job_id, timeout=20)
    assert job["state"] == "success" and job["attempt"] == 2 and job["runner_id"] != first
    assert "attempt-2" in api.log(job_id)
    assert cluster.dispatcher is not None
    assert not [line for line in cluster.dispatcher.stderr_lines if "crashed" in line]


def test_a_lost_runners_job_is_requeued_once_the_store_takes_writes_again(
    cluster: Cluster, make_repo: MakeRepo
) -> None:
    for name in ("a", "b"):
        cluster.start_runner(name)
    api = cluster.start_dispatcher()
    cluster.wait_ready(2)
    job_id = api.submit(make_repo(_pipeline("echo attempt-$NARWHAL_JOB_ATTEMPT\nsleep 1")))
    api.wait(job_id, {"running"})
    first = cluster.job_holder(job_id)
    # Another process holds SQLite's write lock while the runner is found lost.
    blocker = sqlite3.connect(cluster.data / "narwhal.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        cluster.kill(cluster.runners[first])
        time.sleep(2)  # lost after 0.6 s; its requeue refused meanwhile
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    job = api.wait(job_id, timeout=20)
    assert job["state"] == "success" and job["attempt"] == 2 and job["runner_id"] != first
    assert cluster.dispatcher is not None
    assert any("cannot requeue" in line for line in cluster.dispatcher.stderr_lines)


def test_a_claimant_of_a_lost_runners_id_inherits_nothing(
    cluster: Cluster, raw: Raw, make_repo: MakeRepo
) -> None:
    for name in ("a", "b"):
        cluster.start_runner(name)
    # The raw peer sends no heartbeats: it must stay ready while it lies (a
    # killed runner is still found lost at once: its connection closes).
    api = cluster.start_dispatcher("--liveness", "50")
    cluster.wait_ready(2)
    job_id = api.submit(make_repo(_pipeline("echo attempt-$NARWHAL_JOB_ATTEMPT\nsleep 1")))
    api.wait(job_id, {"running"})
    first = cluster.job_holder(job_id)
    peer = cluster.attach(raw(first))
    blocker = sqlite3.connect(cluster.data / "narwhal.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # the requeue waits: the store still says `first`
    try:
        cluster.kill(cluster.runners[first])
        eventually(lambda: not _ready(cluster, first), what="runner lost")
        peer.ready(first, active=((job_id, 1, 0),))
        cancel = peer.recv_until(p.Cancel)
        assert isinstance(cancel, p.Cancel) and (cancel.job_id, cancel.attempt) == (job_id, 1)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    key = {"job_id": job_id, "attempt": 1}
    peer.send(p.Log(**key, seq=0, data=b"forged-log\n"))
    peer.send(p.Done(**key, seq=1, status="success", reason="forged", duration=0))
    job = api.wait(job_id, timeout=20)
    assert job["state"] == "success" and job["attempt"] == 2 and job["runner_id"] != first
    assert "forged" not in job["reason"] and "forged" not in api.log(job_id)
    ends = [t for t in job["transitions"] if t["state"] == "success"]
    assert [t["attempt"] for t in ends] == [2]


def test_ready_with_20000_active_entries_does_not_lose_a_healthy_runner(
    cluster: Cluster, raw: Raw, make_repo: MakeRepo
) -> None:
    # Trusted before the dispatcher reads its allow-list: never refused first.
    peer = raw("flood")
    cluster.start_runner("real")
    # A ceiling above the flood: all 20,000 entries are looked at, in one read.
    api = cluster.start_dispatcher("--max-runner-capacity", "30000")
    cluster.wait_ready(1)
    cluster.attach(peer)
    job_id = api.submit(make_repo(_pipeline("echo real-work\nsleep 2")))
    api.wait(job_id, {"running"})
    before = cluster.health()["bad_frames"]
    flood = tuple((job_id if i == 0 else 1_000_000 + i, 1, 0) for i in range(20_000))
    peer.ready("flood", capacity=20_000, active=flood)
    eventually(lambda: _ready(cluster, "flood"), what="flood ready")
    flood_link = _runner(cluster, "flood")
    assert flood_link is not None and flood_link["jobs"] == []
    job = api.wait(job_id)
    assert job["state"] == "success" and job["attempt"] == 1 and job["runner_id"] == "real"
    reasons = " ".join(t["reason"] for t in job["transitions"])
    assert "lost" not in reasons, reasons
    assert cluster.health()["bad_frames"] >= before + 20_000


def test_forged_frames_for_another_runners_job_change_nothing(
    cluster: Cluster, raw: Raw, make_repo: MakeRepo
) -> None:
    # Trusted before the dispatcher reads its allow-list: never refused first.
    peer = raw("liar")
    cluster.start_runner("real")
    # The raw peer sends no heartbeats: it must stay ready while it lies.
    api = cluster.start_dispatcher("--liveness", "50")
    cluster.wait_ready(1)
    cluster.attach(peer)
    repo = make_repo(_pipeline("echo real-output\nsleep 6"))
    job_id = api.submit(repo)
    api.wait(job_id, {"running"})
    before = cluster.health()["bad_frames"]
    key = {"job_id": job_id, "attempt": 1}
    peer.ready("liar", capacity=4, active=((job_id, 1, 0),))
    eventually(lambda: _ready(cluster, "liar"), what="liar ready")
    forged: list[p.Message] = [
        p.Accept(**key, seq=0),
        p.CheckedOut(**key, seq=1, sha="0" * 40, pipeline="forged", variants=({"x": "1"},)),
        p.StepStarted(**key, seq=2, index=0, name="forged-step"),
        p.Log(**key, seq=3, data=b"forged-log\n"),
        p.StepFinished(
            **key, seq=4, index=0, name="forged-step", status="failed", exit_code=1, duration=0
        ),
        p.Done(**key, seq=5, status="failed", reason="forged", duration=0),
        p.Reject(**key, reason="forged reject"),
        # Dispatcher-to-runner kinds sent the wrong way.
        p.Hello(session="forged"),
        p.Ack(streams=((job_id, 1, 9),)),
        p.Cancel(**key, reason="forged"),
    ]
    for message in forged:
        peer.send(message)
    eventually(
        lambda: cluster.health()["bad_frames"] >= before + len(forged),
        what="every forged frame counted",
    )
    running = api.job(job_id)
    assert running["state"] == "running" and running["attempt"] == 1
    job = api.wait(job_id)
    assert job["state"] == "success" and job["attempt"] == 1 and job["runner_id"] == "real"
    assert job["pipeline"] != "forged" and job["matrix"] is None
    assert [(s["name"], s["status"]) for s in job["steps"]] == [("work", "success")]
    log = api.log(job_id)
    assert "real-output" in log and "forged" not in log
    assert all(t["runner_id"] in (None, "real") for t in job["transitions"])
    liar = _runner(cluster, "liar")
    assert liar is not None and liar["state"] == "ready" and liar["jobs"] == []
    # The dispatcher still serves: nothing it received stopped a loop.
    assert api.wait(api.submit(repo))["state"] == "success"


@pytest.mark.parametrize(
    ("flags", "ceiling"), [((), 256), (("--max-runner-capacity", "8"), 8)], ids=["default", "8"]
)
def test_claimed_capacity_is_clamped_to_the_ceiling(
    cluster: Cluster, raw: Raw, flags: tuple[str, ...], ceiling: int
) -> None:
    # Trusted before the dispatcher reads its allow-list: never refused first.
    peer = raw("greedy")
    cluster.start_dispatcher(*flags)
    cluster.attach(peer)
    peer.ready("greedy", capacity=4_600_000_000_000_000_000)
    eventually(lambda: _ready(cluster, "greedy"), what="greedy ready")
    peer.ready("greedy", capacity=4_600_000_000_000_000_000)  # again: logged once
    time.sleep(0.5)
    runner = _runner(cluster, "greedy")
    assert runner is not None and runner["capacity"] == ceiling
    assert cluster.dispatcher is not None
    lines = cluster.dispatcher.stderr_lines
    warned = [line for line in lines if "greedy" in line and "capacity" in line]
    assert len(warned) == 1, warned
