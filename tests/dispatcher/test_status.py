"""Commit statuses, posted to a small real HTTP server that plays the forge."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from narwhal.config import DispatcherConfig, ForgeApi, StatusConfig
from narwhal.dispatcher.amqp import Intake
from narwhal.dispatcher.feed import on_jobs
from narwhal.dispatcher.records import JobRecord
from narwhal.dispatcher.status import StatusReporter, StatusTarget, build_request
from narwhal.events import CommitEvent
from tests.support.dispatchers import running_dispatcher
from tests.support.forge import FakeForge

SHA = "6113728f27ae82c7b1a177c8d03f9e96e0adf246"
REPO = "https://github.com/octo/hello.git"
PUBLIC = "http://ci.example:8470"


@pytest.fixture
def forge() -> Iterator[FakeForge]:
    server = FakeForge()
    yield server
    server.close()


def commit_event(n: int = 1, sha: str = SHA, forge: str = "github") -> CommitEvent:
    return CommitEvent(
        id=f"{forge}:d-{n}",
        forge=forge,
        delivery=f"d-{n}",
        repo=REPO,
        full_name="octo/hello",
        ref="refs/heads/main",
        sha=sha,
        event="push",
    )


def job(job_id: int, state: str, **fields: Any) -> JobRecord:
    now = time.time()
    values: dict[str, Any] = {
        "id": job_id,
        "repo": REPO,
        "ref": "refs/heads/main",
        "sha": SHA,
        "event": "push",
        "labels": {},
        "matrix": None,
        "parent_id": None,
        "pipeline": None,
        "state": state,
        "reason": state,
        "attempt": 1,
        "runner_id": None,
        "cancel_requested": False,
        "created_at": now,
        "updated_at": now,
        "started_at": None,
        "finished_at": None,
    }
    return JobRecord(**{**values, **fields})


def config(url: str, forge: str = "github", **kw: Any) -> StatusConfig:
    return StatusConfig(
        forges=(ForgeApi(forge=forge, url=url, token="t0ken"),),
        backoff=0.05,
        timeout=5,
        **kw,
    )


async def wait_for(forge: FakeForge, count: int, timeout: float = 20) -> None:
    await asyncio.to_thread(forge.wait_for, lambda f: len(f.requests) >= count, timeout)


def test_a_job_lifecycle_posts_pending_then_success(tmp_path: Path, forge: FakeForge) -> None:
    async def main() -> None:
        async with StatusReporter(config(forge.url), data_dir=tmp_path, public_url=PUBLIC) as r:
            await r.remember(commit_event())
            r.on_job(job(7, "queued"))
            await wait_for(forge, 1)
            r.on_job(job(7, "assigned"))  # not reported: nothing a person needs
            r.on_job(job(7, "running", runner_id="build-1"))
            await wait_for(forge, 2)
            started = time.time() - 3.2
            r.on_job(
                job(7, "success", pipeline="build", started_at=started, finished_at=started + 3.2)
            )
            await wait_for(forge, 3)

    asyncio.run(main())
    first = forge.requests[0]
    assert first.method == "POST"
    assert first.path == f"/repos/octo/hello/statuses/{SHA}"
    assert first.headers["authorization"] == "Bearer t0ken"
    assert first.headers["accept"] == "application/vnd.github+json"
    assert [r.body for r in forge.requests] == [
        {
            "state": "pending",
            "target_url": f"{PUBLIC}/api/jobs/7",
            "description": "queued",
            "context": "narwhal/push",
        },
        {
            "state": "pending",
            "target_url": f"{PUBLIC}/api/jobs/7",
            "description": "build running on build-1",
            "context": "narwhal/push",
        },
        {
            "state": "success",
            "target_url": f"{PUBLIC}/api/jobs/7",
            "description": "build passed in 3.2s",
            "context": "narwhal/push",
        },
    ]


def test_final_states_map_to_forge_states(tmp_path: Path, forge: FakeForge) -> None:
    ends = ["failed", "timed_out", "error", "cancelled"]

    async def main() -> None:
        async with StatusReporter(config(forge.url), data_dir=tmp_path, public_url=PUBLIC) as r:
            for n, state in enumerate(ends):
                sha = f"{n:040x}"
                await r.remember(commit_event(n, sha=sha))
                r.on_job(job(n + 1, state, sha=sha, reason=f"step test {state}"))
            await wait_for(forge, len(ends))

    asyncio.run(main())
    got = {r.path.rsplit("/", 1)[1]: r.body for r in forge.requests}
    states = [got[f"{n:040x}"]["state"] for n in range(len(ends))]
    assert states == ["failure", "failure", "error", "error"]
    assert got[f"{0:040x}"]["description"] == "build failed: step test failed"


def test_a_skipped_job_is_success_saying_skipped_or_gitlabs_skipped(
    tmp_path: Path, forge: FakeForge
) -> None:
    reason = "pipeline 'when' does not match (branch main, event push)"

    async def main() -> None:
        for n, name in enumerate(("github", "gitlab")):
            conf = config(forge.url, forge=name)
            (tmp_path / name).mkdir()
            async with StatusReporter(conf, data_dir=tmp_path / name, public_url=PUBLIC) as r:
                await r.remember(commit_event(n, forge=name))
                r.on_job(job(n + 1, "skipped", pipeline="build", reason=reason))
                await wait_for(forge, n + 1)

    asyncio.run(main())
    github, gitlab = (r.body for r in forge.requests)
    assert github["state"] == "success"
    assert github["description"] == f"build skipped: {reason}"
    assert gitlab["state"] == "skipped" and gitlab["description"] == f"build skipped: {reason}"


def test_superseded_states_are_not_sent_after_the_final_one(
    tmp_path: Path, forge: FakeForge
) -> None:
    async def main() -> None:
        async with StatusReporter(config(forge.url), data_dir=tmp_path, public_url=PUBLIC) as r:
            await r.remember(commit_event())
            r.on_job(job(3, "queued"))
            r.on_job(job(3, "running", runner_id="x"))
            r.on_job(job(3, "success"))
            await wait_for(forge, 1)
            await asyncio.sleep(0.2)

    asyncio.run(main())
    states = [r.body["state"] for r in forge.requests]
    assert states[-1] == "success" and 1 <= len(states) <= 3


def test_server_errors_are_retried_with_backoff(tmp_path: Path) -> None:
    forge = FakeForge(fail=2, fail_status=502)
    try:

        async def main() -> StatusReporter:
            async with StatusReporter(config(forge.url), data_dir=tmp_path, public_url=PUBLIC) as r:
                await r.remember(commit_event())
                r.on_job(job(1, "queued"))
                await wait_for(forge, 1)
            return r

        reporter = asyncio.run(main())
    finally:
        forge.close()
    assert forge.answered == [502, 502, 201]
    assert (reporter.sent, reporter.failed) == (1, 0)


def test_client_errors_are_given_up_at_once(tmp_path: Path) -> None:
    forge = FakeForge(fail=1, fail_status=422)
    try:

        async def main() -> StatusReporter:
            async with StatusReporter(config(forge.url), data_dir=tmp_path, public_url=PUBLIC) as r:
                await r.remember(commit_event())
                r.on_job(job(1, "queued"))
                r.on_job(job(2, "queued"))
                await wait_for(forge, 1)
            return r

        reporter = asyncio.run(main())
    finally:
        forge.close()
    assert sorted(forge.answered) == [201, 422]
    assert (reporter.sent, reporter.failed) == (1, 1)


def test_a_hanging_forge_never_blocks_dispatching(tmp_path: Path) -> None:
    """The forge takes connections and never answers: jobs are still created at once."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(100)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"

        async def main() -> tuple[int, int, int, int]:
            conf = config(url, attempts=3)
            dconf = DispatcherConfig(data_dir=tmp_path / "data", status=conf)
            async with running_dispatcher(dconf) as dispatcher:
                async with StatusReporter(conf, data_dir=dconf.data_dir, public_url=PUBLIC) as r:
                    dispatcher.feed.subscribe(on_jobs(r.on_job))
                    intake = Intake(dispatcher, r)
                    for n in range(50):
                        await intake.accept(commit_event(n, sha=f"{n:040x}"))
                    # Every job is in; not one status has been answered yet.
                    return intake.created, r.backlog(), r.sent, r.failed

        created, backlog, sent, failed = asyncio.run(main())
    assert created == 50
    assert (sent, failed) == (0, 0)
    assert backlog >= 50 - 4  # the four senders each hold one in flight


def test_targets_survive_a_dispatcher_restart(tmp_path: Path, forge: FakeForge) -> None:
    async def main() -> None:
        async with StatusReporter(config(forge.url), data_dir=tmp_path, public_url=PUBLIC) as r:
            await r.remember(commit_event())
        # A new process: only statuses.db knows where this commit reports.
        conf = dataclasses.replace(config(forge.url), workers=1)
        async with StatusReporter(conf, data_dir=tmp_path, public_url=PUBLIC) as r:
            r.on_job(job(1, "success", sha="f" * 40))  # no webhook announced it: nothing
            r.on_job(job(2, "success"))
            await wait_for(forge, 1)

    asyncio.run(main())
    assert [(r.path, r.body["state"]) for r in forge.requests] == [
        (f"/repos/octo/hello/statuses/{SHA}", "success")
    ]


def test_gitea_and_gitlab_request_shapes() -> None:
    target = StatusTarget(forge="gitea", full_name="octo/hello")
    gitea = build_request(
        ForgeApi(forge="gitea", url="https://gitea.example/api/v1/", token="g"),
        target,
        job(5, "running", runner_id="r1"),
        PUBLIC,
    )
    assert gitea.url == f"https://gitea.example/api/v1/repos/octo/hello/statuses/{SHA}"
    assert gitea.headers["Authorization"] == "token g"
    assert gitea.body["state"] == "pending" and gitea.body["context"] == "narwhal/push"
    gitlab = build_request(
        ForgeApi(forge="gitlab", url="https://gitlab.example/api/v4", token="l"),
        StatusTarget(forge="gitlab", full_name="group/sub/project"),
        job(6, "cancelled", parent_id=5, matrix={"py": "3.12", "os": "linux"}),
        PUBLIC,
    )
    assert gitlab.url == (
        f"https://gitlab.example/api/v4/projects/group%2Fsub%2Fproject/statuses/{SHA}"
    )
    assert gitlab.headers["PRIVATE-TOKEN"] == "l"
    assert gitlab.body["state"] == "canceled"
    assert gitlab.body["name"] == "narwhal/push/os=linux,py=3.12"
    long = build_request(
        ForgeApi(forge="github", url="https://api.github.com", token="x"),
        StatusTarget(forge="github", full_name="o/r"),
        job(7, "error", reason="x" * 500),
        PUBLIC,
    )
    assert len(long.body["description"]) == 140
