"""A daemon's life: one process per data dir, and shutdowns that end (real processes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.support.cluster import Cluster
from tests.support.daemons import Client, Daemon, alive, auth_headers
from tests.support.eventually import eventually
from tests.support.repos import Repo

Up = Callable[..., tuple[Daemon, Client]]
MakeRepo = Callable[..., Repo]


def _flag(daemon: Daemon, name: str) -> str:
    return daemon.args[daemon.args.index(name) + 1]


def _narwhal(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "narwhal", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={"NARWHAL_DISCOVERY": "none", "NARWHAL_EXECUTOR": "local", **os.environ},
        check=False,
    )


def _files(root: Path) -> dict[str, bytes]:
    return {str(f.relative_to(root)): f.read_bytes() for f in root.rglob("*") if f.is_file()}


def _pipeline(*commands: str) -> dict[str, str]:
    lines = "".join(f"      - {c}\n" for c in commands)
    return {"narwhal.yml": f"steps:\n  - name: work\n    commands:\n{lines}"}


class Follower:
    """``GET /logs?follow=1`` read in a thread, as ``narwhal logs -f`` does."""

    def __init__(self, url: str, job_id: int) -> None:
        self.text = ""
        self.error: Exception | None = None
        self._url, self._job = url, job_id
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        path = f"/api/jobs/{self._job}/logs"
        try:
            with (
                httpx.Client(base_url=self._url, headers=auth_headers(), timeout=None) as http,
                http.stream("GET", path, params={"follow": "1"}) as response,
            ):
                for chunk in response.iter_text():
                    self.text += chunk
        except httpx.HTTPError as e:
            self.error = e


def test_second_daemon_on_a_data_dir_is_refused(
    narwhal_up: Up, make_repo: MakeRepo, tmp_path: Path
) -> None:
    first, api = narwhal_up()
    data = _flag(first, "--data-dir")
    keys = _files(Path(data) / "keys")
    # Another --id would have revoked the first's embedded runner key, were
    # the lock taken after the keys are written.
    up = ["up", "--id", "other", "--work-dir", str(tmp_path / "w2")]
    for command in (up, ["dispatcher"]):
        second = _narwhal(*command, "--http", "127.0.0.1:0", "--data-dir", data)
        assert second.returncode == 2, second
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1, second.stderr
        assert f"pid {first.proc.pid}" in lines[0] and first.url in lines[0], lines[0]
        assert "in use" in lines[0] and second.stdout == ""
    assert first.proc.poll() is None
    assert _files(Path(data) / "keys") == keys
    job = api.wait(api.submit(make_repo(_pipeline("echo still-serving"))))
    assert job["state"] == "success" and "still-serving" in api.log(job["id"])


def test_the_lock_of_a_killed_daemon_does_not_block_the_next(narwhal_up: Up) -> None:
    first, _ = narwhal_up()
    data = Path(_flag(first, "--data-dir"))
    first.proc.kill()
    first.proc.wait(10)
    # The file stays, naming a dead process: only the kernel's lock counts.
    assert f"pid {first.proc.pid} " in (data / "narwhal.lock").read_text()
    again = Daemon(["up", "--http", "127.0.0.1:0", "--data-dir", str(data)])
    try:
        with httpx.Client(base_url=again.url, headers=auth_headers()) as http:
            assert http.get("/health").json()["status"] == "ok"
        assert f"pid {again.proc.pid} {again.url}" in (data / "narwhal.lock").read_text()
    finally:
        assert again.stop() == 0


def test_ctrl_c_of_up_ends_open_log_streams_with_a_closing_line(
    narwhal_up: Up, make_repo: MakeRepo, tmp_path: Path
) -> None:
    daemon, api = narwhal_up()
    pidfile = tmp_path / "step.pid"
    job_id = api.submit(make_repo(_pipeline(f"echo $$ > {pidfile}", "echo started", "sleep 60")))
    follower = Follower(daemon.url, job_id)
    eventually(lambda: "started" in follower.text, what="the follower to see the step")
    daemon.proc.send_signal(signal.SIGINT)
    # Without a bound the process waits for the stream, the stream for the job (60 s).
    assert daemon.proc.wait(30) == 0
    follower.thread.join(10)
    assert not follower.thread.is_alive() and follower.error is None
    last = follower.text.rstrip("\n").splitlines()[-1]
    assert last == (
        f"--- narwhal is shutting down; job {job_id} ended cancelled: runner shutting down"
    )
    assert not alive(int(pidfile.read_text()))


def test_dispatcher_stop_ends_log_streams_and_the_job_goes_on(
    cluster: Cluster, make_repo: MakeRepo, tmp_path: Path
) -> None:
    cluster.start_runner("r")
    api = cluster.start_dispatcher()
    cluster.wait_ready(1)
    done = tmp_path / "done"
    job_id = api.submit(make_repo(_pipeline("echo started", "sleep 6", f"touch {done}")))
    assert cluster.dispatcher is not None
    follower = Follower(cluster.dispatcher.url, job_id)
    eventually(lambda: "started" in follower.text, what="the follower to see the step")
    cluster.dispatcher.proc.send_signal(signal.SIGINT)
    assert cluster.dispatcher.proc.wait(30) == 0
    assert not done.exists(), "the dispatcher exited before the job ended"
    follower.thread.join(10)
    assert not follower.thread.is_alive() and follower.error is None
    assert follower.text.endswith(
        f"+ sleep 6\n--- narwhal is shutting down; the job goes on: narwhal logs -f {job_id}\n"
    )
    cluster.start_dispatcher()
    job = api.wait(job_id)
    assert job["state"] == "success" and job["attempt"] == 1, job
    assert done.exists()


def test_second_ctrl_c_stops_at_once_and_the_job_ends_cancelled(
    narwhal_up: Up, make_repo: MakeRepo, tmp_path: Path
) -> None:
    # The first Ctrl-C would let the job drain for 120 s, and a step that
    # ignores SIGTERM keeps its 60 s grace: only the second one ends it now.
    daemon, api = narwhal_up("--drain-timeout", "120", "--cancel-grace", "60")
    pidfile = tmp_path / "step.pid"
    repo = make_repo(_pipeline("trap '' TERM", f"echo $$ > {pidfile}", "sleep 100"))
    job_id = api.submit(repo)
    eventually(lambda: pidfile.exists() and pidfile.read_text().strip(), what="the step")
    follower = Follower(daemon.url, job_id)
    eventually(lambda: "+ sleep 100" in follower.text, what="the follower to see the step")
    daemon.proc.send_signal(signal.SIGINT)
    time.sleep(1)
    assert daemon.proc.poll() is None, "the first Ctrl-C lets running jobs drain"
    daemon.proc.send_signal(signal.SIGINT)
    assert daemon.proc.wait(30) == 0
    assert not alive(int(pidfile.read_text()))
    follower.thread.join(10)
    assert follower.error is None
    last = f"--- narwhal is shutting down; job {job_id} ended cancelled: runner shutting down"
    assert follower.text.endswith(f"{last} at once\n")
    again = Daemon(["up", "--http", "127.0.0.1:0", "--data-dir", _flag(daemon, "--data-dir")])
    try:
        with httpx.Client(base_url=again.url, headers=auth_headers()) as http:
            job = http.get(f"/api/jobs/{job_id}").json()
        assert job["state"] == "cancelled" and job["attempt"] == 1, job
        assert job["steps"][0]["status"] == "cancelled"
    finally:
        assert again.stop() == 0


def test_submit_follow_ends_in_one_line_when_the_dispatcher_shuts_down(
    narwhal_up: Up, make_repo: MakeRepo
) -> None:
    daemon, api = narwhal_up()
    repo = make_repo(_pipeline("echo started", "sleep 60"))
    cli = subprocess.Popen(
        [sys.executable, "-m", "narwhal", "submit", str(repo.path), "-f", "--server", daemon.url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        eventually(lambda: "started" in api.log(1), what="the step to start")
        daemon.proc.send_signal(signal.SIGINT)
        out, err = cli.communicate(timeout=30)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.communicate()
    # The closing line said what became of the job; the API is gone, so the
    # CLI asks it nothing more and ends with one line of its own.
    assert cli.returncode == 2, (out, err)
    assert out.rstrip("\n").splitlines()[-1].startswith("--- narwhal is shutting down; job 1")
    assert err.rstrip("\n").splitlines()[-1] == (
        "narwhal: the dispatcher shut down while following"
    ), err
    assert "Traceback" not in err and "cannot reach" not in err
