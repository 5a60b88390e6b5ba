"""Narwhal's overhead on a container job, against the same steps as ``docker run``.

A 3-step job (write a file, read it, list the workspace) runs through the
Docker executor (``run_pipeline``: one container per step, workspace bind
mount, log streaming, cleanup) and, for comparison, as the three equivalent
``docker run --rm`` commands one after the other. Both use the local busybox
test image on network ``none``. The design target: within 10% (ratio <= 1.10).

    python -m bench.docker_overhead [--rounds N]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import docker

from narwhal.config import RunnerConfig
from narwhal.mesh.protocol import StepOutcome
from narwhal.pipeline import Step, load
from narwhal.runner.docker import DockerExecutor
from narwhal.runner.executor import Stop
from narwhal.runner.job import Context, run_pipeline
from tests.support.docker import BUSYBOX_IMAGE, busybox_rootfs

STEPS = ["echo hello > greeting.txt", "cat greeting.txt", "ls -l"]
PIPELINE = "steps:\n" + "".join(f"  - name: s{i}\n    command: {c}\n" for i, c in enumerate(STEPS))


class Quiet:
    """A reporter that keeps the log, as the dispatcher would."""

    def __init__(self) -> None:
        self.log = bytearray()

    async def step_started(self, index: int, step: Step) -> None:
        pass

    async def output(self, data: bytes) -> None:
        self.log += data

    async def step_finished(self, outcome: StepOutcome) -> None:
        pass


def ensure_image() -> None:
    client = docker.from_env()
    try:
        client.images.get(BUSYBOX_IMAGE)
    except docker.errors.ImageNotFound:
        repository, tag = BUSYBOX_IMAGE.split(":")
        client.api.import_image_from_data(
            busybox_rootfs(), repository=repository, tag=tag, changes=["ENV PATH=/bin"]
        )
    finally:
        client.close()


async def narwhal_rounds(rounds: int, scratch: Path) -> list[float]:
    config = RunnerConfig(
        runner_id=f"bench-{uuid.uuid4().hex[:6]}",
        docker_image=BUSYBOX_IMAGE,
        docker_network="none",
        docker_pull="never",
    )
    pipeline = load(PIPELINE).pipeline()
    times = []
    async with DockerExecutor(config) as executor:
        for n in range(rounds):
            workspace = scratch / f"narwhal-{n}"
            workspace.mkdir()
            started = time.perf_counter()
            outcome = await run_pipeline(
                pipeline,
                workspace=workspace,
                executor=executor,
                reporter=Quiet(),
                stop=Stop(),
                context=Context(branch="main", event="push", sha="0" * 40),
            )
            times.append(time.perf_counter() - started)
            assert outcome.status == "success", outcome
    return times


def docker_run_rounds(rounds: int, scratch: Path) -> list[float]:
    times = []
    for n in range(rounds):
        workspace = scratch / f"plain-{n}"
        workspace.mkdir()
        started = time.perf_counter()
        for command in STEPS:
            subprocess.run(
                ["docker", "run", "--rm", "--network", "none", "-v", f"{workspace}:/workspace"]
                + ["-w", "/workspace", BUSYBOX_IMAGE, "sh", "-c", command],
                check=True,
                capture_output=True,
            )
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    ensure_image()
    with tempfile.TemporaryDirectory(prefix="narwhal-bench-") as tmp:
        for name in ("warm-up", "narwhal", "plain"):
            (Path(tmp) / name).mkdir()
        asyncio.run(narwhal_rounds(1, Path(tmp) / "warm-up"))
        docker_run_rounds(1, Path(tmp) / "warm-up")
        ours = asyncio.run(narwhal_rounds(args.rounds, Path(tmp) / "narwhal"))
        plain = docker_run_rounds(args.rounds, Path(tmp) / "plain")
    mine, theirs = statistics.median(ours), statistics.median(plain)
    print(f"# 3-step job, median of {args.rounds} rounds")
    print(f"docker_narwhal_job: {mine * 1000:.1f} ms (docker executor)")
    print(f"docker_run_3_steps: {theirs * 1000:.1f} ms (3 x docker run --rm)")
    print(f"docker_overhead_ratio: {mine / theirs:.3f} (target <= 1.10)")


if __name__ == "__main__":
    main()
