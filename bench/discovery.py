"""LAN discovery figures on a simulated LAN (network namespaces, real processes).

A ``narwhal dispatcher`` with mDNS discovery and no runner endpoints runs in
one namespace; runners start in another, on the same bridge. Printed, one
line each:

- runner announced -> schedulable: from the runner's "announcing" log line
  to the dispatcher's "ready" log line (same clock, ms resolution); the
  design target is under 1 s;
- runner process start -> schedulable: from spawning ``narwhal runner`` to
  the runner showing ``ready`` in ``GET /api/runners`` (includes Python's
  start-up);
- runner kill -9 -> its job requeued: from the kill to the job's stored
  ``queued`` transition; the target is under 3 heartbeat intervals.

    python -m bench.discovery [--runs N] [--heartbeat-interval S]

Needs root (namespaces), ``ip`` and ``dig`` (see scripts/services/netns.sh).
"""

from __future__ import annotations

import argparse
import re
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path

from bench.common import machine
from tests.support.daemons import Client, Daemon
from tests.support.netns import LanCluster
from tests.support.repos import Repo

_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runner starts (and kills) measured")
    parser.add_argument("--heartbeat-interval", type=float, default=0.5)
    parser.add_argument("--liveness", type=int, default=3, help="missed intervals = dead")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="narwhal-bench-") as tmp:
        root = Path(tmp)
        cluster = LanCluster(
            root, heartbeat_interval=args.heartbeat_interval, liveness=args.liveness
        )
        try:
            api = cluster.start_dispatcher()
            announced, started = start_to_ready(cluster, api, args.runs)
            requeued = kill_to_requeued(cluster, api, root, max(1, min(args.runs, 3)))
        finally:
            cluster.close()
    interval = args.heartbeat_interval
    print(f"# {machine()}")
    print(
        f"# simulated LAN: a dispatcher and a runner in network namespaces on one bridge;"
        f" heartbeat {interval} s, dead after {args.liveness} silent intervals"
    )
    print(
        f"discovery_announced_to_schedulable_p50: {_ms(announced)} ms"
        f" (max {max(announced) * 1000:.1f} over {len(announced)} runs; target < 1000)"
    )
    print(
        f"discovery_process_start_to_schedulable_p50: {_ms(started)} ms"
        f" (max {max(started) * 1000:.1f} over {len(started)} runs; Python start-up included)"
    )
    p50 = statistics.median(requeued)
    print(
        f"discovery_kill_to_requeued_p50: {p50:.2f} s = {p50 / interval:.1f} heartbeat intervals"
        f" (over {len(requeued)} runs; target < 3 intervals)"
    )


def _ms(samples: list[float]) -> str:
    return f"{statistics.median(samples) * 1000:.1f}"


def start_to_ready(cluster: LanCluster, api: Client, runs: int) -> tuple[list[float], list[float]]:
    """Start a runner, time it to ``ready``, stop it (goodbye); ``runs`` times."""
    announced, started = [], []
    for n in range(runs):
        name = f"bench-{n}"
        t0 = time.monotonic()
        runner = cluster.start_runner("r1", capacity=2, runner_id=name)
        while not _ready(api, name):
            time.sleep(0.002)
        started.append(time.monotonic() - t0)
        announced.append(_announce_to_ready(cluster, runner, name))
        runner.stop()
        while any(r["id"] == name for r in api.http.get("/api/runners").json()["runners"]):
            time.sleep(0.01)
    return announced, started


def _ready(api: Client, runner_id: str) -> bool:
    runners = api.http.get("/api/runners").json()["runners"]
    return any(r["id"] == runner_id and r["state"] == "ready" for r in runners)


def _announce_to_ready(cluster: LanCluster, runner: Daemon, name: str) -> float:
    assert cluster.dispatcher is not None
    announcing = _logged(runner, f"announcing runner {name} ")
    ready = _logged(cluster.dispatcher, f"runner {name} ready at ")
    return (ready - announcing).total_seconds()


def _logged(daemon: Daemon, text: str) -> datetime:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for line in list(daemon.stderr_lines):
            match = _STAMP.match(line)
            if text in line and match:
                return datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f")
        time.sleep(0.01)
    raise RuntimeError(f"no log line with {text!r}")


def kill_to_requeued(cluster: LanCluster, api: Client, root: Path, runs: int) -> list[float]:
    """Kill a runner running a job; time until the job is stored ``queued`` again."""
    repo = Repo(root / "repo")
    repo.commit({"narwhal.yml": "steps:\n  - name: long\n    command: sleep 60\n"})
    samples = []
    for n in range(runs):
        name = f"victim-{n}"
        runner = cluster.start_runner("r2", capacity=1, runner_id=name)
        while not _ready(api, name):
            time.sleep(0.01)
        job_id = api.submit(repo)
        api.wait(job_id, {"running"})
        killed = time.time()
        cluster.lan.kill(runner)
        job = api.wait(job_id, {"queued"}, timeout=30)
        requeued = next(
            t for t in job["transitions"] if t["state"] == "queued" and t["at"] > killed
        )
        samples.append(requeued["at"] - killed)
        api.http.post(f"/api/jobs/{job_id}/cancel", json={})
    return samples


if __name__ == "__main__":
    main()
