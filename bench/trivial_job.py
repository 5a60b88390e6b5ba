"""A trivial one-step job (``true``) through ``narwhal up``: API to done, git checkout included.

Starts a real ``narwhal up`` (local executor), makes a real git repository,
and measures (1) one job at a time: submit -> final state stored, p50/p95,
and (2) a burst of jobs: jobs per second on this machine.

Targets (DESIGN.md): p50 under 30 ms, ~100 jobs/s on 2 cores.
Run: ``python -m bench.trivial_job`` (about 20 s).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.common import ROOT, admin_headers, exit_on_sigterm, machine, percentile
from bench.log_throughput import GIT

TERMINAL = {"success", "failed", "error", "cancelled", "timed_out"}


def _repo(path: Path) -> None:
    path.mkdir()
    (path / "narwhal.yml").write_text("steps:\n  - name: noop\n    command: 'true'\n")
    env = {**os.environ, **GIT}
    for args in (["init", "-q"], ["add", "."], ["commit", "-qm", "bench"]):
        subprocess.run(["git", *args], cwd=path, env=env, check=True)


def _finish(api: httpx.Client, job_id: int) -> dict[str, object]:
    while True:
        job: dict[str, object] = api.get(f"/api/jobs/{job_id}").json()
        if job["state"] in TERMINAL:
            if job["state"] != "success":
                raise RuntimeError(f"job {job_id} ended {job['state']}: {job['reason']}")
            return job
        time.sleep(0.002)


def measure(sequential: int, burst: int, capacity: int) -> tuple[list[float], float]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _repo(root / "repo")
        up = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "narwhal",
                "up",
                "--http",
                "127.0.0.1:0",
                "--data-dir",
                str(root / "data"),
                "--work-dir",
                str(root / "work"),
                "--executor",
                "local",
                "--capacity",
                str(capacity),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            assert up.stdout is not None
            url = up.stdout.readline().split("API on ")[1].split()[0]
            headers = admin_headers(root / "data")
            with httpx.Client(base_url=url, timeout=30, headers=headers) as api:
                while api.get("/health").json()["runners"] < 1:
                    time.sleep(0.01)
                sha = subprocess.run(
                    ["git", "-C", str(root / "repo"), "rev-parse", "HEAD"],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout.strip()
                # As a forge's webhook does: the commit is named.
                body = {"repo": str(root / "repo"), "ref": "refs/heads/master", "sha": sha}
                _finish(api, api.post("/api/jobs", json=body).json()["id"])  # warm-up
                times = []
                for _ in range(sequential):
                    job = _finish(api, api.post("/api/jobs", json=body).json()["id"])
                    times.append(float(job["finished_at"]) - float(job["created_at"]))  # type: ignore[arg-type]
                started = time.perf_counter()
                ids = [api.post("/api/jobs", json=body).json()["id"] for _ in range(burst)]
                for job_id in ids:
                    _finish(api, job_id)
                rate = burst / (time.perf_counter() - started)
        finally:
            up.terminate()
            up.wait(30)
            if up.stdout is not None:
                up.stdout.close()
    return times, rate


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=50, help="sequential jobs for latency")
    parser.add_argument("--burst", type=int, default=300, help="jobs for throughput")
    parser.add_argument("--capacity", type=int, default=4)
    args = parser.parse_args(argv)
    exit_on_sigterm()
    print(f"# {machine()}")
    times, rate = measure(args.jobs, args.burst, args.capacity)
    ms = [t * 1000 for t in times]
    print(f"trivial_job_p50: {percentile(ms, 50):.1f} ms (target < 30)")
    print(f"trivial_job_p95: {percentile(ms, 95):.1f} ms")
    print(f"trivial_job_throughput: {rate:.0f} jobs/s (target ~100, capacity {args.capacity})")


if __name__ == "__main__":
    main()
