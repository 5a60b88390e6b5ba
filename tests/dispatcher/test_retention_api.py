"""Log retention on a real SQLite store behind the real API: ``POST /api/gc``.

Ended jobs' logs go oldest first, the job rows, their history and steps stay,
a running job's log is never touched, a dry run deletes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

from narwhal.config import DispatcherConfig, LogLimit, RetentionConfig
from narwhal.dispatcher.api import Access, build_app
from narwhal.dispatcher.core import Dispatcher
from narwhal.dispatcher.store.base import AppendLog, CreateJob, NewJob, Transition
from narwhal.dispatcher.store.sqlite import SqliteStore
from narwhal.dispatcher.tokens import Tokens
from narwhal.testing import FakeMesh

TOKEN = "nw_retention_token"
LOG = b"PASSED tests/test_pipeline.py::test_matrix\n" * 2000  # 86 KB, compresses well


@contextlib.asynccontextmanager
async def served(
    tmp_path: Path, keep: LogLimit
) -> AsyncIterator[tuple[Dispatcher, httpx.AsyncClient]]:
    config = DispatcherConfig(data_dir=tmp_path, retention=RetentionConfig(keep=keep))
    store = SqliteStore(tmp_path / "narwhal.db")
    async with Dispatcher(config, store=store, mesh=FakeMesh()) as dispatcher:
        tokens = await Tokens.open(dispatcher, env_token=TOKEN)
        transport = httpx.ASGITransport(app=build_app(dispatcher, Access(tokens)))
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with httpx.AsyncClient(
            transport=transport, base_url="http://narwhal", headers=headers
        ) as http:
            yield dispatcher, http


async def _job_with_log(d: Dispatcher, end: str | None, at: float) -> int:
    """A job written straight to the store (no runner here), ended at ``at`` unless ``end`` None."""
    new = NewJob(repo="https://forge.invalid/a.git", ref="main", sha=None, event="push")
    ((job, _),) = await d.store.apply([CreateJob(job=new)])
    moves = [("assigned", "r1"), ("running", "r1")] + ([(end, "r1")] if end else [])
    for state, runner in moves:
        move = Transition(job_id=job.id, attempt=1, to=state, reason=state, runner_id=runner, at=at)
        await d.store.apply([move])
    await d.store.apply([AppendLog(job_id=job.id, attempt=1, seq=0, data=LOG)])
    return job.id


async def _log(http: httpx.AsyncClient, job_id: int) -> bytes:
    response = await http.get(f"/api/jobs/{job_id}/logs")
    assert response.status_code == 200
    return response.content


def test_gc_deletes_the_oldest_ended_logs_and_keeps_the_jobs(tmp_path: Path) -> None:
    async def main() -> dict[str, Any]:
        async with served(tmp_path, LogLimit(days=7)) as (d, http):
            old = await _job_with_log(d, "success", 1.0)  # ended in 1970
            older_failed = await _job_with_log(d, "failed", 0.5)
            running = await _job_with_log(d, None, 0.5)
            new = await _job_with_log(d, "success", 4e9)  # ends in the future: young
            dry = (await http.post("/api/gc", json={"dry_run": True})).json()
            logs_after_dry = await _log(http, old)
            done = (await http.post("/api/gc", json={})).json()
            again = (await http.post("/api/gc", json={})).json()
            job = (await http.get(f"/api/jobs/{old}")).json()
            return {
                "dry": dry,
                "after_dry": logs_after_dry,
                "done": done,
                "again": again,
                "logs": [await _log(http, j) for j in (old, older_failed, running, new)],
                "job": job,
                "freed": d.retention.freed,
            }

    got = asyncio.run(main())
    assert got["dry"]["dry_run"] and got["dry"]["jobs"] == 2 and got["after_dry"] == LOG
    assert got["done"]["jobs"] == 2 and not got["done"]["dry_run"]
    # Stored compressed: what gc frees is far less than the output.
    assert 0 < got["done"]["bytes"] < len(LOG) // 10
    assert got["freed"] == got["done"]["bytes"]
    assert got["again"]["jobs"] == 0
    # A deleted log reads as one line saying so; the marker is not collected again.
    deleted = b"narwhal: this log was deleted by the log retention policy on "
    assert [log.startswith(deleted) for log in got["logs"]] == [True, True, False, False]
    assert got["logs"][0].count(b"\n") == 1 and got["logs"][2:] == [LOG, LOG]
    assert got["job"]["state"] == "success"
    assert [t["state"] for t in got["job"]["transitions"]][-1] == "success"


def test_gc_refuses_a_bad_body_and_a_non_admin(tmp_path: Path) -> None:
    async def main() -> tuple[int, str, int]:
        async with served(tmp_path, LogLimit(days=1)) as (d, http):
            bad = await http.post("/api/gc", json={"dry_run": "yes"})
            made = await http.post("/api/tokens", json={"name": "w", "scope": "write"})
            writer = {"Authorization": f"Bearer {made.json()['token']}"}
            refused = await http.post("/api/gc", json={}, headers=writer)
            return bad.status_code, bad.json()["error"], refused.status_code

    status, error, refused = asyncio.run(main())
    assert status == 400 and "dry_run" in error
    assert refused == 403
