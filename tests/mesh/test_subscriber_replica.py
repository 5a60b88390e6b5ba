"""Replica: a snapshot then updates give the present, bounded, rendered as JSON."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from narwhal.mesh import feed as f
from narwhal.mesh.subscriber import Replica


def job(job_id: int, state: str = "queued", **changes: Any) -> f.JobView:
    view = f.JobView(
        id=job_id,
        repo="https://forge.example/app.git",
        ref="refs/heads/main",
        sha=None,
        event="push",
        state=state,
        reason="",
        attempt=1,
        runner_id=None,
        parent_id=None,
        matrix=None,
        labels={},
        pipeline=None,
        cancel_requested=False,
        created_at=float(job_id),
        updated_at=float(job_id),
        started_at=None,
        finished_at=None,
    )
    return replace(view, **changes)


def runner(endpoint: str, state: str = "ready", free: int = 2) -> f.RunnerView:
    return f.RunnerView(
        id=endpoint.rpartition(":")[2],
        endpoint=endpoint,
        source="named",
        state=state,
        capacity=2,
        free=free,
        labels={},
        version="1",
        jobs=(),
        last_seen=1.0,
    )


def step(job_id: int, index: int, status: str = "running") -> f.StepView:
    return f.StepView(
        job_id=job_id,
        attempt=1,
        index=index,
        name=f"s{index}",
        status=status,
        exit_code=None if status == "running" else 0,
        duration=None,
        at=1.0,
    )


QUEUE = f.QueueView(queued=1, active=1, oldest=job(2))
STATS = f.StatsView(started_at=0.0, jobs_total={"success": 1}, minutes=((0, 1, 1),))


def snapshot(**changes: Any) -> f.Snapshot:
    state = f.Snapshot(
        runners=(runner("tcp://h:1"),),
        jobs=(job(1, "running"), job(2), job(0, "success")),
        queue=QUEUE,
        stats=STATS,
        steps=(step(1, 0),),
    )
    return replace(state, **changes)


def update(topic: bytes, *items: Any, seq: int = 1) -> f.Update:
    return f.Update(topic=topic, epoch="e", seq=seq, items=items)


def test_a_snapshot_gives_the_whole_state() -> None:
    replica = Replica()
    assert not replica.synced
    replica.apply(snapshot())
    assert replica.synced
    assert list(replica.live) == [1, 2] and list(replica.ended) == [0]
    assert replica.steps == {1: step(1, 0)}
    assert replica.queue == QUEUE and replica.stats == STATS
    assert list(replica.runners) == ["tcp://h:1"]


def test_a_snapshot_replaces_what_was_there() -> None:
    replica = Replica()
    replica.apply(snapshot())
    replica.apply(update(b"job", job(9)))
    replica.apply(snapshot(jobs=(job(3),), runners=(), steps=()))
    assert list(replica.live) == [3] and not replica.ended
    assert not replica.runners and not replica.steps


def test_a_job_moves_from_live_to_ended_and_loses_its_step() -> None:
    replica = Replica()
    replica.apply(snapshot())
    replica.apply(update(b"step", step(1, 1)))
    assert replica.steps[1].index == 1
    replica.apply(update(b"job", job(1, "failed")))
    assert 1 not in replica.live and replica.ended[1].state == "failed"
    assert 1 not in replica.steps
    assert list(replica.ended) == [0, 1], "the latest to end comes last"


def test_a_step_of_a_job_not_live_is_ignored() -> None:
    replica = Replica()
    replica.apply(snapshot())
    replica.apply(update(b"step", step(0, 3), step(42, 0)))
    assert set(replica.steps) == {1}


def test_a_requeued_job_is_live_again() -> None:
    replica = Replica()
    replica.apply(snapshot())
    replica.apply(update(b"job", job(1, "queued", attempt=2)))
    assert replica.live[1].attempt == 2


def test_ended_jobs_are_trimmed_to_the_latest() -> None:
    replica = Replica(max_ended=3)
    replica.apply(snapshot())
    replica.apply(update(b"job", *(job(i, "success") for i in range(10, 20))))
    assert list(replica.ended) == [17, 18, 19]


def test_live_jobs_and_runners_are_bounded() -> None:
    replica = Replica(max_live=5, max_runners=2)
    replica.apply(snapshot())
    replica.apply(update(b"job", *(job(i) for i in range(10, 20))))
    assert list(replica.live) == [15, 16, 17, 18, 19]
    replica.apply(update(b"runner", *(runner(f"tcp://h:{p}") for p in range(2, 6))))
    assert list(replica.runners) == ["tcp://h:4", "tcp://h:5"]


def test_a_runner_changes_then_goes() -> None:
    replica = Replica()
    replica.apply(snapshot())
    replica.apply(update(b"runner", runner("tcp://h:1", free=0), runner("tcp://h:2")))
    assert replica.runners["tcp://h:1"].free == 0 and len(replica.runners) == 2
    replica.apply(update(b"runner", runner("tcp://h:1", state="gone")))
    assert list(replica.runners) == ["tcp://h:2"]


def test_queue_and_stats_take_the_latest() -> None:
    replica = Replica()
    replica.apply(snapshot())
    queue = f.QueueView(queued=0, active=0, oldest=None)
    stats = replace(STATS, jobs_total={"success": 2})
    replica.apply(update(b"queue", queue))
    replica.apply(update(b"stats", stats))
    assert replica.queue == queue and replica.stats == stats


def test_log_usage_and_beats_change_nothing() -> None:
    replica = Replica()
    replica.apply(snapshot())
    before = replica.render()
    replica.apply(update(b"log", f.LogView(job_id=1, attempt=1, seq=3, size=10)))
    usage = f.UsageView(job_id=1, attempt=1, index=0, samples=((1.0, 0.1, 10),), memory_limit=None)
    replica.apply(update(b"usage", usage))
    replica.apply(update(b"beat"))
    assert replica.render() == before


def test_render_is_json_in_the_api_state_shape() -> None:
    replica = Replica()
    replica.apply(snapshot())
    rendered = json.loads(json.dumps(replica.render()))
    assert set(rendered) == {"runners", "jobs", "queue", "stats", "steps"}
    assert [j["id"] for j in rendered["jobs"]] == [2, 1, 0], "newest first"
    assert rendered["queue"]["oldest"]["id"] == 2
    assert rendered["stats"]["minutes"] == [[0, 1, 1]]
    assert rendered["runners"][0]["endpoint"] == "tcp://h:1"
    assert rendered["steps"][0]["job_id"] == 1
    assert rendered["jobs"][0] == {**f.to_map(job(2))}


def test_a_job_is_found_live_or_ended() -> None:
    replica = Replica()
    replica.apply(snapshot())
    assert replica.job(1) == job(1, "running")
    assert replica.job(0) == job(0, "success")
    assert replica.job(5) is None
