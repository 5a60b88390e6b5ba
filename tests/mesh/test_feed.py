"""The metrics feed's wire protocol: every record round-trips, everything malformed is refused."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from narwhal.errors import ProtocolError
from narwhal.mesh import feed as f

JOB = f.JobView(
    id=7,
    repo="https://***@forge.example/team/app.git",
    ref="refs/heads/main",
    sha="a" * 40,
    event="push",
    state="running",
    reason="",
    attempt=2,
    runner_id="r1",
    parent_id=None,
    matrix={"PY": "3.12"},
    labels={"os": "linux"},
    pipeline="build",
    cancel_requested=False,
    created_at=1.5,
    updated_at=2.5,
    started_at=2.0,
    finished_at=None,
)
RUNNER = f.RunnerView(
    id="r1",
    endpoint="tcp://10.0.0.2:8471",
    source="mdns",
    state="ready",
    capacity=4,
    free=3,
    labels={"os": "linux"},
    version="0.1.0",
    jobs=(7,),
    last_seen=3.0,
)
STEP = f.StepView(
    job_id=7, attempt=2, index=0, name="test", status="running", exit_code=None, duration=None, at=2
)
QUEUE = f.QueueView(queued=3, active=1, oldest=JOB)
STATS = f.StatsView(
    started_at=1.0, jobs_total={"success": 4, "failed": 1}, minutes=((60, 5, 4), (120, 0, 0))
)
ITEMS: list[Any] = [
    JOB,
    RUNNER,
    f.RunnerView(**{**f.to_map(RUNNER), "state": "gone", "reason": "lost", "jobs": ()}),
    STEP,
    f.StepView(
        job_id=7, attempt=2, index=0, name="t", status="failed", exit_code=1, duration=0.5, at=3
    ),
    f.LogView(job_id=7, attempt=2, seq=9, size=4096),
    f.UsageView(job_id=7, attempt=2, index=0, samples=((1.0, 0.5, 1 << 20),), memory_limit=2 << 30),
    QUEUE,
    f.QueueView(queued=0, active=0, oldest=None),
    STATS,
]


def _body(*parts: Any) -> bytes:
    return msgpack.packb(list(parts), use_bin_type=True)


@pytest.mark.parametrize("item", ITEMS, ids=lambda i: type(i).__name__)
def test_every_record_round_trips(item: Any) -> None:
    frames = f.encode_update(item.TOPIC, "e1", 42, [item, item])
    update = f.decode_update(frames)
    assert update == f.Update(topic=item.TOPIC, epoch="e1", seq=42, items=(item, item))


def test_maps_encode_like_records() -> None:
    assert f.encode_maps(b"job", "e", 1, [f.to_map(JOB)]) == f.encode_update(b"job", "e", 1, [JOB])


def test_a_beat_round_trips_without_items() -> None:
    assert f.decode_update(f.encode_update(b"beat", "e", 3, [])).items == ()


def test_a_snapshot_round_trips() -> None:
    state = f.Snapshot(runners=(RUNNER,), jobs=(JOB,), queue=QUEUE, stats=STATS, steps=(STEP,))
    assert f.decode_snapshot(f.encode_snapshot("e2", 17, state)) == ("e2", 17, state)


def test_a_snapshot_without_steps_is_accepted() -> None:
    state = f.Snapshot(runners=(), jobs=(), queue=QUEUE, stats=STATS)
    plain = f.to_map(state)
    del plain["steps"]
    reply = [b"snapshot", _body(f.FEED_VERSION, "e", 0, plain)]
    assert f.decode_snapshot(reply)[2] == state


def test_snapshot_endpoint_is_the_next_port() -> None:
    assert f.snapshot_endpoint("tcp://127.0.0.1:8474") == "tcp://127.0.0.1:8475"
    assert f.snapshot_endpoint("tcp://[::1]:9000") == "tcp://[::1]:9001"
    for bad in ("tcp://host", "tcp://host:0", "tcp://host:65535", "tcp://host:x"):
        with pytest.raises(ValueError):
            f.snapshot_endpoint(bad)


GOOD_JOB = f.to_map(JOB)
MALFORMED_UPDATES: dict[str, list[bytes]] = {
    "one frame": [b"job"],
    "three frames": [b"job", _body(1, "e", 1, []), b""],
    "unknown topic": [b"jobs", _body(1, "e", 1, [])],
    "empty topic": [b"", _body(1, "e", 1, [])],
    "not msgpack": [b"job", b"\xc1\xc1\xc1"],
    "trailing bytes": [b"job", _body(1, "e", 1, []) + b"\x00"],
    "not an array": [b"job", msgpack.packb({"v": 1})],
    "three parts": [b"job", _body(1, "e", 1)],
    "wrong version": [b"job", _body(2, "e", 1, [])],
    "version as text": [b"job", _body("1", "e", 1, [])],
    "epoch not text": [b"job", _body(1, b"e", 1, [])],
    "empty epoch": [b"job", _body(1, "", 1, [])],
    "long epoch": [b"job", _body(1, "e" * 65, 1, [])],
    "seq as float": [b"job", _body(1, "e", 1.0, [])],
    "seq as bool": [b"job", _body(1, "e", True, [])],
    "negative seq": [b"job", _body(1, "e", -1, [])],
    "items not a list": [b"job", _body(1, "e", 1, {"id": 1})],
    "item not a map": [b"job", _body(1, "e", 1, [[1, 2]])],
    "beat with items": [b"beat", _body(1, "e", 1, [GOOD_JOB])],
    "missing field": [b"job", _body(1, "e", 1, [{k: v for k, v in GOOD_JOB.items() if k != "id"}])],
    "unknown field": [b"job", _body(1, "e", 1, [{**GOOD_JOB, "secret": "x"}])],
    "id as text": [b"job", _body(1, "e", 1, [{**GOOD_JOB, "id": "7"}])],
    "flag as int": [b"job", _body(1, "e", 1, [{**GOOD_JOB, "cancel_requested": 0}])],
    "labels not text": [b"job", _body(1, "e", 1, [{**GOOD_JOB, "labels": {"a": 1}}])],
    "huge integer": [b"log", _body(1, "e", 1, [{**f.to_map(ITEMS[5]), "size": 1 << 63}])],
    "runner jobs not ints": [b"runner", _body(1, "e", 1, [{**f.to_map(RUNNER), "jobs": ["7"]}])],
    "oldest not a job": [b"queue", _body(1, "e", 1, [{**f.to_map(QUEUE), "oldest": 7}])],
    "oversized": [b"job", b"\x00" * (f.MAX_FEED_BYTES + 1)],
}


@pytest.mark.parametrize("frames", MALFORMED_UPDATES.values(), ids=MALFORMED_UPDATES.keys())
def test_malformed_updates_are_protocol_errors(frames: list[bytes]) -> None:
    with pytest.raises(ProtocolError):
        f.decode_update(frames)


STATE = f.to_map(f.Snapshot(runners=(RUNNER,), jobs=(JOB,), queue=QUEUE, stats=STATS))
MALFORMED_SNAPSHOTS: dict[str, list[bytes]] = {
    "one frame": [b"snapshot"],
    "wrong tag": [b"snapshots", _body(1, "e", 1, STATE)],
    "wrong version": [b"snapshot", _body(0, "e", 1, STATE)],
    "state not a map": [b"snapshot", _body(1, "e", 1, [STATE])],
    "missing queue": [
        b"snapshot",
        _body(1, "e", 1, {k: v for k, v in STATE.items() if k != "queue"}),
    ],
    "bad job inside": [b"snapshot", _body(1, "e", 1, {**STATE, "jobs": [{"id": 1}]})],
    "runners not a list": [b"snapshot", _body(1, "e", 1, {**STATE, "runners": {}})],
    "not msgpack": [b"snapshot", b"\xc1"],
    "oversized": [b"snapshot", b"\x00" * (f.MAX_FEED_BYTES + 1)],
}


@pytest.mark.parametrize("frames", MALFORMED_SNAPSHOTS.values(), ids=MALFORMED_SNAPSHOTS.keys())
def test_malformed_snapshots_are_protocol_errors(frames: list[bytes]) -> None:
    with pytest.raises(ProtocolError):
        f.decode_snapshot(frames)


def test_an_error_names_the_bad_field() -> None:
    frames = [b"job", _body(1, "e", 1, [{**GOOD_JOB, "labels": {"a": 1}}])]
    with pytest.raises(ProtocolError, match=r"JobView\.labels\.a: expected str"):
        f.decode_update(frames)
