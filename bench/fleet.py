"""A real dispatcher and real runners as ``narwhal`` processes, for benchmarks.

Everything is on 127.0.0.1 with mDNS off and no CurveZMQ (``--insecure``:
nothing leaves loopback), local steps and local repositories. Each
process's stderr goes to a file in the fleet's folder, whose tail is shown
when something fails. ``Fleet`` is a context manager: leaving it, also by
Ctrl-C or an error, stops every process it started.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from bench.common import ROOT, admin_headers, free_port
from bench.repos import disk_bytes

#: Fast heartbeats: runners' reports (their warm mirrors) reach the dispatcher soon.
MESH = ["--heartbeat-interval", "0.5", "--liveness", "6"]
ENDED = frozenset({"success", "failed", "error", "cancelled", "timed_out", "skipped"})


class Process:
    """One ``python -m narwhal`` daemon; its stderr in ``log``."""

    def __init__(self, args: Sequence[str], log: Path) -> None:
        self.args = list(args)
        self.log = log
        with log.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "narwhal", *args],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=err,
                stdin=subprocess.DEVNULL,
                text=True,
            )
        self._announce: str | None = None

    def announce(self) -> str:
        """Its first line on stdout (where it listens); RuntimeError if it exited."""
        if self._announce is None:
            assert self.proc.stdout is not None
            self._announce = self.proc.stdout.readline()
            if not self._announce:
                self.proc.wait(10)
                raise RuntimeError(f"narwhal {self.args[0]} exited:\n{self.tail()}")
        return self._announce

    def address(self, scheme: str) -> str:
        match = re.search(rf"{scheme}://\S+", self.announce())
        if match is None:
            raise RuntimeError(f"no {scheme}:// address in {self.announce()!r}")
        return match.group(0)

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()

    def stop(self, timeout: float = 15) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


class Fleet:
    """``runners`` runner processes (``runner-1``...) and a dispatcher connected to them."""

    def __init__(
        self,
        folder: Path,
        *,
        runners: int,
        capacity: int,
        dispatcher: Sequence[str] = (),
        runner: Sequence[str] = (),
    ) -> None:
        self.folder = folder
        self.names = [f"runner-{n + 1}" for n in range(runners)]
        self._capacity = capacity
        self._dispatcher_args = list(dispatcher)
        self._runner_args = list(runner)
        self.processes: list[Process] = []
        self.api: httpx.Client | None = None

    def work(self, name: str) -> Path:
        return self.folder / name

    def __enter__(self) -> Fleet:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        # Ports chosen here, so that every process starts at once (Python's start-up
        # is most of a fleet's); the dispatcher's connects are retried until they listen.
        endpoints = [f"tcp://127.0.0.1:{free_port()}" for _ in self.names]
        runners = [self._runner(n, e) for n, e in zip(self.names, endpoints, strict=True)]
        data = self.folder / "dispatcher"
        args = ["dispatcher", "--insecure", "--discovery", "none", "--allow-local-repos"]
        args += ["--http", "127.0.0.1:0", "--data-dir", str(data), *MESH]
        for endpoint in endpoints:
            args += ["--runner", endpoint]
        dispatcher = Process([*args, *self._dispatcher_args], self.folder / "dispatcher.log")
        self.processes.append(dispatcher)
        for runner in runners:
            runner.announce()  # or RuntimeError, with its log, if it exited
        url = dispatcher.address("http")
        self.api = httpx.Client(base_url=url, timeout=30, headers=admin_headers(data))
        self._wait_ready(len(self.names))

    def _runner(self, name: str, endpoint: str) -> Process:
        args = ["runner", "--insecure", "--discovery", "none", "--allow-local-repos"]
        args += ["--executor", "local", "--id", name, "--capacity", str(self._capacity)]
        args += ["--listen", endpoint, "--work-dir", str(self.work(name)), *MESH]
        runner = Process([*args, *self._runner_args], self.folder / f"{name}.log")
        self.processes.append(runner)
        return runner

    def _wait_ready(self, count: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            ready = [r for r in self.runners() if r["state"] == "ready"]
            if len(ready) >= count:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{len(ready)} of {count} runners ready:\n{self.tails()}")
            time.sleep(0.05)

    def runners(self) -> list[dict[str, Any]]:
        assert self.api is not None
        return list(self.api.get("/api/runners").json()["runners"])

    def submit(self, repo: Path, ref: str, sha: str) -> int:
        assert self.api is not None
        body = {"repo": str(repo), "ref": ref, "sha": sha}
        response = self.api.post("/api/jobs", json=body)
        if response.status_code != 201:
            raise RuntimeError(f"submit {body}: {response.status_code} {response.text}")
        return int(response.json()["id"])

    def job(self, job_id: int) -> dict[str, Any]:
        assert self.api is not None
        return dict(self.api.get(f"/api/jobs/{job_id}").json())

    def finish(self, ids: Sequence[int], timeout: float) -> list[dict[str, Any]]:
        """Each job, once all of them ended (polled, in order)."""
        deadline = time.monotonic() + timeout
        ended: dict[int, dict[str, Any]] = {}
        while len(ended) < len(ids):
            for job_id in ids:
                if job_id not in ended:
                    job = self.job(job_id)
                    if job["state"] in ENDED:
                        ended[job_id] = job
            if time.monotonic() > deadline:
                waiting = [i for i in ids if i not in ended]
                raise RuntimeError(
                    f"jobs {waiting} did not end in {timeout:.0f} s:\n{self.tails()}"
                )
            if len(ended) < len(ids):
                time.sleep(0.05)
        return [ended[job_id] for job_id in ids]

    def mirrors(self) -> dict[str, dict[str, int]]:
        """Bytes on disk of each runner's mirror cache entries: runner -> entry -> bytes."""
        sizes: dict[str, dict[str, int]] = {}
        for name in self.names:
            # A runner works in WORK_DIR/<its id>/ (mirrors/ in it).
            roots = [p for p in self.work(name).glob("*/mirrors") if p.is_dir()]
            entries = [entry for root in roots for entry in sorted(root.iterdir())]
            sizes[name] = {entry.name: disk_bytes(entry) for entry in entries}
        return sizes

    def tails(self) -> str:
        return "\n".join(f"--- {p.log.name}\n{p.tail()}" for p in self.processes)

    def close(self) -> None:
        if self.api is not None:
            self.api.close()
            self.api = None
        # The dispatcher first: runners then see no new work while they drain.
        dispatcher = [p for p in self.processes if p.args[0] == "dispatcher"]
        runners = [p for p in self.processes if p.args[0] != "dispatcher"]
        for group in (dispatcher, runners):
            for process in group:
                process.terminate()
            for process in group:
                process.stop()
        self.processes.clear()
