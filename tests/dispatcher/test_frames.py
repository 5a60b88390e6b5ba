"""A misbehaving peer on the mesh: garbage, lies and floods never hurt anyone else.

A hand-driven DEALER (``tests.support.peers.RawRunner``, a real ZeroMQ socket)
plays a broken runner next to a real runner; the dispatcher must keep
serving the real one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from narwhal.mesh import protocol as p
from tests.support.cluster import Cluster
from tests.support.eventually import eventually
from tests.support.peers import RawRunner
from tests.support.repos import Repo

#: The runner id the fake runner's key is trusted as: a trusted runner gone bad.
FAKE_ID = "fake"


@pytest.fixture
def mesh(cluster: Cluster) -> Iterator[tuple[Cluster, RawRunner]]:
    cluster.start_runner("real")
    # Trusted before the dispatcher reads its allow-list: never refused first.
    fake = cluster.raw_runner(FAKE_ID)
    cluster.start_dispatcher()
    cluster.wait_ready(1)
    cluster.attach(fake)
    yield cluster, fake
    fake.close()


def _frame(version: Any, kind: Any, body: Any) -> bytes:
    return bytes(msgpack.packb([version, kind, body], use_bin_type=True))


V = p.PROTOCOL_VERSION
BAD_FRAMES = [
    b"",
    b"\xc1garbage",
    p.encode(p.Heartbeat(session="x"))[:-2],
    _frame(V + 1, "heartbeat", {"session": "s"}),
    _frame(V, "launch_missiles", {}),
    _frame(V, "ready", {"runner_id": 5}),
    _frame(V, "done", {"job_id": "x", "attempt": 1, "seq": 0}),
    _frame(V, "log", {"job_id": 1, "attempt": 1, "seq": -5, "data": b""}),
    _frame(V, "job", {}),
]


def test_bad_frames_are_counted_and_harm_nobody(
    mesh: tuple[Cluster, RawRunner], make_repo: Callable[..., Repo]
) -> None:
    cluster, fake = mesh
    api = cluster.client()
    for frame in BAD_FRAMES:
        fake.send(frame)
    fake.send(b"two", b"parts")
    fake.send(b"\x00" * (p.MAX_FRAME_BYTES + 4096))  # over MAXMSGSIZE: the peer is cut off
    eventually(
        lambda: api.http.get("/health").json()["bad_frames"] >= len(BAD_FRAMES) + 1,
        what="bad frames counted",
    )
    repo = make_repo({"narwhal.yml": "steps:\n  - name: ok\n    command: echo still-serving\n"})
    job = api.wait(api.submit(repo))
    assert job["state"] == "success" and "still-serving" in api.log(job["id"])
    assert cluster.dispatcher is not None and cluster.dispatcher.proc.poll() is None


def test_lies_about_other_runners_jobs_change_nothing(
    mesh: tuple[Cluster, RawRunner], make_repo: Callable[..., Repo]
) -> None:
    cluster, fake = mesh
    api = cluster.client()
    fake.send(p.Ready(runner_id=FAKE_ID, session="s1", capacity=0, labels={}, version="0"))
    repo = make_repo({"narwhal.yml": "steps:\n  - name: slow\n    command: sleep 1\n"})
    job_id = api.submit(repo)
    api.wait(job_id, {"running"})
    # The fake runner claims the real runner's job ended; it holds no such job.
    fake.send(p.Done(job_id=job_id, attempt=1, seq=0, status="failed", reason="lie", duration=0))
    fake.send(p.Log(job_id=job_id, attempt=1, seq=0, data=b"forged"))
    fake.send(p.Accept(job_id=999, attempt=1, seq=0))
    job = api.wait(job_id)
    assert job["state"] == "success" and job["runner_id"] == "real"
    assert "forged" not in api.log(job_id)


def test_unsolicited_ready_is_answered_and_capacity_zero_gets_no_jobs(
    mesh: tuple[Cluster, RawRunner], make_repo: Callable[..., Repo]
) -> None:
    cluster, fake = mesh
    api = cluster.client()
    fake.send(p.Ready(runner_id=FAKE_ID, session="s", capacity=0, labels={}, version="0"))
    eventually(lambda: any(r["id"] == FAKE_ID for r in cluster.wait_ready(2)), what="fake ready")
    repo = make_repo({"narwhal.yml": "steps:\n  - name: ok\n    command: 'true'\n"})
    for job_id in [api.submit(repo) for _ in range(3)]:
        assert api.wait(job_id)["runner_id"] == "real"
    # Answered: heartbeats and acks, or a HELLO when the silent fake was
    # declared lost (it sends no heartbeats) and connected to again.
    beat = fake.recv()
    assert isinstance(beat, p.Heartbeat | p.Ack | p.Hello)


_any = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.text(max_size=10)
    | st.binary(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
_fields = st.dictionaries(
    st.sampled_from(
        [
            "job_id",
            "attempt",
            "seq",
            "session",
            "runner_id",
            "capacity",
            "labels",
            "version",
            "active",
            "status",
            "reason",
            "duration",
            "data",
            "sha",
            "pipeline",
            "variants",
            "index",
            "name",
            "exit_code",
            "steps",
        ]
    ),
    _any,
)
_frames = st.one_of(
    st.binary(max_size=64),
    st.builds(lambda k, b: _frame(V, k, b), st.sampled_from([m.KIND for m in p.MESSAGES]), _fields),
    st.builds(lambda v, k, b: _frame(v, k, b), _any, _any, _any),
)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(frames=st.lists(_frames, min_size=1, max_size=20))
def test_fuzzed_frames_never_stall_the_dispatcher(
    mesh: tuple[Cluster, RawRunner], frames: list[bytes]
) -> None:
    cluster, fake = mesh
    api = cluster.client()
    for frame in frames:
        fake.send(frame)
    started = time.monotonic()
    health = api.http.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert time.monotonic() - started < 5
    assert cluster.dispatcher is not None and cluster.dispatcher.proc.poll() is None
