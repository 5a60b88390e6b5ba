"""End to end: ``narwhal up`` as a subprocess, real git repositories, real jobs."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests.support.daemons import Client, Daemon, alive, auth_headers
from tests.support.eventually import eventually
from tests.support.repos import Repo

Up = Callable[..., tuple[Daemon, Client]]
JSON = {"content-type": "application/json"}
MakeRepo = Callable[..., Repo]

PIPELINE = """\
name: build
image: busybox
env: {FOO: bar}
steps:
  - name: hello
    command: echo "hello $FOO from $NARWHAL_BRANCH"
  - name: files
    commands:
      - test -f narwhal.yml
      - cat data.txt
"""


def test_pipeline_succeeds_with_steps_and_log(narwhal_up: Up, make_repo: MakeRepo) -> None:
    _, api = narwhal_up()
    repo = make_repo({"narwhal.yml": PIPELINE, "data.txt": "payload-42\n"})
    sha = repo.commit({"data.txt": "payload-43\n"})
    job_id = api.submit(repo, ref="refs/heads/main")
    job = api.wait(job_id)
    assert job["state"] == "success", job
    assert job["sha"] == sha
    assert job["runner_id"] == "local"
    assert job["pipeline"] == "build"
    assert [(s["name"], s["status"], s["exit_code"]) for s in job["steps"]] == [
        ("hello", "success", 0),
        ("files", "success", 0),
    ]
    assert [t["state"] for t in job["transitions"]] == ["queued", "assigned", "running", "success"]
    log = api.log(job_id)
    assert "hello bar from main" in log
    assert "payload-43" in log and "payload-42" not in log


def test_exact_commit_is_built(narwhal_up: Up, make_repo: MakeRepo) -> None:
    _, api = narwhal_up()
    repo = make_repo({"narwhal.yml": PIPELINE, "data.txt": "old-data\n"})
    old = repo.commit({"data.txt": "first\n"})
    repo.commit({"data.txt": "second\n"})
    job = api.wait(api.submit(repo, ref="refs/heads/main", sha=old))
    assert job["state"] == "success"
    assert job["sha"] == old
    assert "first" in api.log(job["id"]) and "second" not in api.log(job["id"])


def test_failing_step_fails_job_and_skips_rest(narwhal_up: Up, make_repo: MakeRepo) -> None:
    _, api = narwhal_up()
    repo = make_repo(
        {
            "narwhal.yml": """\
steps:
  - name: ok
    command: "true"
  - name: broken
    commands: [echo about to fail, exit 3]
  - name: never
    command: echo should-not-run
"""
        }
    )
    job = api.wait(api.submit(repo))
    assert job["state"] == "failed"
    assert "broken" in job["reason"] and "3" in job["reason"]
    assert [(s["status"], s["exit_code"]) for s in job["steps"]] == [
        ("success", 0),
        ("failed", 3),
        ("skipped", None),
    ]
    assert "should-not-run" not in api.log(job["id"])


def test_bad_pipeline_file_ends_in_error_with_line(narwhal_up: Up, make_repo: MakeRepo) -> None:
    _, api = narwhal_up()
    repo = make_repo(
        {
            "narwhal.yml": """\
name: build
steps:
  - name: a
    command: "true"
  - name: b
    command: "true"
    timeout: soon
"""
        }
    )
    job = api.wait(api.submit(repo))
    assert job["state"] == "error"
    assert job["reason"] == (
        "narwhal.yml:7: steps[1].timeout: expected a duration like 10m, got 'soon'"
    )
    assert "narwhal.yml:7" in api.log(job["id"])


def test_missing_pipeline_file_and_bad_repo_end_in_error(
    narwhal_up: Up, make_repo: MakeRepo, tmp_path: Path
) -> None:
    _, api = narwhal_up()
    repo = make_repo({"README": "no pipeline here\n"})
    job = api.wait(api.submit(repo))
    assert job["state"] == "error" and "narwhal.yml" in job["reason"]
    job = api.wait(api.submit(str(tmp_path / "does-not-exist")))
    assert job["state"] == "error" and "git fetch failed" in job["reason"]


def test_a_missing_path_or_plain_folder_gets_gits_reason(narwhal_up: Up, tmp_path: Path) -> None:
    _, api = narwhal_up()
    plain = tmp_path / "plain-folder"
    plain.mkdir()
    for path in (tmp_path / "does-not-exist", plain):
        job = api.wait(api.submit(str(path)))
        assert job["state"] == "error"
        wrong = f"fatal: '{path}' does not appear to be a git repository"
        assert wrong in job["reason"] and "\n" not in job["reason"], job["reason"]
        assert "and the repository exists." not in job["reason"]
        log = api.log(job["id"])
        assert wrong in log and "and the repository exists." in log, log


def test_a_broken_pipeline_file_records_the_sha_and_resubmit_builds_it(
    narwhal_up: Up, make_repo: MakeRepo
) -> None:
    _, api = narwhal_up()
    repo = make_repo()
    broken = repo.commit({"narwhal.yml": "steps: [\n"})
    first = api.wait(api.submit(repo, ref="refs/heads/main"))
    assert first["state"] == "error" and first["sha"] == broken, first
    assert first["pipeline"] is None
    repo.commit({"narwhal.yml": PIPELINE, "data.txt": "fixed\n"})  # the branch moves on
    response = api.http.post(f"/api/jobs/{first['id']}/resubmit", json={})
    assert response.status_code == 201
    second = api.wait(response.json()["id"])
    assert second["sha"] == broken and second["state"] == "error", second
    assert second["reason"] == first["reason"]


def test_cancel_stops_a_running_step(narwhal_up: Up, make_repo: MakeRepo, tmp_path: Path) -> None:
    _, api = narwhal_up()
    pidfile = tmp_path / "step.pid"
    repo = make_repo(
        {
            "narwhal.yml": f"""\
steps:
  - name: long
    commands:
      - echo $$ > {pidfile}
      - printf cut-off-mid-line; sleep 300
"""
        }
    )
    job_id = api.submit(repo)
    eventually(lambda: pidfile.exists() and pidfile.read_text().strip())
    pid = int(pidfile.read_text())
    response = api.http.post(f"/api/jobs/{job_id}/cancel", json={})
    assert response.status_code == 202
    job = api.wait(job_id)
    assert job["state"] == "cancelled"
    assert job["steps"][0]["status"] == "cancelled"
    # The log says how it ended, on a line of its own.
    closing = re.search(
        r"cut-off-mid-line\n--- cancelled after (\S+)s in step 'long': (.*)\n$", api.log(job_id)
    )
    assert closing is not None, api.log(job_id)
    assert float(closing.group(1)) >= 0 and closing.group(2) == "cancelled by user"
    eventually(lambda: not alive(pid))
    again = api.http.post(f"/api/jobs/{job_id}/cancel", json={})
    assert again.status_code == 409 and "already ended" in again.json()["error"]


def test_step_timeout_ends_timed_out(narwhal_up: Up, make_repo: MakeRepo) -> None:
    _, api = narwhal_up()
    repo = make_repo(
        {
            "narwhal.yml": """\
steps:
  - name: slow
    command: printf half-a-line; sleep 300
    timeout: 1s
"""
        }
    )
    job = api.wait(api.submit(repo))
    assert job["state"] == "timed_out"
    assert job["steps"][0]["status"] == "timed_out"
    assert re.search(
        r"half-a-line\n--- timed out after 1\.\ds in step 'slow': step timed out after 1s\n$",
        api.log(job["id"]),
    ), api.log(job["id"])


def test_a_queued_job_says_why_it_waits(narwhal_up: Up, make_repo: MakeRepo) -> None:
    _, api = narwhal_up("--capacity", "1", "--labels", "os=linux")
    repo = make_repo({"narwhal.yml": "steps:\n  - {name: s, command: sleep 300}\n"})
    unmatched = api.submit(repo, labels={"gpu": "a100", "os": "linux"})
    busy = api.submit(repo)
    eventually(lambda: api.job(busy)["state"] == "running")
    waiting = api.submit(repo, labels={"os": "linux"})

    def why(job_id: int) -> dict[str, Any] | None:
        return api.job(job_id)["pending"]

    eventually(lambda: (why(waiting) or {}).get("reason") == "full", timeout=10)
    assert api.job(waiting)["reason"] == why(waiting)["text"]  # type: ignore[index]
    assert "1 full (1/1 slots)" in api.job(waiting)["reason"]
    eventually(lambda: (why(unmatched) or {}).get("reason") == "label", timeout=10)
    job = api.job(unmatched)
    assert "gpu=a100" in job["reason"] and "os=linux" not in job["pending"]["text"], job
    assert job["state"] == "queued"
    assert [t["state"] for t in job["transitions"]] == ["queued"], "no state change"
    listed = api.http.get("/api/jobs", params={"state": "queued"}).json()["jobs"]
    assert {j["id"]: j["pending"]["reason"] for j in listed}[waiting] == "full"
    api.http.post(f"/api/jobs/{busy}/cancel", json={})
    eventually(lambda: api.job(waiting)["state"] == "running")
    assert api.job(waiting)["reason"].startswith("accepted by")
    for job_id in (waiting, unmatched):
        api.http.post(f"/api/jobs/{job_id}/cancel", json={})


def test_capacity_is_never_exceeded(narwhal_up: Up, make_repo: MakeRepo, tmp_path: Path) -> None:
    _, api = narwhal_up("--capacity", "2")
    marks = tmp_path / "marks"
    marks.mkdir()
    repo = make_repo(
        {
            "narwhal.yml": f"""\
steps:
  - name: mark
    commands:
      - touch {marks}/start-$NARWHAL_JOB_ID-$(date +%s%N)
      - sleep 0.3
      - touch {marks}/end-$NARWHAL_JOB_ID-$(date +%s%N)
"""
        }
    )
    ids = [api.submit(repo) for _ in range(7)]
    for job_id in ids:
        assert api.wait(job_id)["state"] == "success"
    events = sorted(
        (int(name.rsplit("-", 1)[1]), 1 if name.startswith("start") else -1)
        for name in os.listdir(marks)
    )
    assert len(events) == 14
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    assert peak == 2, "two slots should both be used, and never more"


def test_matrix_expands_into_one_job_per_combination(narwhal_up: Up, make_repo: MakeRepo) -> None:
    _, api = narwhal_up()
    repo = make_repo(
        {
            "narwhal.yml": """\
name: test-${PY}
matrix:
  PY: ["3.11", "3.12"]
  DB: [sqlite, postgres]
steps:
  - name: show
    command: echo "py=${PY} db=${DB}"
"""
        }
    )
    parent = api.wait(api.submit(repo))
    assert parent["state"] == "success"
    eventually(lambda: len(_children(api, parent["id"])) == 3)
    jobs = [parent] + [api.wait(j["id"]) for j in _children(api, parent["id"])]
    assert all(j["state"] == "success" for j in jobs)
    combos = {(j["matrix"]["PY"], j["matrix"]["DB"]) for j in jobs}
    assert combos == {
        ("3.11", "sqlite"),
        ("3.11", "postgres"),
        ("3.12", "sqlite"),
        ("3.12", "postgres"),
    }
    for j in jobs:
        assert f"py={j['matrix']['PY']} db={j['matrix']['DB']}" in api.log(j["id"])
        assert j["pipeline"] == f"test-{j['matrix']['PY']}"


def test_follow_streams_log_while_running(narwhal_up: Up, make_repo: MakeRepo) -> None:
    _, api = narwhal_up()
    repo = make_repo(
        {
            "narwhal.yml": """\
steps:
  - name: tick
    commands:
      - for i in 1 2 3; do echo tick-$i; sleep 0.3; done
"""
        }
    )
    job_id = api.submit(repo)
    seen: list[tuple[float, str]] = []
    with api.http.stream("GET", f"/api/jobs/{job_id}/logs", params={"follow": "1"}) as r:
        for line in r.iter_lines():
            seen.append((time.monotonic(), line))
    ticks = [(t, line) for t, line in seen if line.startswith("tick-")]
    assert [line for _, line in ticks] == ["tick-1", "tick-2", "tick-3"]
    assert ticks[2][0] - ticks[0][0] > 0.3, "lines arrived as they were printed"
    assert api.job(job_id)["state"] == "success"


def test_resubmit_builds_the_same_commit(narwhal_up: Up, make_repo: MakeRepo) -> None:
    _, api = narwhal_up()
    repo = make_repo({"narwhal.yml": PIPELINE, "data.txt": "x\n"})
    first = api.wait(api.submit(repo, ref="refs/heads/main"))
    repo.commit({"data.txt": "newer\n"})
    response = api.http.post(f"/api/jobs/{first['id']}/resubmit", json={})
    assert response.status_code == 201
    second = api.wait(response.json()["id"])
    assert second["state"] == "success" and second["sha"] == first["sha"]


def test_each_commit_runs_its_own_pipeline_file(narwhal_up: Up, make_repo: MakeRepo) -> None:
    # The runner keeps parsed pipeline files: a changed file must still count.
    _, api = narwhal_up()
    repo = make_repo({"narwhal.yml": "steps:\n  - name: one\n    command: echo first-file\n"})
    first = api.wait(api.submit(repo, ref="refs/heads/main"))
    repo.commit({"narwhal.yml": "steps:\n  - name: two\n    command: echo second-file\n"})
    second = api.wait(api.submit(repo, ref="refs/heads/main"))
    again = api.wait(api.submit(repo, ref="refs/heads/main", sha=first["sha"]))
    assert [job["state"] for job in (first, second, again)] == ["success"] * 3
    assert [job["steps"][0]["name"] for job in (first, second, again)] == ["one", "two", "one"]
    assert "first-file" in api.log(again["id"]) and "second-file" in api.log(second["id"])


def test_list_jobs_filters_and_paginates(narwhal_up: Up, make_repo: MakeRepo) -> None:
    _, api = narwhal_up()
    good = make_repo({"narwhal.yml": "steps: [{name: a, command: 'true'}]\n"})
    bad = make_repo({"narwhal.yml": "steps: [{name: a, command: 'false'}]\n"})
    ids = [api.submit(good), api.submit(bad), api.submit(good)]
    for job_id in ids:
        api.wait(job_id)
    page = api.http.get("/api/jobs", params={"limit": 2}).json()
    assert [j["id"] for j in page["jobs"]] == [ids[2], ids[1]]
    rest = api.http.get("/api/jobs", params={"limit": 2, "before": page["next"]}).json()
    assert [j["id"] for j in rest["jobs"]] == [ids[0]] and rest["next"] is None
    failed = api.http.get("/api/jobs", params={"state": "failed"}).json()["jobs"]
    assert [j["id"] for j in failed] == [ids[1]]
    by_repo = api.http.get("/api/jobs", params={"repo": str(good.path)}).json()["jobs"]
    assert sorted(j["id"] for j in by_repo) == [ids[0], ids[2]]


def test_bad_requests_get_4xx_json(narwhal_up: Up) -> None:
    _, api = narwhal_up()
    cases: list[tuple[str, str, dict[str, Any], int]] = [
        ("POST", "/api/jobs", {"content": b"{not json", "headers": JSON}, 400),
        ("POST", "/api/jobs", {"json": [1, 2]}, 400),
        ("POST", "/api/jobs", {"json": {}}, 400),
        ("POST", "/api/jobs", {"json": {"repo": 5}}, 400),
        ("POST", "/api/jobs", {"json": {"repo": "relative/path"}}, 400),
        ("POST", "/api/jobs", {"json": {"repo": "/x", "sha": "abc"}}, 400),
        ("POST", "/api/jobs", {"json": {"repo": "/x", "ref": "bad ref\n"}}, 400),
        (
            "POST",
            "/api/jobs",
            {"content": b"x" * 70000, "headers": {"content-type": "application/json"}},
            413,
        ),
        ("POST", "/api/jobs", {"content": b"{}", "headers": {"content-type": "text/xml"}}, 415),
        ("GET", "/api/jobs/999", {}, 404),
        ("GET", "/api/jobs/abc", {}, 404),
        ("GET", "/api/jobs/999/logs", {}, 404),
        ("GET", "/api/jobs", {"params": {"state": "sleeping"}}, 400),
        ("GET", "/api/jobs", {"params": {"limit": "-1"}}, 400),
        ("POST", "/api/jobs/999/cancel", {"json": {}}, 404),
        ("POST", "/api/jobs/999/resubmit", {"json": {}}, 404),
        ("POST", "/api/runners", {"json": {"url": "http://nope"}}, 400),
        ("POST", "/api/runners", {"json": {"url": "tcp://host:99999"}}, 400),
        ("GET", "/no/such/path", {}, 404),
        ("DELETE", "/api/jobs", {}, 405),
    ]
    for method, path, kwargs, status in cases:
        response = api.http.request(method, path, **kwargs)
        assert response.status_code == status, (method, path, kwargs, response.text)
        assert isinstance(response.json()["error"], str), response.text
    assert api.http.get("/health").json()["status"] == "ok"


def test_sigterm_shuts_down_cleanly_and_jobs_survive_restart(
    narwhal_up: Up, make_repo: MakeRepo
) -> None:
    daemon, api = narwhal_up()
    repo = make_repo({"narwhal.yml": "steps: [{name: a, command: 'true'}]\n"})
    done = api.wait(api.submit(repo))
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(20) == 0
    again = Daemon(
        [
            "up",
            "--http",
            "127.0.0.1:0",
            "--data-dir",
            daemon.args[daemon.args.index("--data-dir") + 1],
        ]
    )
    try:
        with httpx.Client(base_url=again.url, headers=auth_headers()) as http:
            assert http.get(f"/api/jobs/{done['id']}").json()["state"] == "success"
    finally:
        assert again.stop() == 0


def _children(api: Client, parent: int) -> list[dict[str, Any]]:
    jobs = api.http.get("/api/jobs").json()["jobs"]
    return [j for j in jobs if j["parent_id"] == parent]


def test_relative_data_and_work_dirs_build(tmp_path: Path, make_repo: MakeRepo) -> None:
    # The runner's git runs in folders under the work dir: a relative one
    # used to end every job with "git is not installed on this runner".
    daemon = Daemon(
        ["up", "--http", "127.0.0.1:0", "--data-dir", "data", "--work-dir", "work"], cwd=tmp_path
    )
    api = Client(daemon.url)
    try:
        repo = make_repo({"narwhal.yml": "steps:\n  - name: s\n    command: echo relative-ok\n"})
        job = api.wait(api.submit(repo))
        assert job["state"] == "success", job
        assert "relative-ok" in api.log(job["id"])
        assert (tmp_path / "data" / "narwhal.db").is_file() and (tmp_path / "work").is_dir()
    finally:
        api.close()
        daemon.stop()
