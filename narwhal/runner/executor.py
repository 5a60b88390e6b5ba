"""Executors run one step of a pipeline and report how it ended.

``Executor`` and ``Session`` are the seam between running a job
(``job.run_pipeline``) and where its steps run: the local executor here,
the Docker one in ``docker``, wrappers like ``secret_env.SecretsExecutor``. These
protocols are one of the parts that work well: a new place to run steps
implements the two, and nothing that runs jobs changes.

``LocalExecutor`` runs the step's commands with ``sh -e`` in the job's
workspace, in a process group of its own, so that a timeout or a cancel can
stop everything the step started (SIGTERM, a grace period, then SIGKILL).

A session also tells the step's ``usage`` meter what to measure once the
step's processes run (``usage.Meter``): here the process group.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from narwhal.errors import ExecutorError
from narwhal.mesh.protocol import MAX_LOG_CHUNK
from narwhal.pipeline import Pipeline, Step
from narwhal.runner import process
from narwhal.runner.probes import GroupProbe
from narwhal.runner.usage import UNMETERED, Meter

Output = Callable[[bytes], Awaitable[None]]

#: Environment variables a local step inherits from the runner: where the
#: tools are, the locale and who the user is. Everything else comes from the
#: pipeline, so runner secrets and settings never reach a step; HOME and
#: TMPDIR are folders of the job's own.
_INHERITED = ("PATH", "LANG", "LC_ALL", "TZ", "USER", "LOGNAME")


class Stop:
    """Asks a running job to stop, and says why (``cancelled``, ``timed_out``).

    ``hurry`` also asks for it at once: steps get SIGKILL without waiting out
    their grace (a second Ctrl-C of ``narwhal up``).
    """

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self._urgent = asyncio.Event()
        self.status = ""
        self.reason = ""

    def set(self, status: str, reason: str) -> None:
        if not self._event.is_set():
            self.status, self.reason = status, reason
            self._event.set()

    def hurry(self, status: str, reason: str) -> None:
        self.set(status, reason)
        self._urgent.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    async def wait(self) -> None:
        await self._event.wait()

    async def within_grace(self, ended: asyncio.Future[Any], grace: float) -> bool:
        """Wait up to ``grace`` seconds for ``ended``, less once hurried; True if it ended."""
        if not self._urgent.is_set():
            hurried = asyncio.ensure_future(self._urgent.wait())
            try:
                await asyncio.wait({ended, hurried}, timeout=grace, return_when="FIRST_COMPLETED")
            finally:
                hurried.cancel()
        return ended.done()


@dataclass(frozen=True, slots=True, kw_only=True)
class StepResult:
    """How one step ended: a status from ``protocol.STEP_STATUSES``."""

    status: str
    exit_code: int | None
    duration: float
    reason: str = ""
    #: For an ``error``: ``engine`` when the executor failed, "" when the step
    #: itself could not be made to run (``job.fault_of``).
    fault: str = ""


class NotRunnable(ExecutorError):
    """What narwhal.yml asks cannot run: an image that does not exist or cannot
    be pulled, commands too long for the engine. The job's own making: the
    executor works (DONE's ``fault`` stays empty)."""


class Session(Protocol):
    """Runs the steps of one job, in order, sharing one workspace.

    ``usage`` is told what to measure once the step's processes run, and
    asked for a last sample before they are stopped or removed.
    """

    async def run_step(
        self,
        step: Step,
        *,
        env: Mapping[str, str],
        output: Output,
        stop: Stop,
        timeout: float | None,
        usage: Meter = UNMETERED,
    ) -> StepResult: ...


class Executor(Protocol):
    """Makes sessions; one instance serves every job of a runner.

    ``session`` sets up what a job needs around its steps (for containers:
    networks, volumes, service containers) and removes all of it on exit,
    also when the job failed or was cancelled. A problem setting up raises
    ``ExecutorError``; the job then ends in ``error`` with that message.
    """

    def session(
        self, *, job: str, workspace: Path, pipeline: Pipeline, output: Output
    ) -> AbstractAsyncContextManager[Session]: ...

    def reap(self, work_dir: Path) -> int:
        """Remove what jobs of an earlier life of this runner left behind.

        Called (off the event loop) when a runner starts, before it takes
        jobs; returns how many leftovers it removed.
        """
        ...


#: The first lines of a local step: wait until the runner has recorded the
#: step's process group (it writes a line on stdin), then take stdin from
#: /dev/null as before. A runner killed before the record is written closes
#: the pipe unwritten and the step ends here, before its first command: no
#: step ever runs that the next runner's ``reap`` could not find.
_GATE = "IFS= read -r _ || exit 125\nexec </dev/null\n"


def step_script(step: Step) -> str:
    """The shell script for a step: each command echoed, then run."""
    lines = []
    for command in step.commands:
        lines.append(f"printf '%s\\n' {shlex.quote('+ ' + command)}")
        lines.append(command)
    return "\n".join(lines) + "\n"


class LocalExecutor:
    """Runs steps as local processes (``sh -e``), no isolation beyond the workspace."""

    def __init__(self, *, grace: float = 10.0) -> None:
        self._grace = grace

    @asynccontextmanager
    async def session(
        self, *, job: str, workspace: Path, pipeline: Pipeline, output: Output
    ) -> AsyncIterator[LocalSession]:
        # Next to the workspace, not in it: steps' `git status` stays clean.
        home, tmp = (workspace.with_name(f"{workspace.name}.{kind}") for kind in ("home", "tmp"))
        try:
            for folder in (home, tmp):
                await asyncio.to_thread(folder.mkdir, mode=0o700)
            env = {k: os.environ[k] for k in _INHERITED if k in os.environ}
            env.update(HOME=str(home), TMPDIR=str(tmp))
            yield LocalSession(workspace=workspace, grace=self._grace, base_env=env)
        finally:
            for folder in (home, tmp):
                await asyncio.to_thread(shutil.rmtree, folder, True)

    def reap(self, work_dir: Path) -> int:
        """Kill step process groups a killed runner left running; remove workspaces.

        Each running step is recorded in ``<workspace>.pgid``. A group is only
        killed when its leader still runs inside that workspace, so a reused
        process id never takes an unrelated process down.
        """
        killed = 0
        for record in work_dir.glob("*.pgid"):
            workspace = record.with_suffix("")
            killed += _kill_leftover(record, workspace)
            record.unlink(missing_ok=True)
        for leftover in work_dir.glob("job-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        return killed


class LocalSession:
    """One job's steps as local processes in its workspace."""

    def __init__(
        self, *, workspace: Path, grace: float, base_env: Mapping[str, str] | None = None
    ) -> None:
        self._workspace = workspace
        self._grace = grace
        if base_env is None:
            base_env = {k: os.environ[k] for k in _INHERITED if k in os.environ}
        self._base_env = dict(base_env)

    async def run_step(
        self,
        step: Step,
        *,
        env: Mapping[str, str],
        output: Output,
        stop: Stop,
        timeout: float | None,
        usage: Meter = UNMETERED,
    ) -> StepResult:
        started = time.monotonic()
        full_env = self._base_env | dict(env)
        missing = [
            d for d in step.dependencies if shutil.which(d, path=full_env.get("PATH")) is None
        ]
        if missing:
            await output(f"dependency {missing[0]!r} not found on PATH\n".encode())
            return StepResult(
                status="error",
                exit_code=None,
                duration=time.monotonic() - started,
                reason=f"step {step.name!r}: dependency {missing[0]!r} not found on PATH",
            )
        gate, opener = os.pipe()
        try:
            child = process.start(
                ["sh", "-e", "-c", _GATE + step_script(step)],
                cwd=self._workspace,
                env=full_env,
                stdout="pipe",
                stderr="stdout",
                new_session=True,
                stdin=gate,
            )
        except (OSError, ValueError) as e:  # ValueError: a NUL byte in the env or script
            os.close(opener)
            raise ExecutorError(f"cannot start step {step.name!r}: {e}") from e
        finally:
            os.close(gate)
        pump = asyncio.create_task(_pump(child, output))
        usage.watch(GroupProbe(child.pid, leader=lambda: child.rusage), memory_limit=None)
        record = self._workspace.with_name(self._workspace.name + ".pgid")
        try:
            try:
                await asyncio.to_thread(record.write_text, str(child.pid))
                with suppress(BrokenPipeError):  # the step died already (killed from outside)
                    os.write(opener, b"\n")  # recorded: the step may start
            finally:
                os.close(opener)  # unopened (we failed, or were killed): the step exits
            ended = await _wait(child, stop, timeout)
            await usage.last()
            if ended != "exited":
                await self._terminate(child, stop)
            # Whatever the step left running in the background goes with it.
            _killpg(child.pid, signal.SIGKILL)
            await pump
        finally:
            if not pump.done():
                pump.cancel()  # its pipe closes below; close() keeps that safe
            if child.returncode is None:
                _killpg(child.pid, signal.SIGKILL)
                await child.wait()
            child.close()
            await asyncio.to_thread(record.unlink, True)
        duration = time.monotonic() - started
        return _result(ended, child.returncode, duration, stop, timeout)

    async def _terminate(self, child: process.Child, stop: Stop) -> None:
        _killpg(child.pid, signal.SIGTERM)
        if not await stop.within_grace(child.exit_future(), self._grace):
            _killpg(child.pid, signal.SIGKILL)
            await child.wait()


def _result(
    ended: str, code: int | None, duration: float, stop: Stop, timeout: float | None
) -> StepResult:
    if ended == "stopped":
        return StepResult(status=stop.status, exit_code=code, duration=duration, reason=stop.reason)
    if ended == "timed_out":
        reason = f"step timed out after {timeout:.0f}s" if timeout else "timed out"
        return StepResult(status="timed_out", exit_code=code, duration=duration, reason=reason)
    status = "success" if code == 0 else "failed"
    return StepResult(status=status, exit_code=code, duration=duration)


async def _wait(child: process.Child, stop: Stop, timeout: float | None) -> str:
    """Wait for the process, a stop request or the timeout: whichever comes first."""
    exited = child.exit_future()
    stopped = asyncio.create_task(stop.wait())
    either: set[asyncio.Future[Any]] = {exited, stopped}
    try:
        done, _ = await asyncio.wait(either, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    if exited in done:
        return "exited"
    return "stopped" if stopped in done else "timed_out"


async def _pump(child: process.Child, output: Output) -> None:
    while chunk := await child.read(MAX_LOG_CHUNK):
        await output(chunk)


def _kill_leftover(record: Path, workspace: Path) -> int:
    try:
        pgid = int(record.read_text())
        cwd = os.readlink(f"/proc/{pgid}/cwd").removesuffix(" (deleted)")
    except (OSError, ValueError):
        return 0
    if not Path(cwd).is_relative_to(workspace):
        return 0
    _killpg(pgid, signal.SIGKILL)
    return 1


def _killpg(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
