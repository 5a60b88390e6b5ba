"""The narwhal command: exec, client commands, one-line errors and exit codes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from tests.support.daemons import (
    Client,
    Daemon,
    dispatcher_args,
    narwhal,
    runner_args,
    wait_for_runners,
)
from tests.support.keys import MeshKeys
from tests.support.repos import Repo, git


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


def test_matrix_values_are_environment_variables_of_every_step(tmp_path: Path) -> None:
    # A user's first matrix: PYTHONHASHSEED as a variable, no ${...} anywhere.
    (tmp_path / "narwhal.yml").write_text("""\
matrix:
  SEED: ["0", "1"]
  RENAMED: ["a"]
env: {RENAMED: from-env}
steps:
  - name: show
    command: echo "seed=$SEED renamed=$RENAMED"
""")
    done = narwhal("exec", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "seed=0 renamed=from-env" in done.stdout and "seed=1 renamed=from-env" in done.stdout


def test_exec_failure_exit_code_and_bad_file(tmp_path: Path) -> None:
    (tmp_path / "narwhal.yml").write_text("steps:\n  - name: f\n    command: exit 4\n")
    done = narwhal("exec", str(tmp_path))
    assert done.returncode == 1
    assert "failed" in done.stderr and "exit 4" in done.stderr
    (tmp_path / "narwhal.yml").write_text("steps:\n  - name: f\n    comand: true\n")
    done = narwhal("exec", str(tmp_path))
    assert done.returncode == 1, "a broken narwhal.yml: the build did not succeed, as in a job"
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
            runner_args(
                tmp_path / f"w{i}", "--id", f"r{i}", "--capacity", str(i), *keys.runner(f"r{i}")
            )
        )
        for i in (1, 2)
    ]
    dispatcher = Daemon(
        dispatcher_args(tmp_path / "d", *keys.dispatcher(), runners=[runners[0].endpoint])
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


def test_broken_pipeline_file_exits_1_from_submit_and_exec_alike(
    narwhal_up: Callable[..., tuple[Daemon, Client]], make_repo: Callable[..., Repo]
) -> None:
    daemon, _ = narwhal_up()
    repo = make_repo({"narwhal.yml": "steps:\n  - name: f\n    comand: true\n"})
    submitted = narwhal("submit", str(repo.path), "-f", "--server", daemon.url)
    executed = narwhal("exec", str(repo.path))
    assert submitted.returncode == executed.returncode == 1, (submitted, executed)
    assert "narwhal.yml:3:" in submitted.stderr and "narwhal.yml:3:" in executed.stderr


def test_submit_dot_builds_the_checked_out_branch_and_commit(
    narwhal_up: Callable[..., tuple[Daemon, Client]], tmp_path: Path
) -> None:
    daemon, api = narwhal_up()
    path = tmp_path / "fresh"
    path.mkdir()
    git(path, "init", "-q", "-b", "master")  # what a fresh git init gives on many machines
    (path / "narwhal.yml").write_text(
        'steps:\n  - name: s\n    command: echo "branch=$NARWHAL_BRANCH"; cat v.txt\n'
    )
    (path / "v.txt").write_text("first\n")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "one")
    first = git(path, "rev-parse", "HEAD")
    (path / "v.txt").write_text("second\n")
    git(path, "commit", "-q", "-am", "two")
    done = narwhal("submit", ".", "-f", "--server", daemon.url, cwd=path)
    assert done.returncode == 0, done.stderr
    assert "branch=master" in done.stdout and "second" in done.stdout, done.stdout
    job = api.job(1)
    assert (job["ref"], job["sha"]) == ("refs/heads/master", git(path, "rev-parse", "HEAD"))
    # Detached HEAD: that commit.
    git(path, "checkout", "-q", "--detach", first)
    done = narwhal("submit", ".", "-f", "--server", daemon.url, cwd=path)
    assert done.returncode == 0, done.stderr
    assert "first" in done.stdout
    assert (api.job(2)["ref"], api.job(2)["sha"]) == ("HEAD", first)
    # --ref given: its tip, as before.
    done = narwhal("submit", ".", "--ref", "refs/heads/master", "--server", daemon.url, cwd=path)
    assert done.returncode == 0, done.stderr
    assert api.wait(3)["sha"] == git(path, "rev-parse", "master")


def test_jobs_repo_dot_finds_what_submit_dot_queued(
    narwhal_up: Callable[..., tuple[Daemon, Client]], make_repo: Callable[..., Repo]
) -> None:
    daemon, api = narwhal_up()
    repo = make_repo({"narwhal.yml": "steps:\n  - name: s\n    command: echo ok\n", "src/a": ""})
    other = make_repo({"narwhal.yml": "steps:\n  - name: s\n    command: echo ok\n"})
    # From a subdirectory: '.' is the repository, for submit and jobs alike.
    done = narwhal("submit", ".", "-f", "--server", daemon.url, cwd=repo.path / "src")
    assert done.returncode == 0, done.stderr
    api.wait(api.submit(other))
    for cwd in (repo.path, repo.path / "src"):
        listed = narwhal("jobs", "--repo", ".", "--server", daemon.url, cwd=cwd)
        assert listed.returncode == 0, listed.stderr
        rows = listed.stdout.splitlines()[1:]
        assert len(rows) == 1 and str(repo.path) in rows[0], listed.stdout


def test_missing_relative_path_is_refused_here(tmp_path: Path) -> None:
    for command in (["submit", "no/such/dir"], ["jobs", "--repo", "nothere"]):
        # No dispatcher listens there: the refusal comes before any request.
        done = narwhal(*command, "--server", "http://127.0.0.1:9", cwd=tmp_path)
        assert done.returncode == 2, done.stderr
        assert done.stderr.count("\n") == 1 and "no such directory" in done.stderr, done.stderr
        # No answer from the API (": 400 ..."), and no attempt to reach it.
        assert ": 400 " not in done.stderr and "cannot reach" not in done.stderr


def test_submit_labels(
    narwhal_up: Callable[..., tuple[Daemon, Client]], make_repo: Callable[..., Repo]
) -> None:
    daemon, api = narwhal_up("--labels", "os=linux")
    repo = make_repo({"narwhal.yml": "steps:\n  - name: s\n    command: echo ok\n"})
    done = narwhal(
        "submit", str(repo.path), "--labels", "os=plan9,arch=vax", "--server", daemon.url
    )
    assert done.returncode == 0, done.stderr
    job_id = int(done.stdout)
    assert api.job(job_id)["labels"] == {"os": "plan9", "arch": "vax"}
    done = narwhal("submit", str(repo.path), "--labels", "os=linux", "-f", "--server", daemon.url)
    assert done.returncode == 0, done.stderr
    assert api.job(job_id)["state"] == "queued", "no runner offers os=plan9"
    bad = narwhal("submit", str(repo.path), "--labels", "novalue", "--server", daemon.url)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1, bad.stderr


def _piped(command: str, cwd: Path) -> tuple[int, str, float]:
    """Run ``command | head -1`` in a real shell: narwhal's exit status, its stderr, seconds."""
    script = f"{command} 2>err.txt | head -1 >/dev/null; echo ${{PIPESTATUS[0]}}"
    started = time.monotonic()
    shell = subprocess.Popen(
        ["bash", "-c", script], cwd=cwd, stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, _ = shell.communicate(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):  # a narwhal left blocked, and its steps
            os.killpg(shell.pid, signal.SIGKILL)
    took = time.monotonic() - started
    return int(out.strip()), (cwd / "err.txt").read_text(), took


def test_closed_stdout_ends_quietly(
    narwhal_up: Callable[..., tuple[Daemon, Client]], make_repo: Callable[..., Repo], tmp_path: Path
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "narwhal.yml").write_text(
        "steps:\n  - name: a\n    commands:\n      - seq 1 200000\n      - sleep 30\n"
    )
    me = f"{sys.executable} -m narwhal"
    status, err, took = _piped(f"{me} exec {project} --cancel-grace 1", tmp_path)
    assert status == 141, err
    assert "Traceback" not in err and "Broken pipe" not in err, err
    assert took < 20, "the build is stopped, not left blocked on the pipe or run to its end"
    assert "cancelled" in err  # the summary says so
    daemon, api = narwhal_up()
    repo = make_repo({"narwhal.yml": "steps:\n  - name: a\n    command: seq 1 200000\n"})
    job_id = api.wait(api.submit(repo))["id"]
    for command in ("logs", "logs -f"):
        status, err, _ = _piped(f"{me} {command} {job_id} --server {daemon.url}", tmp_path)
        assert status == 141 and err == "", (command, err)


def test_gc_deletes_ended_logs_past_the_retention_size(
    narwhal_up: Callable[..., tuple[Daemon, Client]], make_repo: Callable[..., Repo]
) -> None:
    """``narwhal up --log-keep-size 1``: every ended job's log is over; the job stays."""
    daemon, api = narwhal_up("--log-keep-size", "1")
    repo = make_repo({"narwhal.yml": "steps:\n  - name: hi\n    command: seq 1 5000\n"})
    done = narwhal("submit", str(repo.path), "-f", "--server", daemon.url)
    assert done.returncode == 0, done.stderr
    dry = narwhal("gc", "--dry-run", "--server", daemon.url)
    assert dry.returncode == 0 and dry.stdout.startswith("1 jobs' logs would be deleted"), dry
    assert "4999" in narwhal("logs", "1", "--server", daemon.url).stdout
    gc = narwhal("gc", "--server", daemon.url)
    assert gc.returncode == 0 and gc.stdout.startswith("1 jobs' logs deleted,"), gc
    deleted = narwhal("logs", "1", "--server", daemon.url).stdout
    assert deleted.startswith("narwhal: this log was deleted by the log retention policy on ")
    assert "success" in narwhal("jobs", "--server", daemon.url).stdout
    again = narwhal("gc", "--server", daemon.url)
    assert again.stdout.startswith("0 jobs' logs deleted"), again
