"""Shared fixtures: real git repositories and real ``narwhal`` processes."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

if TYPE_CHECKING:
    from tests.dispatcher.cluster import Cluster

#: An admin token for every daemon and client a test starts (``NARWHAL_API_TOKEN``,
#: set by the autouse ``api_token`` fixture). Tests of authentication itself
#: remove it (``monkeypatch.delenv``) and pass ``Client(url, token=None)``.
API_TOKEN = "nw_test_" + secrets.token_urlsafe(16)

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Narwhal Test",
    "GIT_AUTHOR_EMAIL": "test@narwhal.invalid",
    "GIT_COMMITTER_NAME": "Narwhal Test",
    "GIT_COMMITTER_EMAIL": "test@narwhal.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
}


def git(cwd: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", *args],
        cwd=cwd,
        env={**os.environ, **GIT_ENV},
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


class Repo:
    """A real git repository on disk that tests commit files to."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True)
        git(path, "init", "-q", "-b", "main")

    def commit(self, files: dict[str, str], message: str = "change") -> str:
        for name, text in files.items():
            target = self.path / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        git(self.path, "add", "-A")
        git(self.path, "commit", "-q", "-m", message)
        return git(self.path, "rev-parse", "HEAD")


@pytest.fixture
def make_repo(tmp_path: Path) -> Callable[..., Repo]:
    counter = iter(range(1000))

    def make(files: dict[str, str] | None = None) -> Repo:
        repo = Repo(tmp_path / f"repo{next(counter)}")
        if files:
            repo.commit(files, "initial")
        return repo

    return make


class Daemon:
    """A ``narwhal`` daemon subprocess; reads its announce line from stdout.

    mDNS discovery is off (``NARWHAL_DISCOVERY=none``) unless the test asks
    for it with ``--discovery mdns``: daemons of other tests (or of another
    checkout's test run on this machine) must never find each other on
    loopback. Steps run locally (``NARWHAL_EXECUTOR=local``) unless the test
    passes ``--executor docker``. Local repositories are allowed
    (``NARWHAL_ALLOW_LOCAL_REPOS=1``: the tests' repositories are folders)
    unless the test passes ``--no-allow-local-repos``. ``netns`` runs the
    daemon inside that network namespace.
    """

    def __init__(
        self,
        args: list[str],
        *,
        env: dict[str, str] | None = None,
        netns: str | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.args = args
        command = [sys.executable, "-m", "narwhal", *args]
        if netns is not None:
            command = ["ip", "netns", "exec", netns, *command]  # exec: the pid stays narwhal's
        self.proc = subprocess.Popen(
            command,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={
                "NARWHAL_DISCOVERY": "none",
                # Steps run as local processes unless a test asks for Docker:
                # the pipelines here name no image the engine has.
                "NARWHAL_EXECUTOR": "local",
                "NARWHAL_ALLOW_LOCAL_REPOS": "1",
                **os.environ,
                **(env or {}),
            },
        )
        self.stderr_lines: list[str] = []
        self._stderr = threading.Thread(target=self._drain, daemon=True)
        self._stderr.start()
        assert self.proc.stdout is not None
        self.announce = self.proc.stdout.readline()
        if not self.announce:
            self.proc.wait(10)
            raise RuntimeError(f"narwhal {args} exited: {''.join(self.stderr_lines)}")

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr_lines.append(line)

    @property
    def url(self) -> str:
        match = re.search(r"http://\S+", self.announce)
        assert match, self.announce
        return match.group(0)

    @property
    def endpoint(self) -> str:
        match = re.search(r"tcp://\S+", self.announce)
        assert match, self.announce
        return match.group(0)

    def stop(self, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._stderr.join(5)
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.proc.stdout.close()
        self.proc.stderr.close()
        return self.proc.returncode


def auth_headers(token: str | None = API_TOKEN) -> dict[str, str]:
    """Headers that carry ``token`` (by default the tests' admin token)."""
    return {"Authorization": f"Bearer {token}"} if token else {}


class Client:
    """The REST API of a running dispatcher, with waits on job states."""

    def __init__(self, url: str, *, token: str | None = API_TOKEN) -> None:
        self.http = httpx.Client(base_url=url, timeout=30, headers=auth_headers(token))

    def submit(self, repo: Repo | str, **body: Any) -> int:
        path = repo.path if isinstance(repo, Repo) else repo
        response = self.http.post("/api/jobs", json={"repo": str(path), **body})
        assert response.status_code == 201, response.text
        return int(response.json()["id"])

    def job(self, job_id: int) -> dict[str, Any]:
        response = self.http.get(f"/api/jobs/{job_id}")
        assert response.status_code == 200, response.text
        return dict(response.json())

    def log(self, job_id: int) -> str:
        return self.http.get(f"/api/jobs/{job_id}/logs").text

    def wait(
        self, job_id: int, states: set[str] | None = None, timeout: float = 60
    ) -> dict[str, Any]:
        states = states or {"success", "failed", "error", "cancelled", "timed_out", "skipped"}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if job["state"] in states:
                return job
            time.sleep(0.05)
        raise AssertionError(f"job {job_id} never reached {states}: {self.job(job_id)}")

    def close(self) -> None:
        self.http.close()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A dispatcher and named runners as real processes (``tests.dispatcher.cluster``)."""
    # Imported here: that module builds on this one's Daemon and Client.
    from tests.dispatcher.cluster import Cluster

    started = Cluster(tmp_path)
    try:
        yield started
    finally:
        started.close()


@pytest.fixture
def narwhal_up(tmp_path: Path) -> Iterator[Callable[..., tuple[Daemon, Client]]]:
    """Start ``narwhal up`` on free ports with its own data and work dirs."""
    started: list[tuple[Daemon, Client]] = []

    def start(*extra: str) -> tuple[Daemon, Client]:
        n = len(started)
        daemon = Daemon(
            [
                "up",
                "--http",
                "127.0.0.1:0",
                "--data-dir",
                str(tmp_path / f"data{n}"),
                "--work-dir",
                str(tmp_path / f"work{n}"),
                "--heartbeat-interval",
                "0.2",
                "--cancel-grace",
                "2",
                *extra,
            ]
        )
        client = Client(daemon.url)
        wait_for_runners(client, 1)
        started.append((daemon, client))
        return daemon, client

    yield start
    for daemon, client in started:
        client.close()
        daemon.stop()


def wait_for_runners(client: Client, count: int, timeout: float = 15) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runners = client.http.get("/api/runners").json()["runners"]
        if sum(r["state"] == "ready" for r in runners) >= count:
            return list(runners)
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} runners ready: {runners}")


@pytest.fixture(autouse=True)
def api_token(monkeypatch: pytest.MonkeyPatch) -> str:
    """Daemons accept, and clients (also the ``narwhal`` CLI) send, ``API_TOKEN``."""
    monkeypatch.setenv("NARWHAL_API_TOKEN", API_TOKEN)
    return API_TOKEN


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """Fail a test that leaves threads running (python-zeroconf's check)."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        leaked = [t for t in set(threading.enumerate()) - before if t.is_alive() and not t.daemon]
        if not leaked:
            return
        time.sleep(0.05)
    pytest.fail(f"threads leaked: {leaked}")
