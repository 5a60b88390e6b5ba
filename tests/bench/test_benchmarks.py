"""Each benchmark runs at a tiny size and prints its summary lines.

Benchmarks print figures; they are not pass/fail on speed. These tests only
check that every script still runs end to end against the real components
(stand-in processes, RabbitMQ and Celery, git, the Docker engine) and says
what it measured.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def bench(module: str, *args: str, timeout: float = 240, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [sys.executable, "-m", f"bench.{module}", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, **(env or {})},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def figure(output: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)}: ([0-9.]+)", output, re.MULTILINE)
    assert match, f"no '{name}:' line in:\n{output}"
    return float(match.group(1))


def test_dispatch_throughput_tiny() -> None:
    out = bench(
        "dispatch_throughput",
        "--jobs",
        "300",
        "--runners",
        "2",
        "--celery-jobs",
        "50",
        "--rounds",
        "1",
    )
    assert out.strip().splitlines()[-1].startswith("dispatch_throughput: ")
    assert figure(out, "dispatch_throughput") > 0
    assert figure(out, "dispatch_throughput_curve") > 0
    assert "narwhal/ceiling ratio:" in out and "narwhal/celery ratio:" in out


def test_feed_tiny() -> None:
    out = bench("feed", "--jobs", "300", "--runners", "2", "--subscribers", "2", "--rounds", "1")
    assert out.strip().splitlines()[-1].startswith("feed_ratio: ")
    assert figure(out, "feed_without") > 0 and figure(out, "feed_with_subscribers") > 0
    assert figure(out, "feed_subscribers_in_sync") == 2, out


def test_dispatch_latency_tiny() -> None:
    out = bench("dispatch_latency", "--rate", "100", "--seconds", "1")
    for name in ("dispatch_latency_p50", "dispatch_latency_p95", "dispatch_latency_p99"):
        assert figure(out, name) > 0


def test_log_throughput_tiny() -> None:
    out = bench("log_throughput", "--megabytes", "5")
    assert figure(out, "log_throughput") > 0
    assert figure(out, "log_peak_rss_runner") > 0


def test_scale_tiny() -> None:
    out = bench("scale", "--sizes", "3,6", "--jobs", "200", "--idle", "0.5")
    for size in (3, 6):
        assert figure(out, f"scale_{size}_throughput") > 0
        assert f"scale_{size}_heartbeat_cpu:" in out


def test_docker_overhead_tiny() -> None:
    out = bench("docker_overhead", "--rounds", "1")
    assert figure(out, "docker_overhead_ratio") > 0


def test_usage_overhead_tiny() -> None:
    out = bench("usage_overhead", "--samples", "20")
    for name in ("usage_group_probe_us", "usage_group_first_us", "usage_cgroup_probe_us"):
        assert figure(out, name) > 0
    assert figure(out, "usage_meter_us") >= figure(out, "usage_meter_loop_us") > 0


def test_trivial_job_tiny() -> None:
    out = bench("trivial_job", "--jobs", "3", "--burst", "5")
    assert figure(out, "trivial_job_p50") > 0
    assert figure(out, "trivial_job_throughput") > 0


def test_metrics_cost_tiny() -> None:
    out = bench(
        "metrics_cost",
        *["--jobs", "200", "--rounds", "1", "--queued", "100", "--runners", "3"],
        *["--throughput-jobs", "200", "--throughput-rounds", "1"],
    )
    for name in ("metrics_cost_per_job_changed_us", "metrics_cost_per_job_changed_per_repo_us"):
        assert figure(out, name) > 0
    assert figure(out, "metrics_scrape_ms") > 0
    assert figure(out, "metrics_throughput_ratio") > 0


POLICIES = ("affinity", "spread", "pack")


def test_placement_tiny(tmp_path: Path) -> None:
    out = bench("placement", "--tiny", env={"NARWHAL_BENCH_CACHE": str(tmp_path)})
    assert "placement_repos: 3 (generated 3," in out, out
    assert figure(out, "placement_jobs") == 12
    assert "# policy    checkout total  median" in out, out
    for policy in POLICIES:
        name = f"placement_{policy}"
        row = rf"^# {policy} +[0-9.]+ s +\d+ ms +\d+ +[0-9.]+ MB +[0-9.]+ s +\d+% \(runner-\d\)$"
        assert re.search(row, out, re.MULTILINE), f"no {policy} row in the table:\n{out}"
        jobs = re.search(rf"^{name}_jobs: 12 \((.*)\)$", out, re.MULTILINE)
        assert jobs, out
        on = dict(part.split() for part in jobs.group(1).split(", "))
        assert set(on) <= {"runner-1", "runner-2"} and sum(map(int, on.values())) == 12, on
        # The figures agree with the progress lines they sum up.
        bursts = re.findall(
            rf"^# {policy} burst \d/3: (\d+) jobs .*; (\d+) cold; checkout ([0-9.]+) s",
            out,
            re.MULTILINE,
        )
        assert len(bursts) == 3 and sum(int(n) for n, _, _ in bursts) == 12, bursts
        cold = figure(out, f"{name}_cold_clones")
        assert cold == sum(int(c) for _, c, _ in bursts), (cold, bursts)
        assert 1 <= cold <= 12
        total = figure(out, f"{name}_checkout_total")
        assert abs(total - sum(float(t) for _, _, t in bursts)) < 0.05, (total, bursts)
        assert 0 < figure(out, f"{name}_checkout_median") / 1000 <= total
        later = sum(float(t) for _, _, t in bursts[1:])
        assert abs(figure(out, f"{name}_checkout_after_first_burst") - later) < 0.05
        assert figure(out, f"{name}_fetched") > 0  # every mirror started empty
        assert figure(out, f"{name}_makespan") > 0
        assert 50 <= figure(out, f"{name}_largest_share") <= 100  # 2 runners
    assert re.search(r"^placement_target: (PASS|FAIL): ", out, re.MULTILINE), out


def test_generated_repositories_are_made_once_and_again_when_broken(tmp_path: Path) -> None:
    def ensure() -> dict[str, Any]:
        args = ["--count", "2", "--commits", "50", "--size-mb", "0.5", "--root", str(tmp_path)]
        return dict(json.loads(bench("repos", *args).strip().splitlines()[-1]))

    made = ensure()
    assert made["generated"] == 2
    first = Path(made["paths"][0])
    assert _git(first, "rev-list", "--count", "refs/heads/main") == "50"
    assert "narwhal.yml" in _git(first, "ls-tree", "--name-only", "refs/heads/main")
    again = ensure()
    assert again["generated"] == 0 and again == {**made, "generated": 0}
    head = made["heads"][0]
    _git(first, "update-ref", "refs/heads/main", f"{head}~1")  # no longer what was made
    rebuilt = ensure()
    assert (
        rebuilt["generated"] == 1 and rebuilt["heads"] == made["heads"]
    )  # same seed, same commits


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True)
    return done.stdout.strip()
