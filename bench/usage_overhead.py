"""What sampling a step's CPU and memory costs the runner, per sample.

Three figures, each CPU time (not wall time) per sample, in microseconds:

- ``usage_group_probe_us``: the local executor's probe (``GroupProbe``):
  after its first read it lists ``/proc`` and reads ``/proc/PID/stat`` of
  the group's members and of new processes only. ``usage_group_first_us``
  is its first read, which reads every process's (once per step); the
  machine's process count is printed beside it, as that cost grows with
  it. The group measured is a real one (a sleeping shell and two children).
- ``usage_cgroup_probe_us``: the Docker executor's probe (``CgroupProbe``)
  on a running busybox container (the locally built test image, never
  pulled); ``--no-docker`` leaves it out.
- ``usage_meter_us``: the meter around a probe that costs nothing
  (``StepMeter.sample``: the hop to a thread and back, keeping the sample),
  split into the event loop's share (``usage_meter_loop_us``) and the rest.

At the default interval (one sample a second per running step) the runner
spends about ``probe + meter`` microseconds a second per step.

    python -m bench.usage_overhead [--samples N] [--no-docker]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable

import docker

from bench.common import exit_on_sigterm, machine
from narwhal.runner.probes import CgroupProbe, GroupProbe
from narwhal.runner.usage import Reading, Sample, Sampling, StepMeter
from tests.support.docker import BUSYBOX_IMAGE, busybox_rootfs


def cpu_us_per_call(call: Callable[[], object], count: int) -> float:
    started = time.process_time()
    for _ in range(count):
        call()
    return (time.process_time() - started) / count * 1e6


def group_probe(count: int) -> tuple[float, float, int]:
    group = subprocess.Popen(["sh", "-c", "sleep 60 & sleep 60 & wait"], start_new_session=True)
    try:
        time.sleep(0.1)
        probe = GroupProbe(group.pid)
        reading = probe.read()
        assert reading is not None and reading.memory, reading
        cost = cpu_us_per_call(probe.read, count)
        first = cpu_us_per_call(lambda: GroupProbe(group.pid).read(), max(1, count // 20))
    finally:
        os.killpg(group.pid, signal.SIGKILL)
        group.wait()
    processes = sum(name.isdigit() for name in os.listdir("/proc"))
    return cost, first, processes


def cgroup_probe(count: int) -> float:
    client = docker.from_env()
    container = None
    try:
        try:
            client.images.get(BUSYBOX_IMAGE)
        except docker.errors.ImageNotFound:
            repository, tag = BUSYBOX_IMAGE.split(":")
            client.api.import_image_from_data(
                busybox_rootfs(), repository=repository, tag=tag, changes=["ENV PATH=/bin"]
            )
        container = client.containers.run(
            BUSYBOX_IMAGE,
            ["sleep", "60"],
            detach=True,
            network_mode="none",
            name=f"narwhal-bench-usage-{uuid.uuid4().hex[:6]}",
        )
        probe = CgroupProbe(container.id)
        reading = probe.read()
        assert reading is not None, "the container's cgroup was not found"
        return cpu_us_per_call(probe.read, count)
    finally:
        if container is not None:
            container.remove(force=True)
        client.close()


class Free:
    """A probe that costs nothing: what is left is the meter's own cost."""

    def __init__(self) -> None:
        self.cpu = 0.0

    def read(self) -> Reading:
        self.cpu += 0.01
        return Reading(cpu=self.cpu, memory=1 << 20)


async def meter(count: int) -> tuple[float, float]:
    async def send(index: int, samples: tuple[Sample, ...], limit: int | None) -> None:
        pass

    step = StepMeter(Sampling(send=send, interval=3600.0), 0)
    probe = Free()
    await step.sample(probe)  # the thread pool's first thread, before timing
    started, loop_started = time.process_time(), time.thread_time()
    for _ in range(count):
        await step.sample(probe)
    loop = (time.thread_time() - loop_started) / count * 1e6
    total = (time.process_time() - started) / count * 1e6
    await step.close()
    return total, loop


def main() -> None:
    exit_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--no-docker", action="store_true")
    args = parser.parse_args()
    print(f"# {machine()}; CPU time per sample, {args.samples} samples each")
    group, first, processes = group_probe(args.samples)
    print(f"usage_group_probe_us: {group:.1f}")
    print(f"usage_group_first_us: {first:.1f} ({processes} processes on the machine)")
    if not args.no_docker:
        print(f"usage_cgroup_probe_us: {cgroup_probe(args.samples):.1f}")
    total, loop = asyncio.run(meter(args.samples))
    print(f"usage_meter_us: {total:.1f} (thread hop and bookkeeping, a free probe)")
    print(f"usage_meter_loop_us: {loop:.1f} (of which on the event loop)")


if __name__ == "__main__":
    main()
