"""Wire protocol v4: every message round-trips, everything malformed is refused."""

from __future__ import annotations

import re
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from narwhal.errors import ProtocolError
from narwhal.mesh import protocol as p

SAMPLES: list[p.Message] = [
    p.Hello(session="abc"),
    p.Heartbeat(session="abc"),
    p.Ready(
        runner_id="r1",
        session="s",
        capacity=4,
        labels={"os": "linux"},
        version="0.1.0",
        active=((3, 1, 0), (4, 2, 17)),
    ),
    p.Job(
        job_id=7,
        attempt=2,
        runner_session="s",
        repo="/srv/repo",
        ref="refs/heads/main",
        sha="a" * 40,
        event="push",
        matrix={"PY": "3.12"},
        timeout=60.0,
        secrets={"API_TOKEN": "s3cr3t-value", "MULTI": "line one\nline two"},
    ),
    p.Job(
        job_id=7,
        attempt=1,
        runner_session="s",
        repo="https://x/y.git",
        ref="HEAD",
        sha=None,
        event="manual",
    ),
    p.Accept(job_id=1, attempt=1, seq=0),
    p.Reject(job_id=1, attempt=1, reason="no free slot"),
    p.CheckedOut(
        job_id=1,
        attempt=1,
        seq=1,
        sha="b" * 40,
        pipeline="build",
        variants=({"A": "1"}, {"A": "2"}),
    ),
    p.Log(job_id=1, attempt=1, seq=2, data=b"\x00\xffbinary ok\n"),
    p.StepStarted(job_id=1, attempt=1, seq=3, index=0, name="test"),
    p.Usage(
        job_id=1,
        attempt=1,
        seq=4,
        index=0,
        samples=((0.5, 1.25, 52_428_800), (1.5, 0.0, 0)),
        memory_limit=64 << 20,
    ),
    p.StepFinished(
        job_id=1,
        attempt=1,
        seq=4,
        index=0,
        name="test",
        status="failed",
        exit_code=2,
        duration=0.5,
    ),
    p.Done(
        job_id=1,
        attempt=1,
        seq=5,
        status="success",
        reason="",
        duration=1.5,
        steps=(p.StepOutcome(index=0, name="t", status="success", exit_code=0, duration=1.0),),
    ),
    p.Ack(streams=((1, 1, 5), (2, 3, 0))),
    p.Cancel(job_id=1, attempt=3, reason="cancelled by user"),
    p.Refused(reason="runner id 'pi' is already connected from tcp://10.0.0.2:8471"),
]


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip(message: p.Message) -> None:
    frame = p.encode(message)
    assert p.decode(frame) == message
    version, kind, _ = msgpack.unpackb(frame)
    assert version == p.PROTOCOL_VERSION and kind == message.KIND


def test_every_message_kind_is_sampled() -> None:
    assert {type(m) for m in SAMPLES} == set(p.MESSAGES)


def test_job_secrets_stay_out_of_the_repr() -> None:
    job = SAMPLES[3]
    assert isinstance(job, p.Job) and job.secrets
    assert "s3cr3t-value" not in repr(job) and "secrets" not in repr(job)


_JOB = {"job_id": 1, "attempt": 1, "runner_session": "s", "repo": "/r", "ref": "HEAD"}


@pytest.mark.parametrize(
    ("secrets", "error"),
    [
        ({"1BAD": "value"}, "job.secrets: '1BAD' is not a variable name"),
        ({"A-B": "value"}, "is not a variable name"),
        ({"OK": "va\x00lue"}, "job.secrets.OK: contains a NUL byte"),
        ({"OK": 5}, "job.secrets.OK: expected str, got int"),
        (["OK"], "job.secrets: expected map"),
    ],
)
def test_bad_job_secrets_are_refused_without_the_value(secrets: Any, error: str) -> None:
    frame = _frame("job", {**_JOB, "sha": None, "event": "push", "secrets": secrets})
    with pytest.raises(ProtocolError, match=error.replace("[", r"\[")) as caught:
        p.decode(frame)
    assert "va\x00lue" not in str(caught.value)


def test_done_may_say_skipped_and_a_refusal_is_bounded() -> None:
    done = {"job_id": 1, "attempt": 1, "seq": 0, "reason": "", "duration": 0.1}
    assert isinstance(p.decode(_frame("done", {**done, "status": "skipped"})), p.Done)
    with pytest.raises(ProtocolError, match="unknown status 'skipping'"):
        p.decode(_frame("done", {**done, "status": "skipping"}))
    assert p.decode(_frame("refused", {"reason": "x" * p.MAX_REFUSAL_CHARS})) is not None
    with pytest.raises(ProtocolError, match="refused.reason: longer than"):
        p.decode(_frame("refused", {"reason": "x" * (p.MAX_REFUSAL_CHARS + 1)}))


_USAGE = {"job_id": 1, "attempt": 1, "seq": 3, "index": 0}


def test_usage_round_trips_memory_as_whole_bytes_and_a_full_frame_is_small() -> None:
    full = [[float(i), 1.5, 2**40 + i] for i in range(p.MAX_USAGE_SAMPLES)]
    frame = _frame("usage", {**_USAGE, "samples": full, "memory_limit": None})
    message = p.decode(frame)
    assert isinstance(message, p.Usage) and message.memory_limit is None
    assert message.samples[-1] == (599.0, 1.5, 2**40 + 599)
    assert len(frame) < p.MAX_FRAME_BYTES // 20  # one frame never crowds the window


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"samples": [[0.5, 1.0]]}, r"usage.samples\[0\]: expected \[seconds, cpu, memory\]"),
        ({"samples": [[0.5, 1.0, 3, 4]]}, "expected"),
        ({"samples": [[0.5, -0.1, 3]]}, "finite and not negative"),
        ({"samples": [[float("nan"), 1.0, 3]]}, "finite and not negative"),
        ({"samples": [[1.0, float("inf"), 3]]}, "finite and not negative"),
        ({"samples": [[1.0, 1.0, 2.0**63]]}, "finite and not negative"),
        ({"samples": [[1.0, 1.0, 3.5]]}, "memory must be a whole number"),
        ({"samples": [[1.0, "1", 3]]}, "expected float, got str"),
        ({"samples": [[0.0, 0.0, 0]] * (p.MAX_USAGE_SAMPLES + 1)}, "more than 600 samples"),
        ({"samples": [], "memory_limit": 0}, "memory_limit: must be positive"),
        ({"samples": [], "index": -1}, "usage.index: must not be negative"),
    ],
)
def test_bad_usage_is_refused(body: dict[str, Any], error: str) -> None:
    with pytest.raises(ProtocolError, match=error):
        p.decode(_frame("usage", {**_USAGE, **body}))


def test_messages_are_frozen() -> None:
    with pytest.raises(AttributeError):
        p.Accept(job_id=1, attempt=1, seq=0).job_id = 2  # type: ignore[misc]


def _frame(kind: Any, body: Any, version: Any = p.PROTOCOL_VERSION) -> bytes:
    return bytes(msgpack.packb([version, kind, body], use_bin_type=True))


@pytest.mark.parametrize(
    ("frame", "error"),
    [
        (b"", "not a msgpack frame"),
        (p.encode(SAMPLES[2])[:-3], "not a msgpack frame"),
        (b"\xc1", "not a msgpack frame"),
        (msgpack.packb({"kind": "heartbeat"}), "not [version, kind, body]"),
        (msgpack.packb([1, "heartbeat"]), "not [version, kind, body]"),
        (_frame("heartbeat", {"session": "s"}, version=1), "protocol version 1 not supported"),
        (_frame("heartbeat", {"session": "s"}, version="1"), "protocol version '1'"),
        (_frame("launch", {}), "unknown message kind 'launch'"),
        (_frame(5, {}), "unknown message kind 5"),
        (_frame("heartbeat", [1]), "body is not a map"),
        (_frame("heartbeat", {}), "missing field 'session'"),
        (_frame("heartbeat", {"session": "s", "x": 1}), "unknown field 'x'"),
        (_frame("heartbeat", {"session": 5}), "heartbeat.session: expected str, got int"),
        (_frame("accept", {"job_id": True, "attempt": 1, "seq": 0}), "expected int, got bool"),
        (_frame("accept", {"job_id": "1", "attempt": 1, "seq": 0}), "expected int, got str"),
        (
            _frame(
                "ready",
                {"runner_id": "r", "session": "s", "capacity": -1, "labels": {}, "version": "1"},
            ),
            "capacity: must not be negative",
        ),
        (
            _frame(
                "ready",
                {
                    "runner_id": "r",
                    "session": "s",
                    "capacity": 1,
                    "labels": {"a": 1},
                    "version": "1",
                },
            ),
            "ready.labels.a: expected str",
        ),
        (
            _frame(
                "ready",
                {"runner_id": "r", "session": "s", "capacity": 1, "labels": [], "version": "1"},
            ),
            "expected map",
        ),
        (
            _frame(
                "done",
                {
                    "job_id": 1,
                    "attempt": 1,
                    "seq": 0,
                    "status": "great",
                    "reason": "",
                    "duration": 1,
                },
            ),
            "unknown status 'great'",
        ),
        (
            _frame(
                "done",
                {
                    "job_id": 1,
                    "attempt": 1,
                    "seq": 0,
                    "status": "success",
                    "reason": "",
                    "duration": 1,
                    "steps": [{"index": 0}],
                },
            ),
            "missing field",
        ),
        (
            _frame("log", {"job_id": 1, "attempt": 1, "seq": 0, "data": "text"}),
            "log.data: expected bytes, got str",
        ),
        (
            _frame(
                "log", {"job_id": 1, "attempt": 1, "seq": 0, "data": b"x" * (p.MAX_LOG_CHUNK + 1)}
            ),
            "too large",
        ),
        (b"\x00" * (p.MAX_FRAME_BYTES + 1), "exceeds"),
        (_frame("accept", {"job_id": 2**64 - 1, "attempt": 1, "seq": 0}), "out of range"),
        (_frame("ack", {"streams": [[1, 1, -1]]}), "ack.streams: expected"),
    ],
)
def test_malformed_frames_raise_protocol_error(frame: bytes, error: str) -> None:
    with pytest.raises(ProtocolError, match=error.replace("[", r"\[").replace("(", r"\(")):
        p.decode(frame)


def test_ready_active_entries_are_triples() -> None:
    body = {
        "runner_id": "r",
        "session": "s",
        "capacity": 1,
        "labels": {},
        "version": "1",
        "active": [[1, 2]],
    }
    with pytest.raises(ProtocolError, match="job_id, attempt, next_seq"):
        p.decode(_frame("ready", body))


def test_float_fields_accept_integers() -> None:
    frame = _frame(
        "step_finished",
        {
            "job_id": 1,
            "attempt": 1,
            "seq": 0,
            "index": 0,
            "name": "n",
            "status": "success",
            "exit_code": None,
            "duration": 2,
        },
    )
    message = p.decode(frame)
    assert isinstance(message, p.StepFinished) and message.duration == 2.0


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_decoding_random_bytes_never_raises_anything_else(data: bytes) -> None:
    try:
        p.decode(data)
    except ProtocolError:
        pass


_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from([m.KIND for m in p.MESSAGES] + ["nope"]),
    body=st.dictionaries(
        st.sampled_from(
            [
                "job_id",
                "attempt",
                "session",
                "runner_id",
                "seq",
                "data",
                "status",
                "steps",
                "labels",
                "active",
                "variants",
                "capacity",
                "name",
                "index",
                "samples",
                "memory_limit",
            ]
        ),
        _values,
    ),
)
def test_structured_garbage_never_raises_anything_else(kind: str, body: dict[str, Any]) -> None:
    try:
        message = p.decode(_frame(kind, body))
    except ProtocolError:
        return
    assert p.decode(p.encode(message)) == message


_STATE: dict[str, Any] = {
    "cpus": 2,
    "load": 0.5,
    "memory_total": 1 << 30,
    "memory_available": 1 << 29,
    "disk_free": 1 << 32,
    "os": "linux",
    "arch": "amd64",
    "docker": False,
}
_CHECKED_OUT: dict[str, Any] = {"job_id": 1, "attempt": 1, "seq": 1, "sha": "a", "pipeline": "p"}
_WARM = {"repo": "https://h/x.git", "sha": "", "used_at": 1.0, "size": 1}


def test_a_runner_state_and_checkout_figures_round_trip() -> None:
    state = p.RunnerState(**_STATE, images=("busybox:1",), mirrors=(p.WarmRepo(**_WARM),))
    for message in (
        p.Ready(runner_id="r", session="s", capacity=1, labels={}, version="1", state=state),
        p.Heartbeat(session="s", state=state),
        p.CheckedOut(**_CHECKED_OUT, checkout=0.2, cold=True, fetched=9, needs=p.Needs(priority=3)),
        p.Done(
            job_id=1, attempt=1, seq=2, status="error", reason="git", duration=1, fault="checkout"
        ),
    ):
        assert p.decode(p.encode(message)) == message


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"state": {**_STATE, "cpus": -1}}, "not negative"),
        ({"state": {**_STATE, "load": float("nan")}}, "not negative"),
        ({"state": {**_STATE, "load": float("inf")}}, "not negative"),
        ({"state": {**_STATE, "disk_free": True}}, "expected int, got bool"),
        ({"state": {**_STATE, "images": ["x"] * (p.MAX_IMAGES + 1)}}, "more than"),
        ({"state": {**_STATE, "mirrors": [_WARM] * (p.MAX_MIRRORS + 1)}}, "more than"),
        ({"state": {**_STATE, "mirrors": [{**_WARM, "size": -1}]}}, "must not be negative"),
        ({"state": {**_STATE, "mirrors": [{**_WARM, "evil": 1}]}}, "unknown field 'evil'"),
        ({"state": {**_STATE, "os": None}}, "expected str"),
    ],
)
def test_a_forged_runner_state_is_refused(body: dict[str, Any], error: str) -> None:
    with pytest.raises(ProtocolError, match=re.escape(error)):
        p.decode(_frame("heartbeat", {"session": "s", **body}))


@pytest.mark.parametrize(
    ("kind", "body", "error"),
    [
        ("checked_out", {**_CHECKED_OUT, "checkout": -1.0}, "must not be negative"),
        ("checked_out", {**_CHECKED_OUT, "fetched": -5}, "must not be negative"),
        ("checked_out", {**_CHECKED_OUT, "needs": {"priority": 10**6}}, "outside -1000..1000"),
        ("checked_out", {**_CHECKED_OUT, "needs": {"cpus": 0.0}}, "must be positive"),
        ("checked_out", {**_CHECKED_OUT, "needs": {"memory": -1}}, "must be positive"),
        (
            "done",
            {"job_id": 1, "attempt": 1, "seq": 0, "status": "error", "reason": "", "duration": 1}
            | {"fault": "cosmic rays"},
            "unknown fault 'cosmic rays'",
        ),
    ],
)
def test_forged_checkout_figures_and_faults_are_refused(
    kind: str, body: dict[str, Any], error: str
) -> None:
    with pytest.raises(ProtocolError, match=re.escape(error)):
        p.decode(_frame(kind, body))
