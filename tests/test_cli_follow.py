"""The CLI follows and cancels a whole submission: a job and every matrix job it spawned.

Against a real ``narwhal up`` and real git repositories.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from narwhal.mesh import protocol as p
from tests.support.cluster import Cluster
from tests.support.daemons import Client, Daemon, narwhal
from tests.support.eventually import eventually
from tests.support.repos import Repo

Up = Callable[..., tuple[Daemon, Client]]
MakeRepo = Callable[..., Repo]

MATRIX = """\
name: m
matrix:
  N: ["1", "2"]
steps:
  - name: check
    commands:
      - echo "line-${{N}}"
      - {check}
"""


def _summaries(stderr: str) -> dict[str, str]:
    """``{"N=1": "success", ...}`` from the summary lines ``job 3 [N=1] success in ...``."""
    found = re.findall(r"^job \d+ \[([^\]]+)\] (\w+)", stderr, re.M)
    return dict(found)


def test_submit_follow_shows_every_combination_and_fails_if_one_did(
    narwhal_up: Up, make_repo: MakeRepo
) -> None:
    daemon, _ = narwhal_up()
    repo = make_repo({"narwhal.yml": MATRIX.format(check="test ${N} = 1")})
    done = narwhal("submit", str(repo.path), "-f", "--server", daemon.url)
    assert done.returncode == 1, done.stderr
    assert "[N=1] line-1" in done.stdout and "[N=2] line-2" in done.stdout, done.stdout
    assert _summaries(done.stderr) == {"N=1": "success", "N=2": "failed"}, done.stderr
    assert "Traceback" not in done.stderr


def test_submit_follow_exits_0_when_all_succeed(narwhal_up: Up, make_repo: MakeRepo) -> None:
    daemon, _ = narwhal_up()
    repo = make_repo({"narwhal.yml": MATRIX.format(check="echo ok")})
    done = narwhal("submit", str(repo.path), "-f", "--server", daemon.url)
    assert done.returncode == 0, done.stderr
    assert "[N=1] line-1" in done.stdout and "[N=2] line-2" in done.stdout
    assert _summaries(done.stderr) == {"N=1": "success", "N=2": "success"}, done.stderr
    # `narwhal jobs` tells the matrix jobs of a submission apart.
    listed = narwhal("jobs", "--server", daemon.url)
    rows = [line for line in listed.stdout.splitlines() if str(repo.path) in line]
    assert sorted(row.rsplit(" ", 1)[-1] for row in rows) == ["[N=1]", "[N=2]"], listed.stdout


def test_logs_follow_of_a_matrix_parent_follows_the_submission(
    narwhal_up: Up, make_repo: MakeRepo
) -> None:
    daemon, api = narwhal_up()
    repo = make_repo({"narwhal.yml": MATRIX.format(check="sleep 1; test ${N} = 1")})
    job_id = api.submit(repo)
    done = narwhal("logs", "-f", str(job_id), "--server", daemon.url)
    assert done.returncode == 1, done.stderr
    assert "[N=1] line-1" in done.stdout and "[N=2] line-2" in done.stdout
    assert _summaries(done.stderr) == {"N=1": "success", "N=2": "failed"}, done.stderr
    # A job without a matrix: its log as it was written, no prefix.
    plain = make_repo({"narwhal.yml": "steps:\n  - name: s\n    command: echo plain-line\n"})
    done = narwhal("logs", "-f", str(api.submit(plain)), "--server", daemon.url)
    assert done.returncode == 0 and "\nplain-line\n" in done.stdout, done.stdout
    assert re.search(r"^job \d+ success in", done.stderr, re.M), done.stderr


def _running(api: Client, count: int) -> list[dict[str, Any]]:
    def running() -> list[dict[str, Any]] | None:
        jobs = api.http.get("/api/jobs").json()["jobs"]
        return jobs if sum(j["state"] == "running" for j in jobs) >= count else None

    jobs = eventually(
        running, what=f"{count} running", detail=lambda: api.http.get("/api/jobs").json()
    )
    return sorted(jobs, key=lambda j: j["id"])


def test_cancel_prints_the_new_state_and_cancels_the_submission(
    narwhal_up: Up, make_repo: MakeRepo
) -> None:
    daemon, api = narwhal_up("--capacity", "2")
    repo = make_repo({"narwhal.yml": MATRIX.format(check="sleep 60")})
    parent = api.submit(repo)
    jobs = _running(api, 2)
    assert [j["id"] for j in jobs] == [parent, parent + 1]
    done = narwhal("cancel", str(parent), "--server", daemon.url)
    assert done.returncode == 0, done.stderr
    assert f"job {parent} [N=1]: cancelling" in done.stderr, done.stderr
    assert f"job {parent + 1} [N=2]: cancelling" in done.stderr, done.stderr
    assert api.wait(parent)["state"] == "cancelled"
    assert api.wait(parent + 1)["state"] == "cancelled"

    # One matrix job: only it, and the output says how to cancel them all.
    second = api.submit(repo)
    _running(api, 2)
    child = second + 1
    done = narwhal("cancel", str(child), "--server", daemon.url)
    assert done.returncode == 0, done.stderr
    assert f"job {child} [N=2]: cancelling" in done.stderr
    assert f"narwhal cancel {second}" in done.stderr and "--all" in done.stderr
    assert api.wait(child)["state"] == "cancelled"
    assert api.job(second)["state"] == "running"
    done = narwhal("cancel", str(child), "--all", "--server", daemon.url)
    assert done.returncode == 0, done.stderr
    assert f"job {second} [N=1]: cancelling" in done.stderr
    assert api.wait(second)["state"] == "cancelled"

    # A queued job is cancelled at once, and says so.
    api.submit(repo)
    _running(api, 2)
    queued = api.submit(repo)
    done = narwhal("cancel", str(queued), "--server", daemon.url)
    assert f"job {queued}: cancelled" in done.stderr, done.stderr


def test_a_job_cancelled_before_its_checkout_spawns_no_matrix_jobs(
    cluster: Cluster, make_repo: MakeRepo
) -> None:
    """The runner reports the matrix after the cancel: its other combinations never run."""
    peer = cluster.raw_runner("solo")
    try:
        api = cluster.start_dispatcher("--liveness", "50")
        cluster.attach(peer)
        peer.ready("solo", capacity=4)
        repo = make_repo({"narwhal.yml": MATRIX.format(check="echo ok")})
        job_id = api.submit(repo)
        job = peer.recv_until(p.Job)
        assert isinstance(job, p.Job) and job.job_id == job_id
        key = {"job_id": job_id, "attempt": job.attempt}
        peer.send(p.Accept(**key, seq=0))
        api.wait(job_id, {"running"})
        done = narwhal("cancel", str(job_id), "--server", str(api.http.base_url))
        assert done.returncode == 0 and f"job {job_id}: cancelling" in done.stderr, done.stderr
        peer.recv_until(p.Cancel)
        variants = ({"N": "1"}, {"N": "2"})
        peer.send(p.CheckedOut(**key, seq=1, sha="a" * 40, pipeline="m", variants=variants))
        peer.send(p.Done(**key, seq=2, status="cancelled", reason="cancelled by user", duration=0))
        assert api.wait(job_id)["state"] == "cancelled"
        listed = api.http.get("/api/jobs").json()["jobs"]
        assert [j["id"] for j in listed] == [job_id], listed
    finally:
        peer.close()
