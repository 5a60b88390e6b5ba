"""Real ``narwhal`` processes: daemons started with ``python -m narwhal``, the
CLI run once, and the REST API of a running dispatcher.

Every daemon a test starts is made here, so the settings that keep test
daemons apart (no mDNS unless asked, local steps, local repositories
allowed) and the admin token are set in one place.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx

from tests.support.eventually import eventually
from tests.support.repos import Repo

#: An admin token for every daemon and client a test starts (``NARWHAL_API_TOKEN``,
#: set by the autouse ``api_token`` fixture). Tests of authentication itself
#: remove it (``monkeypatch.delenv``) and pass ``Client(url, token=None)``.
API_TOKEN = "nw_test_" + secrets.token_urlsafe(16)

#: Every state a job ends in: what ``Client.wait`` waits for by default.
ENDED = frozenset({"success", "failed", "error", "cancelled", "timed_out", "skipped"})
#: Heartbeats of test daemons: fast, so a lost peer is noticed within a second.
HEARTBEAT = ["--heartbeat-interval", "0.2"]


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


def runner_args(
    work: Path, *extra: str, listen: str = "tcp://127.0.0.1:0", mesh: list[str] = HEARTBEAT
) -> list[str]:
    """``narwhal runner`` with no discovery, listening on ``listen``, working in ``work``."""
    return ["runner", "--discovery", "none", "--listen", listen, "--work-dir", str(work)] + [
        *mesh,
        *extra,
    ]


def dispatcher_args(
    data: Path,
    *extra: str,
    runners: list[str] | tuple[str, ...] = (),
    http: str = "127.0.0.1:0",
    mesh: list[str] = HEARTBEAT,
) -> list[str]:
    """``narwhal dispatcher`` with no discovery, its API on ``http``, connected to ``runners``."""
    args = ["dispatcher", "--discovery", "none", "--http", http, "--data-dir", str(data), *mesh]
    for endpoint in runners:
        args += ["--runner", endpoint]
    return [*args, *extra]


def narwhal(
    *args: str, cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """One ``narwhal`` CLI command, run to its end; its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "narwhal", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
        check=False,
    )


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

    def jobs(self, **params: Any) -> list[dict[str, Any]]:
        """Every job the API lists (all pages), newest first."""
        jobs: list[dict[str, Any]] = []
        while True:
            page = self.http.get("/api/jobs", params=params).json()
            jobs += page["jobs"]
            if page.get("next") is None:
                return jobs
            params = {**params, "before": page["next"]}

    def runners(self) -> list[dict[str, Any]]:
        """The runners; none while the dispatcher is a standby (its API says 503)."""
        response = self.http.get("/api/runners")
        if response.status_code == 503:
            return []
        return list(response.json()["runners"])

    def wait(
        self, job_id: int, states: set[str] | None = None, timeout: float = 60
    ) -> dict[str, Any]:
        """The job once it is in one of ``states`` (by default: once it ended)."""
        wanted = states or ENDED

        def reached() -> dict[str, Any] | None:
            job = self.job(job_id)
            return job if job["state"] in wanted else None

        return eventually(
            reached,
            timeout=timeout,
            what=f"job {job_id} to reach {sorted(wanted)}",
            detail=lambda: self.job(job_id),
        )

    def wait_for_sha(self, sha: str, timeout: float = 30, **params: Any) -> dict[str, Any]:
        """The job (once it ended) of commit ``sha``, made by a webhook or an event."""

        def listed() -> list[dict[str, Any]]:
            return list(self.http.get("/api/jobs", params=params).json()["jobs"])

        found = eventually(
            lambda: [j for j in listed() if j["sha"] == sha],
            timeout=timeout,
            what=f"a job at {sha}",
            detail=listed,
        )
        return self.wait(found[0]["id"])

    def close(self) -> None:
        self.http.close()


def wait_for_runners(client: Client, count: int, timeout: float = 15) -> list[dict[str, Any]]:
    """The API's runner list once at least ``count`` runners are ready."""

    def ready() -> list[dict[str, Any]] | None:
        runners = client.runners()
        return runners if sum(r["state"] == "ready" for r in runners) >= count else None

    return eventually(
        ready,
        timeout=timeout,
        what=f"{count} runners ready",
        detail=client.runners,
    )


def alive(pid: int) -> bool:
    """Whether a process of that id exists (a zombie counts: it is not reaped yet)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
