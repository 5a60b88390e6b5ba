"""The dashboard backend against a real ``up`` (dispatcher, API, runner, metrics feed), over HTTP.

Everything runs in the test process on loopback ports: ``up`` as
``daemons.dispatcher.serve`` composes it, the backend as
``backend.server.Backend``, browsers as httpx clients and a small
websocket client that sends what a page sends.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx

from narwhal.backend.sessions import COOKIE
from tests.support.backends import Served, Up, running_backend, running_up
from tests.support.eventually import eventually_async
from tests.support.repos import Repo
from tests.support.wsclient import Closed, Refused, WsClient

ENDED = {"success", "failed", "error", "cancelled", "timed_out", "skipped"}
#: A step that prints LINES lines, each in two writes, then a last line without a newline.
LINES = 3000
NOISY = f"""\
steps:
  - name: noisy
    commands:
      - >-
        i=0; while [ $i -lt {LINES} ];
        do printf 'line %d ' $i; printf 'part two\\n'; i=$((i+1)); done;
        printf 'last-partial'
"""
EXPECTED = [f"line {i} part two" for i in range(LINES)] + ["last-partial"]
#: A step that prints BULK lines of a kB.
BULK = 1000
BULKY = f"""\
steps:
  - name: bulky
    commands:
      - head -c {BULK * 1000} /dev/zero | tr '\\0' x | fold -w 1000; echo
      - printf 'last-partial'
"""
SLEEPY = """\
steps:
  - name: sleepy
    command: sleep 300
"""


def run(scenario: Callable[[Path], Any], tmp_path: Path) -> None:
    asyncio.run(scenario(tmp_path))


async def repo_with(tmp_path: Path, pipeline: str, name: str = "repo") -> Path:
    """A repository whose narwhal.yml is ``pipeline`` (git runs off the loop ``up`` runs in)."""

    def make() -> Path:
        repo = Repo(tmp_path / name)
        repo.commit({"narwhal.yml": pipeline})
        return repo.path

    return await asyncio.to_thread(make)


@contextlib.asynccontextmanager
async def signed_in(served: Served, token: str) -> AsyncIterator[httpx.AsyncClient]:
    """A browser signed in with ``token``."""
    async with served.client() as client:
        response = await client.post("/session", json={"token": token})
        assert response.status_code == 200, response.text
        yield client


async def wait_ended(up: Up, job_id: int) -> dict[str, Any]:
    async def ended() -> dict[str, Any] | None:
        job = await up.job(job_id)
        return job if job["state"] in ENDED else None

    return await eventually_async(ended, what=f"job {job_id} to end")


async def socket_for(served: Served, client: httpx.AsyncClient, **kw: Any) -> WsClient:
    cookie = f"{COOKIE}={client.cookies[COOKIE]}"
    return await WsClient.connect(served.port, origin=served.url, cookie=cookie, **kw)


def test_sign_in_sessions_and_public_read(tmp_path: Path) -> None:
    async def scenario(tmp_path: Path) -> None:
        async with running_up(tmp_path) as up, running_backend(up) as served:
            read = await up.token("read")
            async with served.client() as browser:
                assert (await browser.get("/api/state")).status_code == 401
                assert (await browser.get("/api/jobs")).status_code == 401
                refused = await browser.post("/session", json={"token": "nw_not_a_token"})
                assert refused.status_code == 401 and "does not accept" in refused.json()["error"]
                assert COOKIE not in browser.cookies
                accepted = await browser.post("/session", json={"token": read})
                assert accepted.status_code == 200
                cookie = accepted.headers["set-cookie"]
                for part in ("HttpOnly", "SameSite=strict", "Path=/"):
                    assert part.lower() in cookie.lower(), cookie
                assert read not in cookie and read not in accepted.text
                state = await browser.get("/api/state")
                assert state.status_code == 200, state.text
                assert set(state.json()) >= {"runners", "jobs", "queue", "stats", "feed"}
                assert (await browser.get("/api/jobs")).json()["jobs"] == []
                assert (await browser.get("/session")).json()["signed_in"] is True
                assert (await browser.delete("/session")).status_code == 200
                assert (await browser.get("/api/state")).status_code == 401
            async with signed_in(served, await up.token("read", "revoked")) as revoked:
                assert (await up.http.delete("/api/tokens/revoked")).status_code == 200
                gone = await revoked.get("/api/jobs")  # the dispatcher refuses it now
                assert gone.status_code == 401 and "sign in again" in gone.json()["error"]
                assert (await revoked.get("/api/state")).status_code == 401  # session ended
            async with running_backend(up, public_read=True, api_token=read) as public:
                async with public.client() as anyone:
                    assert (await anyone.get("/api/state")).status_code == 200
                    assert (await anyone.get("/api/jobs")).status_code == 200
                    cancel = await anyone.post("/api/jobs/1/cancel", json={})
                    assert cancel.status_code == 401 and "sign in" in cancel.json()["error"]

    run(scenario, tmp_path)


def test_cancel_and_resubmit_use_the_browsers_own_token(tmp_path: Path) -> None:
    async def scenario(tmp_path: Path) -> None:
        async with running_up(tmp_path) as up, running_backend(up) as served:
            job_id = await up.submit(await repo_with(tmp_path, SLEEPY))
            read, write = await up.token("read"), await up.token("write")
            async with signed_in(served, read) as reader, signed_in(served, write) as writer:
                refused = await reader.post(f"/api/jobs/{job_id}/cancel", json={})
                assert refused.status_code == 403, refused.text
                assert "may only read" in refused.json()["error"]
                assert (await up.job(job_id))["state"] in ("queued", "assigned", "running")
                done = await writer.post(f"/api/jobs/{job_id}/cancel", json={})
                assert done.status_code == 202, done.text
                assert (await wait_ended(up, job_id))["state"] == "cancelled"
                again = await writer.post(f"/api/jobs/{job_id}/resubmit", json={})
                assert again.status_code == 201 and again.json()["id"] != job_id
                missing = await writer.post("/api/jobs/999999/cancel", json={})
                assert missing.status_code == 404 and "error" in missing.json()
                await writer.post(f"/api/jobs/{again.json()['id']}/cancel", json={})
                await wait_ended(up, again.json()["id"])

    run(scenario, tmp_path)


def test_the_guard_and_bad_requests_get_4xx_never_500(tmp_path: Path) -> None:
    async def scenario(tmp_path: Path) -> None:
        async with running_up(tmp_path) as up, running_backend(up) as served:
            async with signed_in(served, await up.token("read")) as browser:
                host = await browser.get("/api/state", headers={"host": "evil.example"})
                assert host.status_code == 421
                origin = await browser.post(
                    "/session", json={"token": "x"}, headers={"origin": "http://evil.example"}
                )
                assert origin.status_code == 403
                form = await browser.post("/session", content=b"token=x")
                assert form.status_code == 415
                for body in (b"{", b"[]", b'{"token": 5}', b"[" * 100):
                    bad = await browser.post(
                        "/session", content=body, headers={"content-type": "application/json"}
                    )
                    assert bad.status_code == 400, (body, bad.text)
                for params in (
                    {"state": "bogus"},
                    {"limit": "0"},
                    {"limit": "100000"},
                    {"before": "abc"},
                    {"before": "-1"},
                    {"branch": "a b"},
                    {"branch": "x..y"},
                    {"repo": "\x00"},
                    {"colour": "blue"},
                ):
                    answer = await browser.get("/api/jobs", params=params)
                    assert answer.status_code == 400, (params, answer.text)
                    assert "error" in answer.json()
                for path in ("/api/jobs/abc", "/api/jobs/0", "/api/jobs/99999999"):
                    assert (await browser.get(path)).status_code == 404, path
                assert (await browser.get("/api/jobs/99999/log")).status_code == 404
                assert (await browser.get("/api/runners/nobody")).status_code == 404
                assert (await browser.get("/nowhere")).status_code == 404
            cookie = f"{COOKIE}={browser.cookies[COOKIE]}"
            for origin_header in ("http://evil.example", None, up.api):
                try:
                    await WsClient.connect(served.port, origin=origin_header, cookie=cookie)
                except Refused as e:
                    assert e.status == 403
                else:
                    raise AssertionError(f"a websocket from {origin_header} was accepted")
            try:
                await WsClient.connect(served.port, origin=served.url)  # no session
            except Refused as e:
                assert e.status == 403
            else:
                raise AssertionError("a websocket without a session was accepted")

    run(scenario, tmp_path)


def test_history_filters_job_pages_and_the_runner_page(tmp_path: Path) -> None:
    async def scenario(tmp_path: Path) -> None:
        async with running_up(tmp_path) as up, running_backend(up) as served:
            repo = await repo_with(tmp_path, NOISY)
            on_main = await up.submit(repo, ref="refs/heads/main")
            on_dev = await up.submit(repo, ref="refs/heads/dev")  # no such branch: it errors
            await wait_ended(up, on_main)
            await wait_ended(up, on_dev)
            async with signed_in(served, await up.token("read")) as browser:
                main = (await browser.get("/api/jobs", params={"branch": "main"})).json()
                assert [j["id"] for j in main["jobs"]] == [on_main]
                dev = await browser.get("/api/jobs", params={"branch": "dev", "state": "error"})
                assert [j["id"] for j in dev.json()["jobs"]] == [on_dev]
                page = (await browser.get("/api/jobs", params={"limit": "1"})).json()
                assert [j["id"] for j in page["jobs"]] == [on_dev] and page["next"] == on_dev
                older = await browser.get("/api/jobs", params={"before": str(page["next"])})
                assert [j["id"] for j in older.json()["jobs"]] == [on_main]
                job = (await browser.get(f"/api/jobs/{on_main}")).json()
                assert job["state"] == "success" and job["siblings"] == []
                assert [s["name"] for s in job["steps"]] == ["noisy"]
                log = await browser.get(f"/api/jobs/{on_main}/log")
                assert log.headers["content-type"].startswith("text/plain")
                assert log.text.endswith("line 2999 part two\nlast-partial")
                runner = (await browser.get("/api/runners/local")).json()
                assert {j["id"] for j in runner["jobs"]} == {on_main, on_dev}
                for route in ("/", "/jobs", f"/jobs/{on_main}", "/runners/local"):
                    html = await browser.get(route)
                    assert html.status_code == 200 and "text/html" in html.headers["content-type"]
                    assert html.headers["x-frame-options"] == "DENY"

    run(scenario, tmp_path)


def test_a_websocket_gets_the_state_then_updates_as_a_job_runs(tmp_path: Path) -> None:
    async def scenario(tmp_path: Path) -> None:
        async with running_up(tmp_path) as up, running_backend(up) as served:
            await eventually_async(
                lambda: served.backend.subscriber.connected, what="the backend to sync"
            )
            async with signed_in(served, await up.token("read")) as browser:
                ws = await socket_for(served, browser)
                try:
                    first = await ws.receive()
                    assert first["type"] == "state"
                    assert [r["id"] for r in first["state"]["runners"]] == ["local"]
                    assert first["state"]["feed"]["connected"] is True
                    job_id = await up.submit(await repo_with(tmp_path, NOISY))

                    def ended(message: dict[str, Any]) -> bool:
                        return message["type"] == "update" and any(
                            item.get("id") == job_id and item.get("state") == "success"
                            for item in message["items"]
                        )

                    seen = await ws.receive_until(ended)
                    topics = {m["topic"] for m in seen if m["type"] == "update"}
                    assert {"job", "step"} <= topics, topics
                    await ws.send({"type": "dance"})
                    error = await ws.receive_until(lambda m: m["type"] == "error")
                    assert "unknown message type" in error[-1]["error"]
                finally:
                    await ws.close()
                state = (await browser.get("/api/state")).json()
                assert job_id in [j["id"] for j in state["jobs"]]
                runner = (await browser.get("/api/runners/local")).json()
                assert runner["runner"]["id"] == "local" and runner["history"]

    run(scenario, tmp_path)


async def _followed_lines(ws: WsClient, job_id: int) -> list[str]:
    """The lines of a followed job's log, from a reset on, until its last line came."""
    lines: list[str] = []
    while not lines or lines[-1] != EXPECTED[-1]:
        message = await ws.receive(timeout=30)
        if message["type"] != "log":
            continue
        assert message["job_id"] == job_id
        if message["reset"]:
            lines = []
        lines += message["lines"]
    return lines


def test_following_a_log_gives_whole_lines_to_every_follower(tmp_path: Path) -> None:
    async def scenario(tmp_path: Path) -> None:
        async with running_up(tmp_path) as up, running_backend(up) as served:
            async with signed_in(served, await up.token("read")) as browser:
                first, late = await socket_for(served, browser), await socket_for(served, browser)
                try:
                    job_id = await up.submit(await repo_with(tmp_path, NOISY))
                    await first.send({"type": "follow", "job_id": job_id})
                    lines = await _followed_lines(first, job_id)
                    assert [line for line in lines if line.startswith("line ")] == EXPECTED[:-1]
                    assert lines[-1] == "last-partial"
                    await late.send({"type": "follow", "job_id": job_id})
                    assert await _followed_lines(late, job_id) == lines
                    assert len(served.backend.followers) == 1
                    await first.send({"type": "unfollow"})
                    await late.send({"type": "follow", "job_id": 999999})
                    error = await late.receive_until(lambda m: m["type"] == "error")
                    assert "999999" in error[-1]["error"]
                    await eventually_async(
                        lambda: len(served.backend.followers) <= 1, what="followers stopped"
                    )
                finally:
                    await first.close()
                    await late.close()
                await eventually_async(
                    lambda: len(served.backend.followers) == 0, what="no follower left"
                )

    run(scenario, tmp_path)


def test_a_browser_that_does_not_read_is_closed_without_slowing_the_others(
    tmp_path: Path,
) -> None:
    async def scenario(tmp_path: Path) -> None:
        async with (
            running_up(tmp_path) as up,
            running_backend(up, socket_queue=20, send_buffer=16384) as served,
        ):
            async with signed_in(served, await up.token("read")) as browser:
                stuck = await socket_for(served, browser, receive_buffer=4096)
                reading = await socket_for(served, browser)
                try:
                    job_id = await up.submit(await repo_with(tmp_path, BULKY))
                    await reading.send({"type": "follow", "job_id": job_id})
                    await stuck.send({"type": "follow", "job_id": job_id})
                    # Each is answered with an error, queued for a browser that never reads.
                    with contextlib.suppress(ConnectionError):
                        for _ in range(3000):
                            await stuck.send({"type": "dance"})
                    lines = await _followed_lines(reading, job_id)
                    assert [line for line in lines if line.startswith("x")] == ["x" * 1000] * BULK
                    assert lines[-1] == "last-partial"
                    await eventually_async(
                        lambda: served.backend.hub.dropped == 1, what="the stuck socket closed"
                    )
                    assert len(served.backend.hub.peers) == 1
                    with contextlib.suppress(Closed):  # what the kernel held for it, then the end
                        while True:
                            await stuck.receive(timeout=10)
                finally:
                    await stuck.close()
                    await reading.close()

    run(scenario, tmp_path)
