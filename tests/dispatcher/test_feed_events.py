"""The dispatcher's event stream (``dispatcher.feed``) on the shipped fakes.

Each event is heard once what it says is committed, in commit order, and
its consumers (log followers among them) need nothing else to follow a job.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from narwhal.config import DispatcherConfig
from narwhal.dispatcher.core import Dispatcher
from narwhal.dispatcher.feed import (
    Event,
    Feed,
    JobChanged,
    JobUpdated,
    LogAppended,
    QueueDepth,
    RunnerChanged,
    RunnerLeft,
    StepChanged,
)
from narwhal.dispatcher.gauges import Gauges
from narwhal.dispatcher.store.memory import MemoryStore
from narwhal.testing import FakeMesh
from tests.support.eventually import eventually_async


def test_a_job_s_life_is_heard_in_order_each_event_after_its_commit(tmp_path: Path) -> None:
    async def main() -> None:
        store = MemoryStore()
        config = DispatcherConfig(data_dir=tmp_path)
        mesh = FakeMesh()
        async with Dispatcher(config, store=store, mesh=mesh) as d:
            heard: list[tuple[Event, int]] = []
            d.feed.subscribe(lambda e: heard.append((e, store.commits)))
            runner = await mesh.add_runner("r1", capacity=1)
            job = await d.submit(repo="/r", ref="main", sha="a" * 40, event="push", labels={})
            await eventually_async(lambda: runner.jobs, what="a JOB frame")
            key = (job.id, 1)
            assert await runner.accept(key)
            assert await runner.step(key, 0, "build")
            assert await runner.log(key, b"hello\n")
            assert await runner.done(key, "success")
            mine = [(e, c) for e, c in heard if _job_of(e) == job.id]
            moves = [(e.before, e.job.state) for e, _ in mine if isinstance(e, JobChanged)]
            assert moves == [
                (None, "queued"),
                ("queued", "assigned"),
                ("assigned", "running"),
                ("running", "success"),
            ]
            logs = [e for e, _ in mine if isinstance(e, LogAppended)]
            assert [(e.seq, e.size) for e in logs] == [(3, 6)]
            steps = [e for e, _ in mine if isinstance(e, StepChanged)]
            assert steps and steps[0].status == "running" and steps[0].name == "build"
            # Nothing is heard before the commit that makes it true.
            commits = [c for _, c in mine]
            assert commits == sorted(commits) and all(c > 0 for c in commits)
            assert any(isinstance(e, RunnerChanged) and e.joined for e, _ in heard)

    asyncio.run(main())


def _job_of(event: Event) -> int | None:
    if isinstance(event, JobChanged):
        return event.job.id
    return getattr(event, "job_id", None)


def test_a_broken_consumer_does_not_stop_the_others() -> None:
    feed = Feed()
    heard: list[Event] = []

    def broken(event: Event) -> None:
        raise RuntimeError("boom")

    feed.subscribe(broken)
    stop = feed.subscribe(heard.append)
    event = JobUpdated(1, None)
    feed.publish(event)
    assert heard == [event]
    stop()
    feed.publish(event)
    assert heard == [event] and bool(feed)


def test_gauges_report_load_changes_and_departures_only_when_they_differ(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        mesh = FakeMesh()
        config = DispatcherConfig(data_dir=tmp_path)
        async with Dispatcher(config, store=MemoryStore(), mesh=mesh) as d:
            heard: list[Event] = []
            gauges = Gauges(d.feed, d.jobs)
            d.feed.subscribe(heard.append)
            runner = await mesh.add_runner("r1", capacity=2)
            gauges.look(mesh.peers())
            looked = [e for e in heard if isinstance(e, QueueDepth) or type(e) is RunnerChanged]
            # The dispatcher's own gauges said it joined; these say its load and the queue.
            assert sum(isinstance(e, RunnerChanged) and e.joined for e in looked) == 1
            assert len(looked) == 3
            heard.clear()
            gauges.look(mesh.peers())  # nothing changed: nothing said
            assert heard == []
            await runner.lose("unplugged")
            heard.clear()
            gauges.look([])
            assert [type(e) for e in heard] == [RunnerLeft]

    asyncio.run(main())
