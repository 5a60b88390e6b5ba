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
    lines = done.stdout.splitlines()
    assert len(lines) == 3, done.stdout
    assert re.match(r"runner announced -> schedulable .*: p50 [0-9.]+ ms", lines[0])
    assert re.match(r"runner process start -> schedulable .*: p50 [0-9.]+ ms", lines[1])
    assert re.match(
        r"runner kill -9 -> its job requeued: p50 [0-9.]+ s = [0-9.]+ heartbeat", lines[2]
    )
