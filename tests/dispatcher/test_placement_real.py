"""Placement with real processes: three runners, real git repositories, real mirror caches.

Repeated jobs of one repository go to the runner that has it warm (and
say so in their placement), the checkout time of each job is recorded,
a burst of that repository still spreads over the others, other
repositories keep running, a job no runner can take says why, and a
runner whose checkouts keep failing is quarantined until it mends.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.support.cluster import Cluster
from tests.support.eventually import eventually
from tests.support.repos import Repo

MakeRepo = Callable[..., Repo]


def _pipeline(script: str) -> dict[str, str]:
    lines = "".join(f"      - {line}\n" for line in script.strip().splitlines())
    return {"narwhal.yml": f"steps:\n  - name: work\n    commands:\n{lines}"}


def _warm_on(cluster: Cluster, runner: str, repo: Repo) -> dict[str, Any]:
    """The runner's report once its mirror cache lists ``repo`` (heartbeats carry it)."""

    def warm() -> dict[str, Any] | None:
        for found in cluster.client().runners():
            report = found.get("report") or {}
            mirrors = [m["repo"] for m in report.get("mirrors", ())]
            if found["id"] == runner and str(repo.path) in mirrors:
                return dict(report)
        return None

    return eventually(warm, timeout=15, what=f"{repo.path} warm on {runner}")


def test_repeated_jobs_go_to_the_warm_runner_and_the_others_stay_usable(
    cluster: Cluster, make_repo: MakeRepo
) -> None:
    for name in ("a", "b", "c"):
        cluster.start_runner(name, 2)
    api = cluster.start_dispatcher()
    cluster.wait_ready(3)
    hot = make_repo(_pipeline("echo hot"))
    other = make_repo(_pipeline("echo other"))

    first = api.wait(api.submit(hot))
    assert first["state"] == "success", first
    home = first["runner_id"]
    assert first["cold"] is True and first["checkout"] > 0, first
    report = _warm_on(cluster, home, hot)
    assert report["cpus"] >= 1 and report["disk_free"] > 0 and report["os"] == "linux"

    for n in range(3):  # one at a time, a new commit each: always the warm runner
        hot.commit({"change.txt": f"change {n}\n"})
        job = api.wait(api.submit(hot))
        assert job["state"] == "success", job
        assert job["runner_id"] == home, (home, job)
        assert job["cold"] is False, job
        assert "warm" in (job["placement"] or ""), job["placement"]

    # A burst of the warm repository longer than its runner's two slots
    # spills onto the others; another repository runs beside it.
    hot.commit({"burst.txt": "burst\n"})
    slow = make_repo(_pipeline("sleep 1\necho slow"))
    burst = [api.submit(slow) for _ in range(5)]
    burst_jobs = [api.wait(job_id, timeout=60) for job_id in burst]
    assert all(j["state"] == "success" for j in burst_jobs), burst_jobs
    holders = {j["runner_id"] for j in burst_jobs}
    assert len(holders) >= 2, holders
    beside = api.wait(api.submit(other))
    assert beside["state"] == "success", beside


def test_a_job_no_runner_can_take_says_why_and_where_it_stands(
    cluster: Cluster, make_repo: MakeRepo
) -> None:
    cluster.start_runner("plain", 1)
    api = cluster.start_dispatcher()
    cluster.wait_ready(1)
    repo = make_repo(_pipeline("echo hi"))
    gpu = api.submit(repo, labels={"gpu": "yes"})
    windows = api.submit(repo, labels={"os": "windows"})

    def pending(job_id: int) -> dict[str, Any] | None:
        job = api.job(job_id)
        return job if job.get("pending") and job["reason"].startswith(("waiting", "no ")) else None

    job = eventually(lambda: pending(gpu), timeout=10, what="job 1 to say why it waits")
    assert job["state"] == "queued"
    assert job["pending"]["reason"] == "label", job["pending"]
    assert "gpu=yes" in job["pending"]["text"] and job["pending"]["position"] >= 1
    job = eventually(lambda: pending(windows), timeout=10, what="job 2 to say why it waits")
    assert job["pending"]["reason"] == "platform", job["pending"]
    assert "os=windows" in job["pending"]["text"], job["pending"]
    # The runner is free: a job it can take still runs past them.
    assert api.wait(api.submit(repo))["state"] == "success"


def _broken_git(folder: Path, healed: Path) -> dict[str, str]:
    """A PATH whose git fails as a full disk would, until ``healed`` exists."""
    real = shutil.which("git")
    assert real is not None
    folder.mkdir()
    script = folder / "git"
    script.write_text(
        "#!/bin/sh\n"
        f'[ -e "{healed}" ] && exec "{real}" "$@"\n'
        'echo "fatal: unable to write new index file: No space left on device" >&2\n'
        "exit 128\n"
    )
    script.chmod(0o755)
    return {"PATH": f"{folder}:{os.environ['PATH']}"}


def test_a_black_hole_runner_is_quarantined_probed_and_given_work_again(
    cluster: Cluster, make_repo: MakeRepo, tmp_path: Path
) -> None:
    healed = tmp_path / "healed"
    cluster.start_runner("good", 1)
    cluster.start_runner("hole", 1, env=_broken_git(tmp_path / "bin", healed))
    api = cluster.start_dispatcher("--placement", "spread", "--quarantine", "2")
    cluster.wait_ready(2)
    repos = [make_repo(_pipeline(f"echo {n}")) for n in range(2)]

    def quarantine() -> dict[str, Any] | None:
        hole = next(r for r in api.runners() if r["id"] == "hole")
        return hole["quarantine"]  # type: ignore[no-any-return]

    # Pairs of jobs of both repositories: spread gives each runner one, until
    # the hole's checkouts have failed often enough, from both repositories.
    ended: list[dict[str, Any]] = []
    for _ in range(10):
        pair = [api.submit(repo) for repo in repos]
        ended += [api.wait(job_id) for job_id in pair]
        if quarantine() is not None:
            break
    shut = quarantine()
    assert shut is not None, ended
    assert "checkout" in shut["reason"], shut
    failed = [j for j in ended if j["state"] == "error"]
    assert failed and all(j["runner_id"] == "hole" for j in failed), ended
    assert all(j["state"] == "success" for j in ended if j["runner_id"] == "good"), ended
    # While it is quarantined the hole takes nothing: work waits for the good runner.
    if not shut["probing"]:
        kept = [api.submit(repo) for repo in repos]
        assert all(api.wait(job_id)["runner_id"] == "good" for job_id in kept)
    # Mended, the hole's probe job succeeds and it is cleared.
    healed.touch()

    def cleared() -> bool:
        pair = [api.submit(repo) for repo in repos]
        done = [api.wait(job_id) for job_id in pair]
        assert all(j["state"] == "success" for j in done), done
        return quarantine() is None and any(j["runner_id"] == "hole" for j in done)

    eventually(cleared, timeout=40, what="the mended runner to be cleared and take work")
