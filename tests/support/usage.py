"""One job through a real runner and an in-process dispatcher, read back through the API.

For the steps' usage tests: the runner (local or Docker executor) samples
the job's steps, the dispatcher stores the USAGE frames in SQLite, and the
test reads ``GET /api/jobs/{id}`` as a client would, with what the feed
heard meanwhile.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx

from narwhal.config import DispatcherConfig, MeshConfig, RunnerConfig
from narwhal.dispatcher.api import Access, build_app
from narwhal.dispatcher.feed import Event, UsageSampled, on_jobs
from narwhal.dispatcher.records import JobRecord
from narwhal.dispatcher.tokens import Tokens
from narwhal.runner.runner import Runner
from tests.support.dispatchers import running_dispatcher
from tests.support.eventually import eventually_async
from tests.support.repos import Repo

MESH = MeshConfig(heartbeat_interval=0.5, liveness=5)
TOKEN = "usage-t0ken"


def runner_config(work: Path, **fields: Any) -> RunnerConfig:
    """A runner on an ephemeral port that samples every 0.2 s and sends every 0.5 s."""
    base = RunnerConfig(
        runner_id="usage",
        listen="tcp://127.0.0.1:0",
        work_dir=work,
        mesh=MESH,
        allow_local_repos=True,
        usage_interval=0.2,
        usage_send_every=0.5,
    )
    return replace(base, **fields)


async def run_job(
    repo: Repo, runner_conf: RunnerConfig, data: Path, *, timeout: float = 60
) -> tuple[dict[str, Any], list[UsageSampled]]:
    """Run the repository's pipeline once; the API's job and the feed's usage events."""
    jobs: list[JobRecord] = []
    heard: list[UsageSampled] = []

    def usage(event: Event) -> None:
        if isinstance(event, UsageSampled):
            heard.append(event)

    async with Runner(runner_conf) as runner:
        conf = DispatcherConfig(data_dir=data, runners=(runner.endpoint,), mesh=MESH)
        async with running_dispatcher(conf) as dispatcher:
            dispatcher.feed.subscribe(on_jobs(jobs.append))
            dispatcher.feed.subscribe(usage)
            job = await dispatcher.submit(
                repo=str(repo.path), ref="refs/heads/main", sha=None, event="push", labels={}
            )
            await eventually_async(
                lambda: any(j.id == job.id and j.terminal for j in jobs),
                timeout=timeout,
                what="the job's end",
            )
            tokens = await Tokens.open(dispatcher, env_token=TOKEN)
            transport = httpx.ASGITransport(app=build_app(dispatcher, Access(tokens)))
            headers = {"Authorization": f"Bearer {TOKEN}"}
            async with httpx.AsyncClient(
                transport=transport, base_url="http://narwhal", headers=headers
            ) as http:
                answer = await http.get(f"/api/jobs/{job.id}")
    assert answer.status_code == 200, answer.text
    return answer.json(), heard
