"""The dashboard's JSON API shows placement: a job's pending explanation, a runner's report.

A dispatcher on the shipped fakes with its REST API and metrics feed
served for real on loopback, and a ``Backend`` reading both
(``tests.support.fakestack``); a browser is an httpx client signed in with
a token. Runners report whatever the test says (credentials in a mirror's
URL included: they never reach the page).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from narwhal.mesh import protocol as p
from tests.dispatcher.test_metrics_placement import STATE, Quarantine, checked_out
from tests.support.eventually import eventually, eventually_async
from tests.support.fakestack import TOKEN, FakeStack

SECRET_REPO = "https://ci:s3cret@forge.example/private.git"
REPORT = dataclasses.replace(
    STATE,
    mirrors=(p.WarmRepo(repo=SECRET_REPO, sha="d" * 40, used_at=5.0, size=1 << 20),),
)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[FakeStack]:
    with FakeStack(tmp_path / "data", dashboard=True) as served:
        yield served


@pytest.fixture
def browser(stack: FakeStack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.board, headers={"Origin": stack.board}, timeout=30) as c:
        assert c.post("/session", json={"token": TOKEN}).status_code == 200
        yield c


def test_a_job_page_has_the_pending_explanation_then_the_placement(
    stack: FakeStack, browser: httpx.Client
) -> None:
    d = stack.dispatcher
    assert d is not None
    with httpx.Client(base_url=stack.api, headers={"Authorization": f"Bearer {TOKEN}"}) as api:
        made = api.post("/api/jobs", json={"repo": "/srv/app", "labels": {"gpu": "a100"}})
        assert made.status_code == 201, made.text
    job_id = made.json()["id"]
    pending = eventually(lambda: d.pending(job_id), what="an explanation")
    waiting = browser.get(f"/api/jobs/{job_id}").json()
    assert waiting["pending"] == {**pending.to_json(), "text": pending.text}
    assert waiting["placement"] is None and waiting["checkout"] is None

    async def run_it() -> None:
        runner = await stack.mesh.add_runner("gpu-1", capacity=1, labels={"gpu": "a100"})
        await eventually_async(lambda: runner.jobs, what="the JOB frame")
        assert await runner.accept((job_id, 1))
        await checked_out(runner, (job_id, 1), 0.25, cold=False)

    stack.run(run_it())
    placed = browser.get(f"/api/jobs/{job_id}").json()
    assert placed["pending"] is None and placed["placement"].startswith("placed on gpu-1")
    assert (placed["checkout"], placed["cold"]) == (0.25, False)


def test_a_runner_page_has_its_report_and_its_quarantine(
    stack: FakeStack, browser: httpx.Client
) -> None:
    assert stack.dispatcher is not None
    stack.dispatcher.signals.health = Quarantine("old")

    async def connect() -> None:
        runner = await stack.mesh.add_runner("build-1", capacity=2)
        await runner.ready(state=REPORT)
        await stack.mesh.add_runner("old", capacity=1)

    stack.run(connect())
    eventually(
        lambda: browser.get("/api/runners/old").json().get("runner"), what="the feed's runner"
    )
    build = browser.get("/api/runners/build-1")
    assert build.status_code == 200, build.text
    shown = build.json()
    assert shown["quarantine"] is None and shown["runner"]["id"] == "build-1"
    assert shown["report"]["memory_total"] == STATE.memory_total
    assert shown["report"]["mirrors"][0]["repo"] == "https://***@forge.example/private.git"
    assert "s3cret" not in build.text
    old = browser.get("/api/runners/old").json()
    assert old["report"] is None
    assert old["quarantine"]["reason"] == "3 checkout failures in 5 minutes"
    assert browser.get("/api/runners/nobody").status_code == 404
