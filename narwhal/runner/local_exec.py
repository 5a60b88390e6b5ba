"""``narwhal exec``: run a directory's narwhal.yml here, without a dispatcher.

The directory is copied into a scratch workspace first, so steps that write
files never touch the user's working tree. Every matrix combination runs in
turn; the exit status is 0 only when all of them succeeded.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import BinaryIO, TextIO

from narwhal.mesh.protocol import StepOutcome
from narwhal.pipeline import PIPELINE_FILE, Pipeline, Step, load_path
from narwhal.runner.executor import Executor, Stop
from narwhal.runner.job import Context, Outcome, run_pipeline


class PrintReporter:
    """Writes a pipeline's output to a stream as it comes."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out

    async def step_started(self, index: int, step: Step) -> None:
        pass

    async def output(self, data: bytes) -> None:
        self._out.write(data)
        self._out.flush()

    async def step_finished(self, outcome: StepOutcome) -> None:
        pass


def _git(directory: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args], cwd=directory, capture_output=True, text=True, check=False
        )
    except FileNotFoundError:
        return None
    return done.stdout.strip() if done.returncode == 0 else None


async def exec_directory(
    directory: Path,
    *,
    executor: Executor,
    branch: str | None,
    event: str,
    out: BinaryIO,
    err: TextIO,
    stop: Stop | None = None,
) -> int:
    """Run every matrix combination of ``directory``'s pipeline; return an exit code.

    ``stop``: set by the caller to stop the build (Ctrl-C sets it too).
    """
    pipeline_file = load_path(directory / PIPELINE_FILE)
    if branch is None:
        branch = _git(directory, "symbolic-ref", "--short", "-q", "HEAD")
    sha = _git(directory, "rev-parse", "HEAD") or "0" * 40
    context = Context(branch=branch, event=event, sha=sha)
    stop = stop or Stop()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, stop.set, "cancelled", "interrupted")
    failures = 0
    try:
        for variant in pipeline_file.variants:
            pipeline = pipeline_file.pipeline(variant)
            outcome = await _run_one(pipeline, directory, executor, context, stop, out)
            _summary(pipeline, outcome, err)
            failures += outcome.status not in ("success", "skipped")
    finally:
        loop.remove_signal_handler(signal.SIGINT)
    return 1 if failures else 0


async def _run_one(
    pipeline: Pipeline,
    directory: Path,
    executor: Executor,
    context: Context,
    stop: Stop,
    out: BinaryIO,
) -> Outcome:
    scratch = Path(tempfile.mkdtemp(prefix="narwhal-exec-"))
    workspace = scratch / "workspace"
    try:
        await asyncio.to_thread(shutil.copytree, directory, workspace, symlinks=True)
        return await run_pipeline(
            pipeline,
            workspace=workspace,
            executor=executor,
            reporter=PrintReporter(out),
            stop=stop,
            context=context,
        )
    finally:
        await asyncio.to_thread(shutil.rmtree, scratch, True)


def _summary(pipeline: Pipeline, outcome: Outcome, err: TextIO) -> None:
    variant = " ".join(f"{k}={v}" for k, v in pipeline.variant.items())
    title = f"{pipeline.name} [{variant}]" if variant else pipeline.name
    err.write(f"\n{title}: {outcome.status}" + (f" ({outcome.reason})" if outcome.reason else ""))
    err.write("\n")
    for step in outcome.steps:
        code = "" if step.exit_code is None else f" exit {step.exit_code}"
        err.write(f"  {step.status:<9} {step.name} {step.duration:.2f}s{code}\n")
    err.flush()
