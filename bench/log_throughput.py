"""Log throughput: a step writing to stdout as fast as it can -> the complete log in the store.

Real ``narwhal dispatcher`` and ``narwhal runner`` processes (local
executor), a real git repository, the real SQLite store. Prints MB/s from
the step's start to the job's end with every byte stored, and the peak
resident memory of the runner and the dispatcher while doing it.

Run: ``python -m bench.log_throughput`` (about 20 s).
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.common import ROOT, admin_headers, exit_on_sigterm, free_port, machine, peak_rss
from tests.support.keys import MeshKeys

GIT = {
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@narwhal.invalid",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@narwhal.invalid",
}


def _repo(path: Path, size: int) -> None:
    path.mkdir()
    (path / "narwhal.yml").write_text(
        f"steps:\n  - name: flood\n    command: yes 0123456789abcdef | head -c {size}\n"
    )
    env = {**os.environ, **GIT}
    for args in (["init", "-q"], ["add", "."], ["commit", "-qm", "bench"]):
        subprocess.run(["git", *args], cwd=path, env=env, check=True)


def _daemon(args: list[str]) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "narwhal", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    proc.stdout.readline()
    return proc


def run(size: int) -> tuple[float, int, int]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _repo(root / "repo", size)
        port, http = free_port(), free_port()
        keys = MeshKeys(root)
        runner = _daemon(
            [
                "runner",
                "--listen",
                f"tcp://127.0.0.1:{port}",
                "--capacity",
                "1",
                "--work-dir",
                str(root / "work"),
                "--discovery",
                "none",
                "--executor",
                "local",
                "--id",
                "flood",
                *keys.runner("flood"),
                "--allow-local-repos",
            ]
        )
        dispatcher = _daemon(
            [
                "dispatcher",
                "--http",
                f"127.0.0.1:{http}",
                "--data-dir",
                str(root / "data"),
                "--runner",
                f"tcp://127.0.0.1:{port}",
                "--discovery",
                "none",
                *keys.dispatcher(),
                "--allow-local-repos",
            ]
        )
        try:
            headers = admin_headers(root / "data")
            with httpx.Client(
                base_url=f"http://127.0.0.1:{http}", timeout=30, headers=headers
            ) as api:
                _wait(lambda: api.get("/health").json()["runners"] == 1)
                job = api.post("/api/jobs", json={"repo": str(root / "repo")}).json()["id"]
                _wait(lambda: api.get(f"/api/jobs/{job}").json()["finished_at"], 600)
                record = api.get(f"/api/jobs/{job}").json()
                if record["state"] != "success":
                    raise RuntimeError(f"the flood job ended {record['state']}: {record['reason']}")
            stored = _stored(root / "data" / "narwhal.db", job)
            # Until every byte is in the store: the job ends only after that.
            seconds = record["finished_at"] - record["started_at"]
            mem_runner, mem_dispatcher = peak_rss(runner.pid), peak_rss(dispatcher.pid)
        finally:
            for proc in (dispatcher, runner):
                proc.terminate()
                proc.wait(30)
                if proc.stdout is not None:
                    proc.stdout.close()
    if stored < size:
        raise RuntimeError(f"only {stored} of {size} bytes stored")
    return size / seconds / 1e6, mem_runner, mem_dispatcher


def _stored(db: Path, job: int) -> int:
    with sqlite3.connect(db) as conn:
        return int(
            # Raw bytes: ``size`` (compressed chunks), else the row's own length.
            conn.execute(
                "SELECT sum(COALESCE(size, length(data))) FROM logs WHERE job_id = ?", (job,)
            ).fetchone()[0]
        )


def _wait(predicate: object, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise TimeoutError("benchmark setup timed out")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=500)
    args = parser.parse_args(argv)
    exit_on_sigterm()
    print(f"# {machine()}")
    rate, runner, dispatcher = run(args.megabytes * 1_000_000)
    print(f"# {args.megabytes} MB through one step's stdout")
    print(f"log_peak_rss_runner: {runner / 2**20:.0f} MiB")
    print(f"log_peak_rss_dispatcher: {dispatcher / 2**20:.0f} MiB")
    print(f"log_throughput: {rate:.1f} MB/s")


if __name__ == "__main__":
    main()
