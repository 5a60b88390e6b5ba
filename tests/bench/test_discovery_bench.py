"""bench/discovery.py runs at a tiny size and prints its summary lines."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_discovery_bench_prints_its_figures() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.discovery", "--runs", "1", "--heartbeat-interval", "0.2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    figures = dict(
        line.split(": ", 1) for line in done.stdout.splitlines() if not line.startswith("#")
    )
    assert set(figures) == {
        "discovery_announced_to_schedulable_p50",
        "discovery_process_start_to_schedulable_p50",
        "discovery_kill_to_requeued_p50",
    }, done.stdout
    for value in figures.values():
        assert re.match(r"[0-9.]+ (ms|s)", value) and float(value.split()[0]) > 0, value
