"""End to end with real processes: forge webhook -> agent -> RabbitMQ ->
dispatcher -> runner (real git checkout) -> commit status on the forge."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.broker import AMQP_URL, queue_depth, start_broker, stop_broker
from tests.support.daemons import Client, Daemon, auth_headers, wait_for_runners
from tests.support.forge import FakeForge
from tests.support.repos import Repo
from tests.support.webhooks import SECRET, github_request, pr_payload, push_payload

PIPELINE = """\
name: build
steps:
  - name: show
    command: echo "building $NARWHAL_BRANCH" && cat data.txt
"""
MESH = ["--heartbeat-interval", "0.2"]

Start = Callable[..., Daemon]


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Start]:
    """Start ``narwhal`` daemons; every one is stopped at the end of the test."""
    daemons: list[Daemon] = []

    def run(*args: str, env: dict[str, str] | None = None) -> Daemon:
        daemon = Daemon(list(args), env=env)
        daemons.append(daemon)
        return daemon

    yield run
    codes = [daemon.stop() for daemon in reversed(daemons)]
    # SIGTERM is a clean shutdown: in-flight webhooks answered, connections closed.
    assert codes == [0] * len(daemons), [d.stderr_lines[-5:] for d in daemons]


def agent_args(queue: str) -> list[str]:
    return [
        "agent",
        "--http",
        "127.0.0.1:0",
        "--amqp-queue",
        queue,
        "--amqp-reconnect",
        "0.5",
    ]


#: Secrets (the broker's password too) reach daemons through the environment, never argv.
AMQP_ENV = {"NARWHAL_AMQP": AMQP_URL}
AGENT_ENV = {**AMQP_ENV, "NARWHAL_GITHUB_SECRET": SECRET}


def up_args(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "up",
        "--http",
        "127.0.0.1:0",
        "--data-dir",
        str(tmp_path / "data"),
        "--work-dir",
        str(tmp_path / "work"),
        *MESH,
        *extra,
    ]


def deliver(url: str, event: str, payload: dict[str, Any], **kw: Any) -> httpx.Response:
    """One webhook, delivered again after a 503 (the broker link may still be coming up)."""
    body, headers = github_request(event, payload, **kw)
    for _ in range(100):
        answer = httpx.post(f"{url}/webhooks/github", content=body, headers=headers, timeout=30)
        if answer.status_code != 503:
            return answer
        time.sleep(0.1)
    return answer


def test_push_and_pull_request_end_to_end_with_statuses(
    tmp_path: Path, queue: str, forge: FakeForge, start: Start, make_repo: Callable[..., Repo]
) -> None:
    repo = make_repo({"narwhal.yml": PIPELINE, "data.txt": "first\n"})
    pushed = repo.commit({"data.txt": "pushed-commit\n"})
    agent = start(*agent_args(queue), env=AGENT_ENV)
    up = start(
        *up_args(tmp_path, "--amqp-queue", queue),
        *("--github-api", forge.url),
        *("--public-url", "http://ci.example:8470"),
        env={**AMQP_ENV, "NARWHAL_GITHUB_TOKEN": "gh-token"},
    )
    api = Client(up.url)
    try:
        wait_for_runners(api, 1)
        answer = deliver(agent.url, "push", push_payload(str(repo.path), pushed))
        assert (answer.status_code, answer.json()["status"]) == (200, "queued"), answer.text
        job = api.wait_for_sha(pushed)
        assert job["state"] == "success", job
        assert "pushed-commit" in api.log(job["id"]) and "building main" in api.log(job["id"])
        forge.wait_for(lambda f: ("narwhal/push", "success") in f.statuses(pushed))
        states = forge.statuses(pushed)
        assert states[-1] == ("narwhal/push", "success")
        assert set(states[:-1]) <= {("narwhal/push", "pending")} and len(states) >= 2
        last = forge.requests[-1]
        assert last.path == f"/repos/Codertocat/Hello-World/statuses/{pushed}"
        assert last.body["target_url"] == f"http://ci.example:8470/api/jobs/{job['id']}"
        assert last.headers["authorization"] == "Bearer gh-token"

        git_branch(repo, "changes")
        head = repo.commit({"data.txt": "from-the-pull-request\n"})
        answer = deliver(agent.url, "pull_request", pr_payload(str(repo.path), head, "changes"))
        assert answer.json()["event"] == "pull_request"
        job = api.wait_for_sha(head)
        assert (job["state"], job["event"], job["ref"]) == (
            "success",
            "pull_request",
            "refs/heads/changes",
        )
        assert "from-the-pull-request" in api.log(job["id"])
        forge.wait_for(lambda f: ("narwhal/pull_request", "success") in f.statuses(head))
    finally:
        api.close()
    assert queue_depth(queue) == 0


def git_branch(repo: Repo, name: str) -> None:
    from tests.support.repos import git

    git(repo.path, "checkout", "-q", "-b", name)


@pytest.mark.parametrize("broker", ["direct", "amqp"])
def test_up_takes_webhooks_itself(
    broker: str,
    tmp_path: Path,
    queue: str,
    forge: FakeForge,
    start: Start,
    make_repo: Callable[..., Repo],
) -> None:
    """Without --amqp, webhooks go straight to the dispatcher; with it, through RabbitMQ."""
    repo = make_repo({"narwhal.yml": PIPELINE, "data.txt": "in-process\n"})
    sha = repo.commit({"data.txt": "in-process-2\n"})
    amqp = ["--amqp-queue", queue] if broker == "amqp" else []
    up = start(
        *up_args(tmp_path, *amqp),
        *("--github-api", forge.url),
        env={
            **(AGENT_ENV if broker == "amqp" else {"NARWHAL_GITHUB_SECRET": SECRET}),
            "NARWHAL_GITHUB_TOKEN": "t",
        },
    )
    api = Client(up.url)
    try:
        wait_for_runners(api, 1)
        first = deliver(up.url, "push", push_payload(str(repo.path), sha), delivery="one")
        again = deliver(up.url, "push", push_payload(str(repo.path), sha), delivery="one")
        assert (first.json()["status"], again.json()["status"]) == ("queued", "duplicate")
        assert deliver(up.url, "ping", {"zen": "hi"}).json() == {"status": "pong"}
        job = api.wait_for_sha(sha)
        assert job["state"] == "success"
        forge.wait_for(lambda f: ("narwhal/push", "success") in f.statuses(sha))
        assert len(api.http.get("/api/jobs").json()["jobs"]) == 1
        assert api.http.get("/health").json()["status"] == "ok"  # the API is still there
    finally:
        api.close()


def dispatcher_args(tmp_path: Path, queue: str) -> list[str]:
    return [
        "dispatcher",
        "--http",
        "127.0.0.1:0",
        "--data-dir",
        str(tmp_path / "data"),
        "--amqp-queue",
        queue,
        "--amqp-reconnect",
        "0.5",
    ]


async def _post_all(
    url: str, requests: list[tuple[bytes, dict[str, str]]], *, concurrency: int
) -> list[int]:
    """Deliver every webhook like a forge: again after a 503, until accepted."""
    limit = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:

        async def one(body: bytes, headers: dict[str, str]) -> int:
            async with limit:
                for _ in range(600):
                    try:
                        r = await client.post("/webhooks/github", content=body, headers=headers)
                    except httpx.TransportError:
                        await asyncio.sleep(0.05)
                        continue
                    if r.status_code != 503:
                        return r.status_code
                    await asyncio.sleep(0.05)
                raise AssertionError("webhook never accepted")

        return await asyncio.gather(*(one(body, headers) for body, headers in requests))


def _all_jobs(api: httpx.Client) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 500}
    while True:
        page = api.get("/api/jobs", params=params).json()
        jobs += page["jobs"]
        if page["next"] is None:
            return jobs
        params["before"] = page["next"]


def _wait_for_jobs(url: str, count: int, timeout: float = 60) -> list[dict[str, Any]]:
    with httpx.Client(base_url=url, timeout=30, headers=auth_headers()) as api:
        deadline = time.monotonic() + timeout
        while (jobs := _all_jobs(api)) and len(jobs) < count:
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
        time.sleep(0.5)  # a doubled job would have shown up by now
        return _all_jobs(api)


def test_burst_of_1000_webhooks_makes_exactly_the_expected_jobs(
    tmp_path: Path, queue: str, start: Start
) -> None:
    """600 commits, 200 redeliveries of a delivery id, 200 new deliveries of a
    commit already queued: 1,000 webhooks, 600 jobs (no runner: they stay queued)."""
    agent = start(*agent_args(queue), env=AGENT_ENV)
    dispatcher = start(*dispatcher_args(tmp_path, queue), env=AMQP_ENV)
    shas = [f"{n + 1:040x}" for n in range(600)]
    requests = [github_request("push", push_payload("/srv/burst.git", s), delivery=s) for s in shas]
    requests += requests[:200]  # the same deliveries again
    requests += [
        github_request("push", push_payload("/srv/burst.git", s), delivery=f"again-{s}")
        for s in shas[200:400]
    ]
    assert len(requests) == 1000
    started = time.monotonic()
    codes = asyncio.run(_post_all(agent.url, requests, concurrency=32))
    elapsed = time.monotonic() - started
    assert codes == [200] * 1000
    jobs = _wait_for_jobs(dispatcher.url, 600)
    print(f"\nburst: 1000 webhooks in {elapsed:.2f}s ({1000 / elapsed:.0f}/s), {len(jobs)} jobs")
    assert sorted(j["sha"] for j in jobs) == shas
    assert queue_depth(queue) == 0


def test_broker_restart_mid_stream_loses_and_doubles_nothing(
    tmp_path: Path, queue: str, start: Start
) -> None:
    agent = start(*agent_args(queue), env=AGENT_ENV)
    dispatcher = start(*dispatcher_args(tmp_path, queue), env=AMQP_ENV)
    shas = [f"{n + 1:040x}" for n in range(300)]
    requests = [github_request("push", push_payload("/srv/restart.git", s)) for s in shas]
    restarted = threading.Event()

    def restart_when_flowing() -> None:
        with httpx.Client(base_url=dispatcher.url, timeout=10, headers=auth_headers()) as api:
            while len(_all_jobs(api)) < 60:
                time.sleep(0.02)
        stop_broker()
        try:
            time.sleep(0.5)
        finally:
            start_broker()
            restarted.set()

    chaos = threading.Thread(target=restart_when_flowing)
    chaos.start()
    try:
        codes = asyncio.run(_post_all(agent.url, requests, concurrency=8))
    finally:
        chaos.join(120)
    assert restarted.is_set()
    assert codes == [200] * 300
    jobs = _wait_for_jobs(dispatcher.url, 300)
    lost = set(shas) - {j["sha"] for j in jobs}
    doubled = len(jobs) - len({j["sha"] for j in jobs})
    print(f"\nbroker restart: {len(jobs)} jobs, lost {len(lost)}, doubled {doubled}")
    assert (len(lost), doubled, len(jobs)) == (0, 0, 300)
    assert queue_depth(queue) == 0
