"""The SQLite job store: transitions, fencing, steps, logs."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from narwhal.dispatcher.store import sqlite as store_module
from narwhal.dispatcher.store.sqlite import SqliteStore
from narwhal.errors import NotFound, StoreError


@pytest.fixture
def store(tmp_path: Path) -> SqliteStore:
    s = SqliteStore(tmp_path / "db" / "narwhal.db")
    yield s  # type: ignore[misc]
    s.close()


def _job(store: SqliteStore) -> int:
    return store.create_job(repo="/r", ref="refs/heads/main", sha=None, event="push").id


def test_uses_wal(tmp_path: Path, store: SqliteStore) -> None:
    mode = sqlite3.connect(tmp_path / "db" / "narwhal.db").execute("PRAGMA journal_mode").fetchone()
    assert mode[0] == "wal"


def test_full_lifecycle_is_recorded(store: SqliteStore) -> None:
    job_id = _job(store)
    assert store.transition(job_id, attempt=1, to="assigned", reason="a", runner_id="r1")
    assert store.transition(job_id, attempt=1, to="running", reason="b")
    done = store.transition(job_id, attempt=1, to="success", reason="c")
    assert done is not None and done.state == "success" and done.runner_id == "r1"
    assert done.started_at is not None and done.finished_at is not None
    history = store.transitions(job_id)
    assert [(t["state"], t["reason"]) for t in history] == [
        ("queued", "submitted"),
        ("assigned", "a"),
        ("running", "b"),
        ("success", "c"),
    ]
    assert all(t["at"] > 0 for t in history)


def test_requeue_raises_attempt_and_fences_old_frames(store: SqliteStore) -> None:
    job_id = _job(store)
    store.transition(job_id, attempt=1, to="assigned", reason="a", runner_id="r1")
    requeued = store.transition(job_id, attempt=1, to="queued", reason="runner lost")
    assert requeued is not None and requeued.attempt == 2 and requeued.runner_id is None
    # A late DONE from attempt 1 changes nothing.
    assert store.transition(job_id, attempt=1, to="success", reason="late") is None
    assert store.get_job(job_id).state == "queued"


def test_terminal_states_are_final(store: SqliteStore) -> None:
    job_id = _job(store)
    assert store.transition(job_id, attempt=1, to="cancelled", reason="user")
    for state in ("queued", "assigned", "running", "success"):
        assert store.transition(job_id, attempt=1, to=state, reason="x") is None


def test_logs_are_chunked_ordered_and_idempotent(store: SqliteStore) -> None:
    job_id = _job(store)
    store.append_log(job_id, attempt=1, seq=1, data=b"second")
    store.append_log(job_id, attempt=1, seq=0, data=b"first")
    store.append_log(job_id, attempt=1, seq=0, data=b"duplicate")
    store.append_log(job_id, attempt=2, seq=0, data=b"other attempt")
    assert store.read_log(job_id, attempt=1) == [(0, b"first"), (1, b"second")]
    assert store.read_log(job_id, attempt=1, after=0) == [(1, b"second")]


def test_steps_and_listing(store: SqliteStore) -> None:
    a, b = _job(store), store.create_job(repo="/other", ref="x", sha=None, event="push").id
    store.step_started(a, attempt=1, index=0, name="build")
    store.step_finished(
        a, attempt=1, index=0, name="build", status="failed", exit_code=2, duration=0.25
    )
    (step,) = store.steps(a, attempt=1)
    assert (step.name, step.status, step.exit_code, step.duration) == ("build", "failed", 2, 0.25)
    assert step.started_at is not None
    assert [j.id for j in store.list_jobs()] == [b, a]
    assert [j.id for j in store.list_jobs(repo="/other")] == [b]
    assert [j.id for j in store.list_jobs(states=["queued"], before=b)] == [a]
    with pytest.raises(NotFound):
        store.get_job(999)


def test_data_survives_reopen(tmp_path: Path) -> None:
    first = SqliteStore(tmp_path / "n.db")
    job_id = first.create_job(repo="/r", ref="HEAD", sha=None, event="push", labels={"os": "l"}).id
    first.add_endpoint("tcp://127.0.0.1:9")
    first.close()
    second = SqliteStore(tmp_path / "n.db")
    assert second.get_job(job_id).labels == {"os": "l"}
    assert second.endpoints() == ["tcp://127.0.0.1:9"]
    second.close()


def test_move_applies_many_and_says_which_were_fenced(store: SqliteStore) -> None:
    a, b, c = (_job(store) for _ in range(3))
    at = 1_000.0
    applied = store.move(
        [
            (a, 1, "assigned", "to r1", "r1"),
            (b, 1, "assigned", "to r2", "r2"),
            (a, 1, "running", "accepted", "r1"),
            (c, 1, "success", "not assigned yet", "r1"),  # queued -> success: refused
            (b, 2, "running", "old attempt", "r2"),  # wrong attempt: fenced
            (a, 1, "success", "done", "r1"),
        ],
        at=at,
    )
    assert applied == [True, True, True, False, False, True]
    assert [store.get_job(j).state for j in (a, b, c)] == ["success", "assigned", "queued"]
    assert [(t["state"], t["runner_id"], t["at"]) for t in store.transitions(a)][1:] == [
        ("assigned", "r1", at),
        ("running", "r1", at),
        ("success", "r1", at),
    ]
    assert [t["state"] for t in store.transitions(c)] == ["queued"]


def test_records_in_memory_match_the_rows(store: SqliteStore) -> None:
    """``create_jobs`` and ``JobRecord.moved`` build what reading the row gives."""
    (job,) = store.create_jobs(
        [{"repo": "/r", "ref": "main", "event": "push", "labels": {"a": "b"}}]
    )
    assert job == store.get_job(job.id)
    for to, reason in (("assigned", "to r1"), ("running", "accepted"), ("failed", "exit 1")):
        job = job.moved(to, reason, "r1", 2_000.0)
        assert store.move([(job.id, 1, to, reason, "r1")], at=2_000.0) == [True]
        assert job == store.get_job(job.id)


def test_reader_sees_commits_refuses_writes_and_checkpoints(tmp_path: Path) -> None:
    path = tmp_path / "n.db"
    writer = SqliteStore(path, autocheckpoint=False)
    reader = SqliteStore(path, readonly=True)
    try:
        jobs = writer.create_jobs([{"repo": "/r", "ref": "main", "event": "push"}] * 200)
        assert reader.get_job(jobs[-1].id) == jobs[-1]
        with pytest.raises(StoreError, match="readonly"):
            reader.create_job(repo="/r", ref="main", sha=None, event="push")
        before = path.stat().st_size  # the writer left everything in the WAL
        reader.checkpoint()
        assert path.stat().st_size > before
    finally:
        reader.close()
        writer.close()


def test_a_fenced_chain_of_moves_falls_back_to_each_move_alone(store: SqliteStore) -> None:
    job_id = _job(store)
    assert store.move(
        [(job_id, 1, "assigned", "a", "r1"), (job_id, 1, "running", "b", "r1")], at=1.0
    )
    # The caller thinks the job is still assigned: running is refused, success is not.
    applied = store.move(
        [(job_id, 1, "running", "b", "r1"), (job_id, 1, "success", "c", "r1")], at=2.0
    )
    assert applied == [False, True]
    job = store.get_job(job_id)
    assert (job.state, job.started_at, job.finished_at) == ("success", 1.0, 2.0)
    assert [t["state"] for t in store.transitions(job_id)] == [
        "queued",
        "assigned",
        "running",
        "success",
    ]


def test_the_wal_shrinks_back_after_a_burst(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "WAL_SIZE_LIMIT", 64 << 10)
    path = tmp_path / "n.db"
    writer = SqliteStore(path, autocheckpoint=False)
    reader = SqliteStore(path, readonly=True)
    try:
        (job,) = writer.create_jobs([{"repo": "/r", "ref": "main", "event": "push"}])
        for seq in range(64):  # a burst of log: 4 MiB
            writer.append_log(job.id, attempt=1, seq=seq, data=bytes(64 << 10))
        wal = tmp_path / "n.db-wal"
        assert wal.stat().st_size > 4 << 20
        reader.checkpoint()
        writer.append_log(job.id, attempt=1, seq=64, data=b"next")  # reuses the WAL from its start
        assert wal.stat().st_size <= 64 << 10
    finally:
        reader.close()
        writer.close()


def test_the_fence_includes_the_runner_that_holds_the_job(store: SqliteStore) -> None:
    job_id = _job(store)
    assert store.move([(job_id, 1, "assigned", "to a", "a")], at=1.0) == [True]
    # Another runner's word moves nothing, in a batch or through transition.
    assert store.move([(job_id, 1, "running", "by b", "b")], at=2.0) == [False]
    assert store.move(
        [(job_id, 1, "running", "x", "b"), (job_id, 1, "success", "y", "b")], at=2.0
    ) == [False, False]
    assert store.transition(job_id, attempt=1, to="failed", reason="by b", runner_id="b") is None
    assert store.get_job(job_id).state == "assigned"
    # The holder's does; the dispatcher's own moves (no runner) are not fenced by it.
    assert store.move([(job_id, 1, "running", "by a", "a")], at=3.0) == [True]
    done = store.transition(job_id, attempt=1, to="success", reason="by a", runner_id="a")
    assert done is not None and done.state == "success" and done.runner_id == "a"
    other = _job(store)
    store.move([(other, 1, "assigned", "to a", "a")], at=1.0)
    assert store.transition(other, attempt=1, to="queued", reason="a lost") is not None
    assert [r for r in store.transitions(job_id) if r["runner_id"] == "b"] == []


def test_holders_says_which_listed_attempts_a_runner_holds(store: SqliteStore) -> None:
    mine, theirs, over, queued = (_job(store) for _ in range(4))
    store.move(
        [
            (mine, 1, "assigned", "", "a"),
            (theirs, 1, "assigned", "", "b"),
            (over, 1, "assigned", "", "a"),
        ],
        at=1.0,
    )
    store.transition(over, attempt=1, to="queued", reason="a lost")
    listed = [(mine, 1), (mine, 2), (theirs, 1), (over, 1), (over, 2), (queued, 1), (999, 1)]
    assert store.holders("a", listed) == {(mine, 1): "held", (over, 1): "stale"}
    assert store.holders("b", listed) == {(theirs, 1): "held"}
