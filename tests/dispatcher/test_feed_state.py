"""FeedState: events coalesce by key, views are redacted, a snapshot is the whole state."""

from __future__ import annotations

import pytest

from narwhal.dispatcher.feed import (
    JobChanged,
    JobUpdated,
    LogAppended,
    QueueDepth,
    RunnerChanged,
    RunnerLeft,
    StepChanged,
    UsageSampled,
)
from narwhal.dispatcher.feedstate import MAX_SAMPLES, QUEUED_BURST, FeedState, job_map
from narwhal.dispatcher.records import JobRecord
from narwhal.mesh import feed as f
from tests.support.feeds import job_life, record, runner_json


class Clock:
    def __init__(self, now: float = 6000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def taken(state: FeedState) -> dict[bytes, list[dict[str, object]]]:
    return dict(state.take(1 << 30))


def snapshot(state: FeedState) -> f.Snapshot:
    """As the publisher takes one: after publishing every change."""
    taken(state)
    return state.snapshot()


def test_a_job_that_moved_four_times_is_one_item_in_its_latest_state() -> None:
    state = FeedState()
    for event in job_life(1):
        state.apply(event)
    out = taken(state)
    assert [j["state"] for j in out[b"job"]] == ["success"]
    assert [(s["index"], s["status"]) for s in out[b"step"]] == [(0, "success")]
    assert not state.pending


def test_nothing_is_pending_until_something_happens() -> None:
    state = FeedState()
    assert not state.pending and state.take(10) == []
    state.apply(QueueDepth(1, 0, None))
    assert state.pending


def test_every_job_view_field_is_a_record_field() -> None:
    assert set(f.fields_of(f.JobView)) <= set(JobRecord._fields)
    shown = JobRecord._fields[: len(f.fields_of(f.JobView))]
    assert set(shown) == set(f.fields_of(f.JobView)), "job_map takes the record's first fields"


def test_job_views_are_redacted_like_the_api() -> None:
    job = record(1, repo="https://user:s3cret@forge.example/x.git", reason="git: https://t0k@h/x")
    view = job_map(job)
    assert "s3cret" not in str(view) and "t0k" not in str(view)
    assert set(view) == set(f.fields_of(f.JobView)), "fork_of is not on the wire"
    assert f.JobView(**view).repo == "https://***@forge.example/x.git"


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"repo": "https://user:s3cret@forge.example/x.git"},
        {"reason": "clone of https://t0k@h/x failed", "fork_of": "forge.example/x"},
        {"state": "running", "runner_id": "r1", "labels": {"os": "linux"}, "sha": "a" * 40},
    ],
)
def test_a_job_view_is_the_api_view_up_to_fork_of(changes: dict[str, object]) -> None:
    job = record(1, **changes)
    api = job.to_json()
    # fork_of and the fields after it (priority, needs, checkout cost) are
    # not on the wire: the dashboard reads them from the REST job.
    expected = {name: api[name] for name in JobRecord._fields[: JobRecord._fields.index("fork_of")]}
    assert job_map(job) == expected
    assert list(job_map(job)) == list(expected), "the record's order"


def test_log_notices_merge_per_job_keeping_the_last_seq_and_the_sizes_summed() -> None:
    state = FeedState()
    for seq in (1, 2, 3):
        state.apply(LogAppended(5, 1, seq, 100))
    state.apply(LogAppended(6, 1, 1, 7))
    assert taken(state)[b"log"] == [
        {"job_id": 5, "attempt": 1, "seq": 3, "size": 300},
        {"job_id": 6, "attempt": 1, "seq": 1, "size": 7},
    ]
    state.apply(LogAppended(5, 1, 4, 1))
    state.apply(LogAppended(5, 2, 1, 9))  # a new attempt starts again
    assert taken(state)[b"log"] == [{"job_id": 5, "attempt": 2, "seq": 1, "size": 9}]


def test_usage_samples_of_a_step_are_joined_and_bounded() -> None:
    state = FeedState()
    for i in range(MAX_SAMPLES + 5):
        state.apply(UsageSampled(1, 1, 0, ((float(i), 0.5, 100),), 1 << 30))
    (usage,) = taken(state)[b"usage"]
    assert len(usage["samples"]) == MAX_SAMPLES  # type: ignore[arg-type]
    assert usage["samples"][-1] == [float(MAX_SAMPLES + 4), 0.5, 100]  # type: ignore[index]


def test_steps_are_one_item_per_step() -> None:
    state = FeedState()
    state.apply(JobChanged(record(1, "running"), "assigned"))
    state.apply(StepChanged(1, 1, 0, "a", "success", 0, 0.1, 1.0))
    state.apply(StepChanged(1, 1, 1, "b", "running", None, None, 2.0))
    assert [(s["index"], s["status"]) for s in taken(state)[b"step"]] == [
        (0, "success"),
        (1, "running"),
    ]
    assert snapshot(state).steps[0].index == 1, "a live job's current step"


def test_a_runner_that_left_is_published_gone_and_dropped_from_the_snapshot() -> None:
    state = FeedState()
    state.apply(RunnerChanged(runner_json("tcp://h:1"), joined=True))
    state.apply(RunnerChanged(runner_json("tcp://h:2", free=1, jobs=(3,)), joined=True))
    state.apply(RunnerLeft(runner_json("tcp://h:1"), "no heartbeat"))
    runners = taken(state)[b"runner"]
    assert [(r["endpoint"], r["state"], r["reason"]) for r in runners] == [
        ("tcp://h:1", "gone", "no heartbeat"),
        ("tcp://h:2", "ready", ""),
    ]
    (left,) = snapshot(state).runners
    assert left.endpoint == "tcp://h:2" and left.jobs == (3,)


def test_the_snapshot_holds_active_jobs_the_oldest_queued_and_the_last_ended() -> None:
    state = FeedState()
    for i in range(1, 101):
        state.apply(JobChanged(record(i), None))
    for i in range(1, 11):
        state.apply(JobChanged(record(i, "running"), "assigned"))
    for i in range(11, 81):
        state.apply(JobChanged(record(i, "failed"), "queued"))
    jobs = snapshot(state).jobs
    running = [j.id for j in jobs if j.state == "running"]
    queued = [j.id for j in jobs if j.state == "queued"]
    ended = [j.id for j in jobs if j.state == "failed"]
    assert running == list(range(1, 11))
    assert queued == list(range(81, 101))
    assert ended == list(range(31, 81)), f"the last {f.SNAPSHOT_ENDED}"
    queue = state.snapshot().queue
    assert (queue.queued, queue.active) == (20, 10), "no depth told yet: counted from the jobs"
    assert queue.oldest is not None and queue.oldest.id == 81


def test_only_the_oldest_queued_go_into_a_snapshot() -> None:
    state = FeedState()
    for i in range(1, 201):
        state.apply(JobChanged(record(i), None))
    assert [j.id for j in snapshot(state).jobs] == list(range(1, f.SNAPSHOT_QUEUED + 1))


def test_the_queue_is_the_latest_depth_told() -> None:
    state = FeedState()
    state.apply(QueueDepth(3, 1, record(4)))
    state.apply(QueueDepth(2, 1, record(5)))
    (queue,) = taken(state)[b"queue"]
    assert queue["queued"] == 2 and queue["oldest"]["id"] == 5  # type: ignore[index]


def test_updated_jobs_are_published_and_ended_ones_are_not_revived() -> None:
    state = FeedState()
    state.apply(JobChanged(record(1), None))
    taken(state)
    state.apply(JobUpdated(1, record(1, reason="waits for a runner with os=mac")))
    assert taken(state)[b"job"][0]["reason"] == "waits for a runner with os=mac"
    state.apply(JobChanged(record(1, "cancelled"), "queued"))
    state.apply(JobUpdated(1, None))
    state.apply(JobUpdated(1, record(1, "cancelled")))
    assert [j["state"] for j in taken(state)[b"job"]] == ["cancelled"]
    assert 1 not in state.live


def test_stats_count_ended_jobs_by_state_and_minute() -> None:
    clock = Clock(6000.0)
    state = FeedState(clock=clock)
    for i, end in enumerate(["success", "success", "failed"]):
        state.apply(JobChanged(record(i, end), "running"))
    taken(state)  # counted when published
    clock.now += 60
    state.apply(JobChanged(record(9, "success"), "running"))
    (stats,) = taken(state)[b"stats"]
    assert stats["jobs_total"] == {"success": 3, "failed": 1}
    minutes = stats["minutes"]
    assert len(minutes) == 60  # type: ignore[arg-type]
    assert minutes[-2:] == [[6000, 3, 2], [6060, 1, 1]]  # type: ignore[index]
    assert minutes[0] == [6060 - 59 * 60, 0, 0]  # type: ignore[index]


def test_stats_go_out_again_when_a_minute_starts() -> None:
    clock = Clock(6000.0)
    state = FeedState(clock=clock)
    assert not state.pending
    clock.now += 61
    assert state.pending
    assert [topic for topic, _ in state.take(10)] == [b"stats"]
    assert not state.pending


def test_a_burst_is_taken_a_limited_number_at_a_time() -> None:
    state = FeedState()
    for i in range(1, 26):
        state.apply(JobChanged(record(i), None))
    first = dict(state.take(10))
    assert [j["id"] for j in first[b"job"]] == list(range(1, 11))
    assert state.pending
    rest = [j["id"] for topic, items in state.take(100) if topic == b"job" for j in items]
    assert rest == list(range(11, 26))


def test_seeded_jobs_and_runners_are_in_the_snapshot_without_an_update() -> None:
    state = FeedState()
    state.seed([record(1, "running"), record(2), record(3, "success")], [runner_json("tcp://h:1")])
    assert not state.pending
    snap = state.snapshot()
    assert [j.id for j in snap.jobs] == [1, 2]
    assert snap.queue.queued == 1 and snap.queue.active == 1 and snap.queue.oldest is not None
    assert [r.endpoint for r in snap.runners] == ["tcp://h:1"]


def test_a_snapshot_encodes_and_decodes() -> None:
    state = FeedState()
    for event in job_life(1):
        state.apply(event)
    state.apply(JobChanged(record(2, "running", matrix={"PY": "3.12"}), "assigned"))
    state.apply(StepChanged(2, 1, 0, "a", "running", None, None, 1.0))
    state.apply(RunnerChanged(runner_json("tcp://h:1", jobs=(2,)), joined=True))
    for topic, items in state.take(100):
        assert len(f.decode_update(f.encode_maps(topic, "e", 4, items)).items) == len(items)
    snap = state.snapshot()
    assert len(snap.jobs) == 2 and len(snap.steps) == 1 and len(snap.runners) == 1
    assert f.decode_snapshot(f.encode_snapshot("e", 3, snap)) == ("e", 3, snap)


def test_a_job_published_ended_twice_is_counted_once() -> None:
    state = FeedState()
    done = record(1, "success")
    state.apply(JobChanged(done, "running"))
    taken(state)
    state.apply(JobChanged(done, "running"))
    again = taken(state)
    assert b"stats" not in again, "nothing counted: no stats message"
    assert [j["id"] for j in again[b"job"]] == [1]
    assert state.jobs_total == {"success": 1} and list(state.ended) == [1]


def test_a_burst_of_new_queued_jobs_shows_its_newest_and_every_one_once_it_moves() -> None:
    state = FeedState()
    for job_id in range(1, QUEUED_BURST + 51):
        state.apply(JobChanged(record(job_id), None))
    state.apply(JobChanged(record(2, "assigned", runner_id="r1"), "queued"))
    shown = taken(state)[b"job"]
    queued = [j["id"] for j in shown if j["state"] == "queued"]
    # The newest QUEUED_BURST queued ones, and the one that moved, whatever its age.
    assert queued == list(range(51, QUEUED_BURST + 51))
    assert [j["id"] for j in shown if j["state"] == "assigned"] == [2]
    # Every one is held for the snapshot's live jobs all the same.
    assert len(state.live) == QUEUED_BURST + 50
    state.apply(JobChanged(record(1, "assigned", runner_id="r1"), "queued"))
    assert [j["id"] for j in taken(state)[b"job"]] == [1]
