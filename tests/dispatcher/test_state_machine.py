"""The dispatcher's state machine on the shipped fakes: MemoryStore and FakeMesh.

No socket, no SQLite file, no process: each test plays runners frame by
frame and checks what the dispatcher stored, sent and kept in memory. The
same behaviour over real ZeroMQ and SQLite is tested by the integration
and system tiers (test_flow, test_frames, test_trust, test_chaos).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from narwhal.config import DispatcherConfig
from narwhal.dispatcher.core import Conflict, Dispatcher
from narwhal.dispatcher.feed import on_jobs
from narwhal.dispatcher.records import ACTIVE, JobRecord
from narwhal.dispatcher.store.base import JobQuery
from narwhal.dispatcher.store.memory import MemoryStore
from narwhal.testing import FakeMesh, FakeRunner
from tests.support.eventually import eventually_async

Scenario = Callable[[Dispatcher, FakeMesh, MemoryStore], Coroutine[Any, Any, None]]


def play(tmp_path: Path, scenario: Scenario, *, store: MemoryStore | None = None) -> None:
    config = DispatcherConfig(data_dir=tmp_path, max_attempts=2)
    store = store or MemoryStore()

    async def main() -> None:
        mesh = FakeMesh()
        async with Dispatcher(config, store=store, mesh=mesh) as dispatcher:
            await scenario(dispatcher, mesh, store)
            await agrees(dispatcher, store)

    asyncio.run(main())


async def agrees(dispatcher: Dispatcher, store: MemoryStore) -> None:
    """Memory holds exactly the store's queued and active jobs, as the store has them."""
    queued = await store.list_jobs(JobQuery(states=("queued",), limit=None, ascending=True))
    active = await store.list_jobs(JobQuery(states=tuple(ACTIVE), limit=None))
    assert list(dispatcher.jobs.queue.values()) == queued
    assert dispatcher.jobs.active == {job.id: job for job in active}


async def submit(dispatcher: Dispatcher, sha: str = "a" * 40) -> JobRecord:
    return await dispatcher.submit(
        repo="/r", ref="refs/heads/main", sha=sha, event="push", labels={}
    )


async def sent_jobs(runner: FakeRunner, count: int) -> list[tuple[int, int]]:
    await eventually_async(lambda: len(runner.jobs) >= count, what=f"{count} JOB frame(s)")
    return [(job.job_id, job.attempt) for job in runner.jobs]


async def state(dispatcher: Dispatcher, job_id: int) -> str:
    return (await dispatcher.store.get_job(job_id)).state


def test_a_job_runs_to_success_and_every_change_is_heard_after_it_is_stored(
    tmp_path: Path,
) -> None:
    async def scenario(d: Dispatcher, mesh: FakeMesh, store: MemoryStore) -> None:
        heard: list[tuple[str, int]] = []
        # A listener hears of a change only once its commit is made.
        d.feed.subscribe(on_jobs(lambda job: heard.append((job.state, store.commits))))
        runner = await mesh.add_runner("r1", capacity=1)
        job = await submit(d)
        [key] = await sent_jobs(runner, 1)
        assert key == (job.id, 1) and runner.jobs[0].sha == "a" * 40
        assert await runner.accept(key)
        assert await runner.step(key, 0, "build")
        assert await runner.log(key, b"hello\n")
        assert await runner.done(key, "success")
        assert [state for state, _ in heard] == ["queued", "assigned", "running", "success"]
        commits = [count for _, count in heard]
        assert commits == sorted(set(commits)) and commits[-1] == store.commits
        history = [t.state for t in await store.transitions(job.id)]
        assert history == ["queued", "assigned", "running", "success"]
        assert await store.read_log(job.id, 1) == [(3, b"hello\n")]
        assert [s.status for s in await store.steps(job.id, 1)] == ["success"]
        assert runner.peer.free == 1 and not d.jobs.active

    play(tmp_path, scenario)


def test_slots_bound_what_is_sent_and_a_done_frees_one(tmp_path: Path) -> None:
    async def scenario(d: Dispatcher, mesh: FakeMesh, store: MemoryStore) -> None:
        runner = await mesh.add_runner("r1", capacity=2)
        jobs = [await submit(d, sha) for sha in ("a" * 40, "b" * 40, "c" * 40)]
        keys = await sent_jobs(runner, 2)
        await asyncio.sleep(0.05)
        assert len(runner.jobs) == 2 and d.queued() == 1
        assert await runner.accept(keys[0]) and await runner.done(keys[0], "failed")
        assert (await sent_jobs(runner, 3))[2] == (jobs[2].id, 1)
        assert await state(d, jobs[0].id) == "failed"

    play(tmp_path, scenario)


def test_a_lost_runner_s_job_is_requeued_then_gives_up_after_max_attempts(
    tmp_path: Path,
) -> None:
    async def scenario(d: Dispatcher, mesh: FakeMesh, store: MemoryStore) -> None:
        first = await mesh.add_runner("r1")
        job = await submit(d)
        [key] = await sent_jobs(first, 1)
        assert await first.accept(key)
        await first.lose("killed")
        second = await mesh.add_runner("r2")
        assert await sent_jobs(second, 1) == [(job.id, 2)]
        record = await store.get_job(job.id)
        assert record.attempt == 2 and record.runner_id == "r2"
        assert "killed; requeued" in [t.reason for t in await store.transitions(job.id)]
        # A late DONE of the first attempt changes nothing.
        assert not await first.done(key, "success") or await state(d, job.id) == "assigned"
        await second.lose("killed again")
        await eventually_async(lambda: not d.jobs.active, what="the job given up")
        ended = await store.get_job(job.id)
        assert ended.state == "error" and "gave up after 2 attempts" in ended.reason

    play(tmp_path, scenario)


def test_a_reject_requeues_the_job_for_another_runner(tmp_path: Path) -> None:
    async def scenario(d: Dispatcher, mesh: FakeMesh, store: MemoryStore) -> None:
        busy = await mesh.add_runner("busy")
        job = await submit(d)
        [key] = await sent_jobs(busy, 1)
        other = await mesh.add_runner("other")
        assert await busy.reject(key, "no docker")
        await eventually_async(lambda: bool(other.jobs or len(busy.jobs) > 1), what="a resend")
        record = await store.get_job(job.id)
        assert record.attempt == 2 and record.state == "assigned"
        assert "rejected it: no docker" in (await store.transitions(job.id))[-2].reason

    play(tmp_path, scenario)


def test_cancel_ends_a_queued_job_and_asks_a_runner_to_stop_a_running_one(
    tmp_path: Path,
) -> None:
    async def scenario(d: Dispatcher, mesh: FakeMesh, store: MemoryStore) -> None:
        queued = await submit(d)
        assert (await d.cancel(queued.id)).state == "cancelled"
        with pytest.raises(Conflict):
            await d.cancel(queued.id)
        runner = await mesh.add_runner("r1")
        running = await submit(d, "b" * 40)
        [key] = await sent_jobs(runner, 1)
        assert await runner.accept(key)
        asked = await d.cancel(running.id)
        assert asked.state == "running" and asked.cancel_requested
        assert d.jobs.active[running.id].cancel_requested
        assert [c.job_id for c in runner.cancels] == [running.id]
        assert await runner.done(key, "cancelled", "cancelled by user")
        assert await state(d, running.id) == "cancelled"

    play(tmp_path, scenario)


def test_a_refused_commit_changes_nothing_and_the_resend_is_stored(tmp_path: Path) -> None:
    async def scenario(d: Dispatcher, mesh: FakeMesh, store: MemoryStore) -> None:
        runner = await mesh.add_runner("r1")
        job = await submit(d)
        [key] = await sent_jobs(runner, 1)
        store.refuse("disk full")
        assert not await runner.accept(key)  # not stored: not acknowledged
        assert d.jobs.active[job.id].state == "assigned"
        store.refuse(None)
        assert await runner.accept(key, seq=0)
        assert d.jobs.active[job.id].state == "running"
        assert await state(d, job.id) == "running"

    play(tmp_path, scenario)


def test_a_matrix_checkout_queues_its_siblings_in_the_same_commit(tmp_path: Path) -> None:
    async def scenario(d: Dispatcher, mesh: FakeMesh, store: MemoryStore) -> None:
        runner = await mesh.add_runner("r1", capacity=3)
        parent = await submit(d)
        [key] = await sent_jobs(runner, 1)
        commits = store.commits
        variants = ({"N": "1"}, {"N": "2"}, {"N": "3"})
        assert await runner.checked_out(key, variants=variants)
        assert store.commits == commits + 1
        children = await store.list_jobs(JobQuery(parent=parent.id, ascending=True))
        assert [c.matrix for c in children] == [{"N": "2"}, {"N": "3"}]
        assert (await store.get_job(parent.id)).matrix == {"N": "1"}
        assert len(await sent_jobs(runner, 3)) == 3
        # Checked out again (a later attempt, a replay): no more siblings.
        assert await runner.checked_out(key, variants=variants)
        assert len(await store.list_jobs(JobQuery(parent=parent.id))) == 2

    play(tmp_path, scenario)


def test_a_job_running_at_a_restart_is_taken_back_from_its_runner_s_ready(
    tmp_path: Path,
) -> None:
    store = MemoryStore()
    held: list[tuple[int, int]] = []

    async def before(d: Dispatcher, mesh: FakeMesh, _: MemoryStore) -> None:
        runner = await mesh.add_runner("r1")
        await submit(d)
        held.extend(await sent_jobs(runner, 1))
        assert await runner.accept(held[0])

    async def after(d: Dispatcher, mesh: FakeMesh, _: MemoryStore) -> None:
        [key] = held
        assert d.jobs.active[key[0]].state == "running"  # recovered from the store
        runner = await mesh.add_runner("r1")
        await runner.ready(active=((key[0], key[1], 1),))
        assert mesh.tracks(runner.peer, key) and not runner.cancels
        assert await runner.done(key, "success")
        assert await state(d, key[0]) == "success"

    play(tmp_path, before, store=store)
    play(tmp_path, after, store=store)
