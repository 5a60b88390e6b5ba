"""Placement in the REST API: why a job waits, where it went and why, what runners report.

A real ``Dispatcher`` on ``FakeMesh`` and ``MemoryStore`` behind the real
API app, called in process (``httpx.ASGITransport``). A quarantine is
played by a ``Health`` that says so (``test_metrics_placement.Quarantine``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from narwhal.config import DispatcherConfig
from narwhal.dispatcher.api import Access, build_app
from narwhal.dispatcher.core import Dispatcher
from narwhal.dispatcher.store.memory import MemoryStore
from narwhal.dispatcher.tokens import Tokens
from narwhal.mesh import protocol as p
from narwhal.testing import FakeMesh
from tests.dispatcher.test_metrics_placement import STATE, Quarantine, checked_out
from tests.support.eventually import eventually_async

TOKEN = "nw_api_placement_token"


@contextlib.asynccontextmanager
async def served(tmp_path: Path) -> AsyncIterator[tuple[Dispatcher, FakeMesh, httpx.AsyncClient]]:
    mesh = FakeMesh()
    config = DispatcherConfig(data_dir=tmp_path, allow_local_repos=True)
    async with Dispatcher(config, store=MemoryStore(), mesh=mesh) as dispatcher:
        tokens = await Tokens.open(dispatcher, env_token=TOKEN)
        transport = httpx.ASGITransport(app=build_app(dispatcher, Access(tokens)))
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with httpx.AsyncClient(
            transport=transport, base_url="http://narwhal", headers=headers
        ) as http:
            yield dispatcher, mesh, http


async def submit(http: httpx.AsyncClient, **body: Any) -> int:
    response = await http.post("/api/jobs", json={"repo": "/srv/app", **body})
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


async def job(http: httpx.AsyncClient, job_id: int) -> dict[str, Any]:
    response = await http.get(f"/api/jobs/{job_id}")
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_a_job_says_why_it_waits_then_where_it_went_and_what_its_checkout_cost(
    tmp_path: Path,
) -> None:
    async def main() -> list[Any]:
        async with served(tmp_path) as (d, mesh, http):
            first = await submit(http, priority=5, resources={"cpus": 2, "memory": "2g"})
            second = await submit(http, labels={"gpu": "a100"})
            await eventually_async(lambda: d.pending(second) is not None, what="an explanation")
            waiting = await job(http, first)
            listed = (await http.get("/api/jobs")).json()["jobs"]
            runner = await mesh.add_runner("r1", capacity=1)
            await eventually_async(lambda: runner.jobs, what="the JOB frame")
            key = (first, 1)
            assert await runner.accept(key)
            placed = await job(http, first)
            await checked_out(runner, key, 4.5, cold=True)
            ran = await job(http, first)
            assert await runner.done(key)
            return [waiting, listed, placed, ran, await job(http, first), d.pending(second)]

    waiting, listed, placed, ran, ended, still = asyncio.run(main())
    assert waiting["state"] == "queued" and waiting["placement"] is None
    pending = waiting["pending"]
    assert set(pending) == {"reason", "text", "position", "eta"}
    assert pending["text"].startswith("waiting") and pending["position"] == 1
    assert (waiting["priority"], waiting["cpus"], waiting["memory"]) == (5, 2.0, 2 << 30)
    assert (waiting["checkout"], waiting["cold"]) == (None, None)
    by_id = {j["id"]: j for j in listed}
    assert by_id[waiting["id"]]["pending"] == pending
    assert by_id[waiting["id"] + 1]["pending"]["text"] == still.text
    assert placed["state"] == "running" and placed["pending"] is None
    assigned = [t for t in placed["transitions"] if t["state"] == "assigned"]
    assert placed["placement"] == assigned[-1]["reason"]
    assert placed["placement"].startswith("placed on r1")
    assert (ran["checkout"], ran["cold"]) == (4.5, True)
    assert ended["state"] == "success" and ended["placement"] == placed["placement"]


def test_runners_show_what_they_report_and_their_quarantine(tmp_path: Path) -> None:
    secret = "https://ci:s3cret@forge.example/private.git"
    state = dataclasses.replace(
        STATE, mirrors=(p.WarmRepo(repo=secret, sha="d" * 40, used_at=5.0, size=1 << 20),)
    )

    async def main() -> tuple[dict[str, Any], str]:
        async with served(tmp_path) as (d, mesh, http):
            d.signals.health = Quarantine("r2")
            reporting = await mesh.add_runner("r1", capacity=2)
            await reporting.ready(state=state)
            await mesh.add_runner("r2", capacity=1)
            response = await http.get("/api/runners")
            return response.json(), response.text

    answer, text = asyncio.run(main())
    r1, r2 = answer["runners"]
    assert r1["quarantine"] is None and r2["quarantine"]["reason"].startswith("3 checkout")
    assert r2["report"] is None
    report = r1["report"]
    assert (report["cpus"], report["load"], report["os"], report["arch"]) == (
        8,
        1.5,
        "linux",
        "amd64",
    )
    assert report["memory_available"] == STATE.memory_available and report["docker"] is True
    assert report["mirrors"] == [
        {
            "repo": "https://***@forge.example/private.git",
            "sha": "d" * 40,
            "used_at": 5.0,
            "size": 1 << 20,
        }
    ]
    assert "s3cret" not in text


GOOD = [
    ({}, (0, None, None)),
    ({"priority": -1000}, (-1000, None, None)),
    ({"priority": 1000, "resources": {}}, (1000, None, None)),
    ({"resources": {"cpus": 0.5}}, (0, 0.5, None)),
    ({"resources": {"memory": 512 << 20}}, (0, None, 512 << 20)),
    ({"resources": {"memory": "512M", "cpus": 4}}, (0, 4.0, 512 << 20)),
    ({"priority": None, "resources": None}, (0, None, None)),
]


@pytest.mark.parametrize(("body", "stored"), GOOD, ids=[str(b) for b, _ in GOOD])
def test_submit_takes_a_priority_and_resources(
    tmp_path: Path, body: dict[str, Any], stored: tuple[Any, ...]
) -> None:
    async def main() -> dict[str, Any]:
        async with served(tmp_path) as (_, _, http):
            return await job(http, await submit(http, **body))

    got = asyncio.run(main())
    assert (got["priority"], got["cpus"], got["memory"]) == stored


BAD = [
    ('"priority": "high"', "priority: expected an integer from -1000 to 1000, got 'high'"),
    ('"priority": true', "priority: expected an integer from -1000 to 1000, got True"),
    ('"priority": 1.5', "priority: expected an integer from -1000 to 1000, got 1.5"),
    ('"priority": 1001', "priority: expected an integer from -1000 to 1000, got 1001"),
    ('"priority": 1e400', "priority: expected an integer from -1000 to 1000, got inf"),
    ('"priority": NaN', "priority: expected an integer from -1000 to 1000, got nan"),
    ('"priority": ' + "12345" * 10, "got " + "12345" * 7 + "12..."),
    ('"priority": [1]', "priority: expected an integer"),
    ('"resources": "2 cpus"', 'resources: expected an object like {"cpus": 2, "memory": "4g"}'),
    ('"resources": [2]', "resources: expected an object"),
    ('"resources": {"gpus": 1}', "resources: unknown key 'gpus'; expected cpus, memory"),
    ('"resources": {"cpus": true}', "resources.cpus: expected a number of CPUs"),
    ('"resources": {"cpus": "2"}', "resources.cpus: expected a number of CPUs from 0.01 to 1024"),
    ('"resources": {"cpus": 0}', "got 0"),
    ('"resources": {"cpus": -1}', "got -1"),
    ('"resources": {"cpus": 5000}', "got 5000"),
    ('"resources": {"cpus": NaN}', "got nan"),
    ('"resources": {"cpus": Infinity}', "got inf"),
    ('"resources": {"cpus": 1e400}', "got inf"),
    ('"resources": {"memory": "2x"}', "resources.memory: expected bytes or a size like 512m"),
    ('"resources": {"memory": "1m"}', "from 6m to 1024g, got '1m'"),
    ('"resources": {"memory": -1}', "got -1"),
    ('"resources": {"memory": 0}', "got 0"),
    ('"resources": {"memory": 1e30}', "got 1e+30"),
    ('"resources": {"memory": 10000000000000000000000000}', "got 10000000000000000000000000"),
    ('"resources": {"memory": "9999999999999999g"}', "got '9999999999999999g'"),
    ('"resources": {"memory": true}', "got True"),
    ('"resources": {"memory": 1.5}', "got 1.5"),
    ('"resources": {"memory": {"g": 2}}', "got {'g': 2}"),
    ('"priority": 1' + "0" * 5000, "body is not valid JSON"),
]


@pytest.mark.parametrize(("field", "error"), BAD, ids=[f for f, _ in BAD])
def test_a_bad_priority_or_resources_is_a_400_that_says_what_is_wrong(
    tmp_path: Path, field: str, error: str
) -> None:
    async def main() -> httpx.Response:
        async with served(tmp_path) as (d, _, http):
            body = '{"repo": "/srv/app", ' + field + "}"
            response = await http.post(
                "/api/jobs", content=body, headers={"Content-Type": "application/json"}
            )
            assert d.queued() == 0
            return response

    response = asyncio.run(main())
    assert response.status_code == 400, response.text
    assert error in response.json()["error"], response.json()
