"""``GET /metrics`` of a real dispatcher, scraped over HTTP while it runs real jobs.

The dispatcher is composed as ``narwhal up`` composes it (``daemons.dispatcher.serve``:
SQLite store, ZeroMQ mesh, the embedded runner with the local executor, the
webhook endpoints, the commit status reporter posting to a forge stand-in),
in the test's process. The scrape must pass ``promtool check metrics``
(Prometheus' own parser and linter) without a warning; a missing promtool
fails the test, never skips it.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import zmq.asyncio

from narwhal.config import (
    DispatcherConfig,
    ForgeApi,
    MeshConfig,
    RunnerConfig,
    StatusConfig,
    WebhookConfig,
)
from narwhal.daemons.dispatcher import serve
from narwhal.dispatcher.api import Access, build_app
from narwhal.dispatcher.datadir import hold
from narwhal.dispatcher.guard import Guard, HostPolicy
from narwhal.dispatcher.tokens import Tokens
from narwhal.httpserver import listen, run_http
from tests.support.dispatchers import running_dispatcher
from tests.support.eventually import eventually_async
from tests.support.forge import FakeForge
from tests.support.repos import Repo
from tests.support.webhooks import SECRET, github_request, push_payload

TOKEN = "nw_metrics_test_token"
MESH = MeshConfig(heartbeat_interval=0.5, liveness=5)
OK = "steps:\n  - name: hello\n    command: echo hello\n"
FAILING = "steps:\n  - name: broken\n    command: exit 3\n"
_SAMPLE = re.compile(r"^(\S+) (\S+)$", re.MULTILINE)


def samples(text: str) -> dict[str, float]:
    return {name: float(value) for name, value in _SAMPLE.findall(text) if name[0] != "#"}


def promtool(text: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    assert tool, "promtool is missing: install the Debian package prometheus (scripts/test does)"
    return subprocess.run(
        [tool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )


@contextlib.asynccontextmanager
async def up(tmp_path: Path, forge: FakeForge) -> AsyncIterator[httpx.AsyncClient]:
    """``narwhal up`` in this process; a client of its API with an admin token."""
    dconf = DispatcherConfig(
        data_dir=tmp_path / "data",
        http_port=0,
        api_token=TOKEN,
        mesh=MESH,
        webhooks=WebhookConfig(github_secret=SECRET, allow_local_repos=True),
        status=StatusConfig(
            forges=(ForgeApi(forge="github", url=forge.url, token="t0ken"),), backoff=0.05
        ),
        allow_local_repos=True,
    )
    rconf = RunnerConfig(
        runner_id="r1",
        listen="tcp://127.0.0.1:0",
        capacity=2,
        work_dir=tmp_path / "work",
        mesh=MESH,
        allow_local_repos=True,
    )
    said: list[str] = []
    stop = asyncio.Event()
    context = zmq.asyncio.Context()
    try:
        with hold(dconf.data_dir) as lock:
            served = asyncio.create_task(
                serve(dconf, rconf, context=context, lock=lock, stop=stop, announce=said.append)
            )
            try:
                await eventually_async(lambda: said or served.done(), what="the API to listen")
                url = re.search(r"API on (\S+)", said[0])
                assert url, said
                headers = {"Authorization": f"Bearer {TOKEN}"}
                async with httpx.AsyncClient(base_url=url[1], headers=headers, timeout=30) as http:
                    yield http
            finally:
                stop.set()
                await served
    finally:
        context.term()


async def submit(http: httpx.AsyncClient, repo: Repo) -> int:
    response = await http.post("/api/jobs", json={"repo": str(repo.path)})
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


async def ended(http: httpx.AsyncClient, job_ids: list[int]) -> dict[int, str]:
    states: dict[int, str] = {}

    async def all_ended() -> bool:
        for job_id in job_ids:
            states[job_id] = (await http.get(f"/api/jobs/{job_id}")).json()["state"]
        return all(s not in ("queued", "assigned", "running") for s in states.values())

    await eventually_async(all_ended, timeout=60, what="the jobs to end", detail=lambda: states)
    return states


async def scrape(http: httpx.AsyncClient) -> httpx.Response:
    response = await http.get("/metrics")
    assert response.status_code == 200, response.text
    return response


def test_a_scrape_counts_jobs_webhooks_and_statuses_and_passes_promtool(
    tmp_path: Path, make_repo: Callable[..., Repo]
) -> None:
    ok, failing, hooked = (make_repo({"narwhal.yml": text}) for text in (OK, FAILING, OK))
    sha = hooked.commit({"README": "pushed\n"})
    forge = FakeForge(fail=1, fail_status=422)  # the first status post is refused

    async def main() -> tuple[httpx.Response, httpx.Response, dict[int, str], Any]:
        async with up(tmp_path, forge) as http:
            jobs = [await submit(http, ok), await submit(http, failing)]
            body, headers = github_request("push", push_payload(str(hooked.path), sha))
            delivered = await http.post("/webhooks/github", content=body, headers=headers)
            assert delivered.json()["status"] == "queued", delivered.text
            listed = await http.get("/api/jobs", params={"repo": str(hooked.path)})
            (job,) = listed.json()["jobs"]
            jobs.append(job["id"])
            forged = await http.post(
                "/webhooks/github", content=body, headers={**headers, "X-Hub-Signature-256": "x"}
            )
            assert forged.status_code == 401
            states = await ended(http, jobs)
            await asyncio.to_thread(
                forge.wait_for, lambda f: ("narwhal/push", "success") in f.statuses(sha)
            )

            async def statuses_counted() -> bool:
                got = samples((await scrape(http)).text)
                posts = [v for k, v in got.items() if k.startswith("narwhal_commit_statuses")]
                return sum(posts) == len(forge.answered)

            await eventually_async(statuses_counted, what="every status post counted")
            anonymous = await http.get("/metrics", headers={"Authorization": ""})
            return await scrape(http), anonymous, states, list(forge.answered)

    try:
        response, anonymous, states, answered = asyncio.run(main())
    finally:
        forge.close()
    assert sorted(states.values()) == ["failed", "success", "success"], states
    assert anonymous.status_code == 401 and anonymous.headers["www-authenticate"] == "Bearer"
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    text = response.text
    got = samples(text)
    assert got['narwhal_jobs_total{state="success"}'] == 2
    assert got['narwhal_jobs_total{state="failed"}'] == 1
    assert got['narwhal_jobs_total{state="error"}'] == 0
    for histogram in ("job_queue_duration", "job_duration", "dispatch_latency"):
        assert got[f"narwhal_{histogram}_seconds_count"] == 3, histogram
        assert got[f'narwhal_{histogram}_seconds_bucket{{le="+Inf"}}'] == 3, histogram
        assert got[f"narwhal_{histogram}_seconds_sum"] > 0, histogram
    assert got["narwhal_jobs_queued"] == 0 and got["narwhal_jobs_running"] == 0
    assert got['narwhal_runners{state="ready"}'] == 1
    assert got['narwhal_runner_slots{runner="r1"}'] == 2
    assert got['narwhal_runner_slots_busy{runner="r1"}'] == 0
    assert got['narwhal_webhooks_total{forge="github",answer="200"}'] == 1
    assert got['narwhal_webhooks_total{forge="github",answer="401"}'] == 1
    assert got['narwhal_commit_statuses_total{forge="github",result="failed"}'] == 1
    assert got['narwhal_commit_statuses_total{forge="github",result="sent"}'] == answered.count(201)
    assert answered.count(201) >= 1 and answered[0] == 422
    assert got["narwhal_bad_frames_total"] == 0 and got["narwhal_up"] == 1
    checked = promtool(text)
    assert (checked.returncode, checked.stdout, checked.stderr) == (0, "", ""), text


def test_public_read_opens_metrics_to_a_scrape_without_a_token(tmp_path: Path) -> None:
    async def main() -> tuple[int, int, str]:
        conf = DispatcherConfig(data_dir=tmp_path, mesh=MESH)
        async with running_dispatcher(conf) as dispatcher:
            tokens = await Tokens.open(dispatcher)
            statuses = []
            for public in (True, False):
                sock = listen("127.0.0.1", 0)
                port = sock.getsockname()[1]
                app = build_app(dispatcher, Access(tokens, public_read=public))
                stop = asyncio.Event()
                with sock:
                    server = asyncio.create_task(
                        run_http(Guard(app, HostPolicy.of("127.0.0.1", port)), sock, stop)
                    )
                    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
                        response = await http.get("/metrics")
                    stop.set()
                    await server
                statuses.append(response.status_code)
                text = response.text
        return statuses[0], statuses[1], text

    public, private, text = asyncio.run(main())
    assert (public, private) == (200, 401)
    assert '"error"' in text  # the refusal's JSON body
