"""A store that refuses writes for a while delays the dispatcher; it loses nothing."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path

import httpx
import pytest

from narwhal.config import DispatcherConfig, MeshConfig
from narwhal.dispatcher.api import Access, build_app
from narwhal.dispatcher.feed import on_jobs
from narwhal.dispatcher.records import JobRecord
from narwhal.dispatcher.store.base import NewJob
from narwhal.dispatcher.tokens import Tokens
from tests.support.dispatchers import running_dispatcher
from tests.support.eventually import eventually_async
from tests.support.standins import standins


def test_assignment_waits_out_a_foreign_write_lock(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> list[str]:
        config = DispatcherConfig(
            data_dir=tmp_path, mesh=MeshConfig(heartbeat_interval=0.5, liveness=5)
        )
        finished: list[JobRecord] = []
        async with running_dispatcher(config) as dispatcher:
            dispatcher.feed.subscribe(
                on_jobs(lambda job: finished.append(job) if job.terminal else None)
            )
            job = NewJob(repo="/r", ref="refs/heads/main", sha=None, event="push")
            jobs = await dispatcher.submit_many([job] * 3)
            # Another process holds SQLite's write lock (a real one, not a stub).
            blocker = sqlite3.connect(config.db_path, isolation_level=None)
            blocker.execute("BEGIN IMMEDIATE")
            with standins(1, 2) as (endpoint,):
                dispatcher.mesh.connect(endpoint)
                await asyncio.sleep(1.5)  # the runner is ready; assigning keeps failing
                states = [(await dispatcher.store.get_job(j.id)).state for j in jobs]
                assert states == ["queued"] * 3
                assert all(not peer.held for peer in dispatcher.mesh.peers())
                blocker.execute("ROLLBACK")
                await eventually_async(lambda: len(finished) == 3, timeout=5, what="3 finished")
            blocker.close()
            return [j.state for j in finished]

    with caplog.at_level(logging.ERROR, logger="narwhal.dispatcher.core"):
        assert asyncio.run(scenario()) == ["success"] * 3
    assert "cannot assign jobs" in caplog.text and "database is locked" in caplog.text


WRITES = [
    ("/api/jobs", {"repo": "/r", "ref": "refs/heads/main"}),
    ("/api/runners", {"url": "tcp://127.0.0.1:9"}),
    ("/api/tokens", {"name": "ci", "scope": "read"}),
]


@pytest.mark.parametrize(("path", "body"), WRITES, ids=[path for path, _ in WRITES])
def test_api_answers_503_while_the_store_is_locked(
    tmp_path: Path, path: str, body: dict[str, str]
) -> None:
    async def scenario() -> tuple[httpx.Response, httpx.Response]:
        config = DispatcherConfig(data_dir=tmp_path, allow_local_repos=True)
        async with running_dispatcher(config) as dispatcher:
            tokens = await Tokens.open(dispatcher, env_token="t0ken")
            transport = httpx.ASGITransport(app=build_app(dispatcher, Access(tokens)))
            headers = {"Authorization": "Bearer t0ken"}
            async with httpx.AsyncClient(
                transport=transport, base_url="http://narwhal", headers=headers
            ) as http:
                blocker = sqlite3.connect(config.db_path, isolation_level=None)
                blocker.execute("BEGIN IMMEDIATE")
                refused = await http.post(path, json=body)
                blocker.execute("ROLLBACK")
                blocker.close()
                return refused, await http.post(path, json=body)

    refused, accepted = asyncio.run(scenario())
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert "unavailable" in refused.json()["error"], refused.text
    assert accepted.status_code == 201, accepted.text
