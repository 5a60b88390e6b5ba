"""A Docker step's CPU and memory, from its container's cgroup to ``GET /api/jobs/{id}``.

The step runs in the locally built busybox image (never pulled) with a
64 MiB limit, holds 30 MiB in its /dev/shm (shared memory counts against
the container, page cache of files does not) and keeps a core busy for two
seconds; the API shows the limit and a peak between the two.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.support.repos import Repo
from tests.support.usage import run_job, runner_config

MiB = 1 << 20

PIPELINE = """\
steps:
  - name: hold
    resources: {memory: 64m}
    commands:
      - dd if=/dev/zero of=/dev/shm/held bs=1048576 count=30 2>/dev/null
      - timeout 2 yes > /dev/null || true
"""


def test_a_docker_step_s_usage_shows_its_limit_and_peak(
    make_repo: Callable[..., Repo], tmp_path: Path, busybox_image: str, labelled: Any
) -> None:
    repo = make_repo({"narwhal.yml": PIPELINE})
    conf = runner_config(
        tmp_path / "work",
        executor="docker",
        docker_image=busybox_image,
        docker_network="none",
        docker_pull="never",
        cancel_grace=1.0,
    )
    job, heard = asyncio.run(run_job(repo, conf, tmp_path / "data", timeout=120))
    assert job["state"] == "success", job
    (step,) = job["steps"]
    usage = step["usage"]
    assert usage is not None, step
    assert usage["memory_limit"] == 64 * MiB
    assert 25 * MiB <= usage["peak_memory"] < 64 * MiB, usage["peak_memory"]
    assert usage["peak_cpu"] > 0.3, usage["peak_cpu"]
    assert len(usage["samples"]) >= 5
    assert heard and {e.memory_limit for e in heard} == {64 * MiB}
    assert labelled(conf.runner_id) == []  # the step's container is gone
