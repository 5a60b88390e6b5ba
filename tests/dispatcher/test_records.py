"""What listeners are told matches what the store holds, with a real runner.

The dispatcher predicts most records in memory (``JobRecord.moved``); a job
whose row changed (checked out: sha, pipeline, matrix) must be read back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from narwhal.config import DispatcherConfig, MeshConfig, RunnerConfig
from narwhal.dispatcher.feed import on_jobs
from narwhal.dispatcher.records import JobRecord
from narwhal.runner.runner import Runner
from tests.support.dispatchers import running_dispatcher
from tests.support.eventually import eventually_async
from tests.support.repos import Repo

MESH = MeshConfig(heartbeat_interval=0.5, liveness=5)
PIPELINE = """\
name: unit
matrix:
  py: ["3.11", "3.12"]
steps:
  - name: hello
    command: echo py ${py}
"""


def test_listeners_get_the_stored_records(make_repo: Callable[..., Repo], tmp_path: Path) -> None:
    repo = make_repo({"narwhal.yml": PIPELINE})
    sha = repo.commit({"README": "x\n"})

    async def main() -> tuple[list[JobRecord], list[JobRecord]]:
        seen: list[JobRecord] = []
        runner_conf = RunnerConfig(
            runner_id="r1",
            listen="tcp://127.0.0.1:0",
            work_dir=tmp_path / "work",
            mesh=MESH,
            allow_local_repos=True,
        )
        async with Runner(runner_conf) as runner:
            conf = DispatcherConfig(
                data_dir=tmp_path / "data", runners=(runner.endpoint,), mesh=MESH
            )
            async with running_dispatcher(conf) as dispatcher:
                dispatcher.feed.subscribe(on_jobs(seen.append))
                await dispatcher.submit(
                    repo=str(repo.path), ref="refs/heads/main", sha=None, event="push", labels={}
                )
                await eventually_async(
                    lambda: sum(job.terminal for job in seen) == 2, timeout=10, what="two ends"
                )
                stored = [await dispatcher.store.get_job(j.id) for j in seen if j.terminal]
        return seen, stored

    seen, stored = asyncio.run(main())
    final = [job for job in seen if job.terminal]
    assert final == stored  # every field, for both matrix combinations
    assert {(j.state, j.pipeline, j.sha) for j in final} == {("success", "unit", sha)}
    assert sorted(j.matrix["py"] for j in final if j.matrix) == ["3.11", "3.12"]
    first = [job.state for job in seen if job.id == final[0].id]
    assert first == ["queued", "assigned", "running", "success"]
