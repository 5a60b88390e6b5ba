"""The narwhal command: exec, client commands, one-line errors and exit codes."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.conftest import Client, Daemon, Repo, wait_for_runners
from tests.keys import MeshKeys


def narwhal(
    *args: str, cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "narwhal", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
        check=False,
    )


def test_exec_runs_pipeline_locally_without_touching_the_tree(tmp_path: Path) -> None:
    (tmp_path / "narwhal.yml").write_text("""\
name: local
matrix:
  N: ["1", "2"]
steps:
  - name: write
    commands:
      - echo "n=${N}" > out.txt
      - cat out.txt
""")
    done = narwhal("exec", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "n=1" in done.stdout and "n=2" in done.stdout
    assert "local [N=1]: success" in done.stderr and "local [N=2]: success" in done.stderr
    assert not (tmp_path / "out.txt").exists()


def test_exec_failure_exit_code_and_bad_file(tmp_path: Path) -> None:
    (tmp_path / "narwhal.yml").write_text("steps:\n  - name: f\n    command: exit 4\n")
    done = narwhal("exec", str(tmp_path))
    assert done.returncode == 1
    assert "failed" in done.stderr and "exit 4" in done.stderr
    (tmp_path / "narwhal.yml").write_text("steps:\n  - name: f\n    comand: true\n")
    done = narwhal("exec", str(tmp_path))
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1, "one line, no traceback"
    assert done.stderr.startswith("narwhal: narwhal.yml:3:")


def test_exec_of_a_pipeline_its_when_skips_is_no_failure(tmp_path: Path) -> None:
    (tmp_path / "narwhal.yml").write_text(
        "name: only-main\nwhen: {branch: [main]}\nsteps:\n  - {name: a, command: echo ran}\n"
    )
    done = narwhal("exec", str(tmp_path))  # not a git checkout: no branch
    assert done.returncode == 0, done.stderr
    assert "ran" not in done.stdout
    assert "only-main: skipped (pipeline 'when' does not match (no branch, event" in done.stderr


def test_errors_are_one_line(tmp_path: Path) -> None:
    for args in (
        ["jobs", "--server", "http://127.0.0.1:9"],
        ["exec", str(tmp_path / "missing")],
        ["runner", "--labels", "novalue", "--listen", "tcp://127.0.0.1:0"],
        ["dispatcher", "--api-token", "s3cret", "--data-dir", str(tmp_path)],
        ["jobs", "--api-token-file", str(tmp_path / "missing")],
        ["up", "--http", "127.0.0.1:notaport", "--data-dir", str(tmp_path)],
        ["dispatcher", "--max-runner-capacity", "0", "--data-dir", str(tmp_path)],
    ):
        done = narwhal(*args)
        assert done.returncode == 2, (args, done.stderr)
        assert done.stderr.startswith("narwhal: ") and done.stderr.count("\n") == 1, done.stderr


def test_client_commands_against_narwhal_up(
    narwhal_up: Callable[..., tuple[Daemon, Client]], make_repo: Callable[..., Repo]
) -> None:
    daemon, api = narwhal_up()
    repo = make_repo({"narwhal.yml": "steps:\n  - name: hi\n    command: echo hi-from-cli\n"})
    done = narwhal(
        "submit", str(repo.path), "--ref", "refs/heads/main", "-f", "--server", daemon.url
    )
    assert done.returncode == 0, done.stderr
    assert "hi-from-cli" in done.stdout
    assert "job 1 success" in done.stderr
    logs = narwhal("logs", "1", "--server", daemon.url)
    assert "hi-from-cli" in logs.stdout
    jobs = narwhal("jobs", "--server", daemon.url)
    assert "success" in jobs.stdout and str(repo.path) in jobs.stdout
    runners = narwhal("runners", "--server", daemon.url)
    assert "local" in runners.stdout and "ready" in runners.stdout
    failing = make_repo({"narwhal.yml": "steps:\n  - name: bad\n    command: 'false'\n"})
    done = narwhal("submit", str(failing.path), "-f", "--server", daemon.url)
    assert done.returncode == 1 and "failed" in done.stderr


def test_a_pipeline_its_when_skips_ends_skipped_everywhere(
    narwhal_up: Callable[..., tuple[Daemon, Client]], make_repo: Callable[..., Repo]
) -> None:
    daemon, api = narwhal_up()
    repo = make_repo(
        {"narwhal.yml": "when: {branch: [release]}\nsteps:\n  - {name: a, command: echo ran}\n"}
    )
    ref = ("--ref", "refs/heads/main")
    done = narwhal("submit", str(repo.path), *ref, "-f", "--server", daemon.url)
    assert "ran" not in done.stdout
    summary = done.stderr.strip().splitlines()[-1]
    assert summary.startswith("job 1 skipped in "), done.stderr
    assert "pipeline 'when' does not match (branch main, event push)" in summary
    job = api.job(1)
    assert job["state"] == "skipped" and [s["status"] for s in job["steps"]] == ["skipped"]
    assert [t["state"] for t in job["transitions"]][-1] == "skipped"
    listed = narwhal("jobs", "--server", daemon.url).stdout.splitlines()
    assert any(line.split()[:2] == ["1", "skipped"] for line in listed), listed
    only = narwhal("jobs", "--state", "skipped", "--server", daemon.url).stdout
    assert str(repo.path) in only


def test_dispatcher_spreads_jobs_over_separate_runner_processes(
    tmp_path: Path, make_repo: Callable[..., Repo]
) -> None:
    keys = MeshKeys(tmp_path)
    runners = [
        Daemon(
            [
                "runner",
                "--discovery",
                "none",
                "--listen",
                "tcp://127.0.0.1:0",
                "--id",
                f"r{i}",
                "--capacity",
                str(i),
                "--work-dir",
                str(tmp_path / f"w{i}"),
                "--heartbeat-interval",
                "0.2",
                *keys.runner(f"r{i}"),
            ]
        )
        for i in (1, 2)
    ]
    dispatcher = Daemon(
        [
            "dispatcher",
            "--discovery",
            "none",
            "--http",
            "127.0.0.1:0",
            "--data-dir",
            str(tmp_path / "d"),
            "--heartbeat-interval",
            "0.2",
            "--runner",
            runners[0].endpoint,
            *keys.dispatcher(),
        ]
    )
    api = Client(dispatcher.url)
    try:
        wait_for_runners(api, 1)
        added = api.http.post("/api/runners", json={"url": runners[1].endpoint})
        assert added.status_code == 201
        listed = wait_for_runners(api, 2)
        assert {(r["id"], r["capacity"]) for r in listed} == {("r1", 1), ("r2", 2)}
        repo = make_repo({"narwhal.yml": "steps:\n  - name: s\n    command: sleep 0.4\n"})
        ids = [api.submit(repo) for _ in range(6)]
        jobs = [api.wait(i) for i in ids]
        assert all(j["state"] == "success" for j in jobs)
        used = {j["runner_id"] for j in jobs}
        assert used == {"r1", "r2"}
    finally:
        api.close()
        assert dispatcher.stop() == 0
        for runner in runners:
            assert runner.stop() == 0
