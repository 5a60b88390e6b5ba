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


#: Holds 50 MiB, uses 1.5 s of CPU, says so in a file, then sleeps (staying in its group).
SPEND = (
    "import pathlib, time; b = b'x' * (50 << 20)\n"
    "while time.process_time() < 1.5: pass\n"
    "pathlib.Path('spent').touch(); time.sleep(60)\n"
)


def test_the_group_probe_sums_a_real_group_and_survives_processes_exiting(
    tmp_path: Path,
) -> None:
    # sh (the leader) starts the spender only after the probe's first read (so
    # a later read must find a process it has not listed before), and a loop
    # of short-lived processes that keep exiting while the probe reads. CPU
    # time, not wall time, is what is checked: others share the cores.
    (tmp_path / "spend.py").write_text(SPEND)
    script = (
        f"sleep 0.6\n{sys.executable} spend.py &\n"
        "i=0; while [ $i -lt 300 ]; do /bin/true; i=$((i+1)); done\nwait\n"
    )
    leader = subprocess.Popen(["sh", "-c", script], cwd=tmp_path, start_new_session=True)
    try:
        probe = GroupProbe(leader.pid)
        time.sleep(0.2)
        before = probe.read()
        readings = []
        deadline = time.monotonic() + 60
        while not (tmp_path / "spent").exists() and time.monotonic() < deadline:
            readings.append(probe.read())  # never fails while processes come and go
            time.sleep(0.05)
        after = probe.read()
    finally:
        os.killpg(leader.pid, signal.SIGKILL)
        leader.wait()
    assert before is not None and before.memory is not None and before.memory < 20 * MiB
    assert after is not None and after.memory is not None and len(readings) > 5
    assert all(readings) and [r.cpu for r in readings] == sorted(r.cpu for r in readings)
    assert 1.5 <= after.cpu - before.cpu <= 4.0, after.cpu - before.cpu
    assert after.memory >= 50 * MiB


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
