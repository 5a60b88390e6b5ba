"""The local executor's usage: a real process group burning CPU and holding memory.

``GroupProbe`` sums the group's processes from ``/proc``; the local session
hands it to the step's meter, and a step too short for a timed sample still
gets one from ``wait4`` when it ends.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from narwhal.mesh.protocol import StepOutcome
from narwhal.pipeline import Step, load
from narwhal.runner.executor import LocalExecutor, Stop
from narwhal.runner.job import Context, run_pipeline
from narwhal.runner.probes import GroupProbe
from narwhal.runner.usage import Sample, Sampling

MiB = 1 << 20

#: Holds 50 MiB and burns CPU for ``seconds`` (in a child of the shell, as steps do).
BURN = (
    "import time; b = b'x' * (50 << 20); end = time.time() + {seconds}\n"
    "while time.time() < end: pass\n"
)


def test_the_group_probe_sums_a_real_group_and_survives_processes_exiting() -> None:
    # sh (the leader) runs the burner, and a loop of short-lived processes
    # that keep exiting while the probe reads.
    script = (
        f'{sys.executable} -c "{BURN.format(seconds=3)}" &\n'
        "i=0; while [ $i -lt 300 ]; do /bin/true; i=$((i+1)); done\nwait\n"
    )
    leader = subprocess.Popen(["sh", "-c", script], start_new_session=True)
    try:
        probe = GroupProbe(leader.pid)
        time.sleep(0.5)
        first = probe.read()
        started = time.monotonic()
        readings = []
        while time.monotonic() - started < 1.0:
            readings.append(probe.read())  # never raises while processes come and go
            time.sleep(0.05)
        last = probe.read()
        elapsed = time.monotonic() - started
    finally:
        os.killpg(leader.pid, signal.SIGKILL)
        leader.wait()
    assert first is not None and last is not None and all(readings)
    cores = (last.cpu - first.cpu) / elapsed
    assert 0.4 <= cores <= 2.1, cores  # one busy process (on a machine others share)
    assert last.memory is not None and last.memory >= 50 * MiB


class Quiet:
    """A reporter that keeps only the step outcomes."""

    def __init__(self) -> None:
        self.steps: list[StepOutcome] = []

    async def step_started(self, index: int, step: Step) -> None:
        pass

    async def output(self, data: bytes) -> None:
        pass

    async def step_finished(self, outcome: StepOutcome) -> None:
        self.steps.append(outcome)


def test_local_steps_are_sampled_while_they_run_and_a_short_one_at_its_end(
    tmp_path: Path,
) -> None:
    (tmp_path / "burn.py").write_text(BURN.format(seconds=1.5))
    text = f"""
steps:
  - name: burn
    command: {sys.executable} burn.py
  - name: blink
    command: {sys.executable} -c "b = b'x' * (30 << 20)"
"""
    frames: list[tuple[int, tuple[Sample, ...], int | None]] = []

    async def send(index: int, samples: tuple[Sample, ...], limit: int | None) -> None:
        frames.append((index, samples, limit))

    reporter = Quiet()
    outcome = asyncio.run(
        run_pipeline(
            load(text).pipeline(),
            workspace=tmp_path,
            executor=LocalExecutor(grace=1),
            reporter=reporter,
            stop=Stop(),
            context=Context(branch="main", event="push", sha="0" * 40),
            sampling=Sampling(send=send, interval=0.2, send_every=0.5),
        )
    )
    assert outcome.status == "success", outcome
    burn = [s for index, batch, _ in frames if index == 0 for s in batch]
    blink = [s for index, batch, _ in frames if index == 1 for s in batch]
    assert {limit for _, _, limit in frames} == {None}
    assert len([f for f in frames if f[0] == 0]) >= 2  # sent while it ran, and at its end
    assert len(burn) >= 5 and max(m for _, _, m in burn) >= 50 * MiB
    assert max(cpu for _, cpu, _ in burn) >= 0.5
    assert burn[-1][0] <= reporter.steps[0].duration + 0.05
    # Shorter than half an interval: one sample, from wait4, with the peak.
    assert len(blink) >= 1 and max(m for _, _, m in blink) >= 30 * MiB
