"""Each benchmark runs at a tiny size and prints its summary lines.

Benchmarks print figures; they are not pass/fail on speed. These tests only
check that every script still runs end to end against the real components
(stand-in processes, RabbitMQ and Celery, git, the Docker engine) and says
what it measured.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def bench(module: str, *args: str, timeout: float = 240) -> str:
    done = subprocess.run(
        [sys.executable, "-m", f"bench.{module}", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
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
