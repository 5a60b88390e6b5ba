"""Steps' CPU and memory, from a real local step to ``GET /api/jobs/{id}``.

A step holding about 50 MiB and burning a core for two seconds runs on a
real runner with the local executor; its samples travel in USAGE frames,
are stored in SQLite, heard on the feed after their commit, and shown with
the step in the API (docs/backend.md, "Steps' resources"). The frames' own
rules (stored once, in stream order) are checked on the shipped fakes.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path

from narwhal.config import DispatcherConfig
from narwhal.dispatcher.core import Dispatcher
from narwhal.dispatcher.feed import Event, UsageSampled
from narwhal.dispatcher.store.memory import MemoryStore
from narwhal.mesh import protocol as p
from narwhal.testing import FakeMesh
from tests.support.eventually import eventually_async
from tests.support.repos import Repo
from tests.support.usage import run_job, runner_config

MiB = 1 << 20

BURN = """\
import time
held = b"x" * (50 << 20)
end = time.time() + 2
while time.time() < end:
    pass
"""


def test_a_local_step_s_usage_reaches_the_api(
    make_repo: Callable[..., Repo], tmp_path: Path
) -> None:
    repo = make_repo(
        {
            "burn.py": BURN,
            "narwhal.yml": f"""\
steps:
  - name: burn
    command: {sys.executable} burn.py
  - name: after
    command: "true"
""",
        }
    )
    job, heard = asyncio.run(run_job(repo, runner_config(tmp_path / "work"), tmp_path / "data"))
    assert job["state"] == "success", job
    burn, after = job["steps"]
    usage = burn["usage"]
    assert usage is not None and usage["memory_limit"] is None
    assert usage["peak_memory"] >= 40 * MiB, usage["peak_memory"]
    assert usage["peak_cpu"] > 0.3, usage["peak_cpu"]
    samples = usage["samples"]
    assert len(samples) >= 5 and all(len(s) == 3 for s in samples)
    assert max(m for _, _, m in samples) == usage["peak_memory"]
    assert [t for t, _, _ in samples] == sorted(t for t, _, _ in samples)
    assert samples[-1][0] <= burn["duration"] + 0.05
    # Frames went out while the step ran, and the feed heard each once stored.
    mine = [e for e in heard if e.index == 0]
    assert len(mine) >= 2 and [s for e in mine for s in e.samples] == [tuple(s) for s in samples]
    # A step far shorter than one interval still has a sample: its shell's, taken at its end.
    (quick,) = after["usage"]["samples"]
    assert quick[2] > 0 and after["usage"]["peak_memory"] == quick[2]


def test_usage_frames_are_stored_once_and_heard_after_their_commit(tmp_path: Path) -> None:
    async def main() -> None:
        store = MemoryStore()
        mesh = FakeMesh()
        async with Dispatcher(DispatcherConfig(data_dir=tmp_path), store=store, mesh=mesh) as d:
            heard: list[tuple[Event, int]] = []
            d.feed.subscribe(lambda e: heard.append((e, store.commits)))
            runner = await mesh.add_runner("r1", capacity=1)
            job = await d.submit(repo="/r", ref="main", sha="a" * 40, event="push", labels={})
            await eventually_async(lambda: runner.jobs, what="a JOB frame")
            key = (job.id, 1)
            assert await runner.accept(key)
            before = store.commits
            frame = p.Usage(
                job_id=job.id,
                attempt=1,
                seq=1,
                index=0,
                samples=((0.5, 1.25, 3 * MiB),),
                memory_limit=64 * MiB,
            )
            assert await runner.send(frame)
            assert await runner.send(frame)  # resent after a reconnect: nothing twice
            (usage,) = (await store.usage(job.id, 1)).values()
            assert usage.samples == ((0.5, 1.25, 3 * MiB),) and usage.memory_limit == 64 * MiB
            events = [(e, c) for e, c in heard if isinstance(e, UsageSampled)]
            assert len(events) == 1
            event, commits = events[0]
            assert commits > before  # heard once committed
            assert (event.job_id, event.attempt, event.index) == (job.id, 1, 0)
            assert event.samples == ((0.5, 1.25, 3 * MiB),) and event.memory_limit == 64 * MiB
            assert isinstance(event.samples[0][2], int)

    asyncio.run(main())
