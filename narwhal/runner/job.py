"""Run one pipeline, step by step, with one executor.

Shared by the runner daemon and ``narwhal exec``: both hand in a ``Reporter``
that receives step boundaries and output, the daemon sending them as frames,
``exec`` printing them. The daemon also hands in ``Sampling``: each step's
CPU and memory are measured while it runs (``usage``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from narwhal.errors import ExecutorError
from narwhal.mesh.protocol import StepOutcome
from narwhal.pipeline import Pipeline, Step
from narwhal.runner.executor import Executor, NotRunnable, Session, StepResult, Stop
from narwhal.runner.usage import Sampling, meter_for


class Reporter(Protocol):
    """Receives what a running pipeline does, in order."""

    async def step_started(self, index: int, step: Step) -> None: ...

    async def output(self, data: bytes) -> None: ...

    async def step_finished(self, outcome: StepOutcome) -> None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class Context:
    """What the pipeline's ``when`` filters and the steps' environment see."""

    branch: str | None
    event: str
    sha: str
    job_id: int | None = None
    attempt: int | None = None

    def env(self) -> dict[str, str]:
        env = {"CI": "true", "NARWHAL": "true", "NARWHAL_COMMIT_SHA": self.sha}
        env["NARWHAL_EVENT"] = self.event
        if self.branch is not None:
            env["NARWHAL_BRANCH"] = self.branch
        if self.job_id is not None:
            env["NARWHAL_JOB_ID"] = str(self.job_id)
        if self.attempt is not None:
            env["NARWHAL_JOB_ATTEMPT"] = str(self.attempt)
        return env


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """How the whole pipeline ended."""

    status: str
    reason: str
    steps: tuple[StepOutcome, ...]
    #: For an ``error``: the runner's side that failed (``checkout``, ``engine``,
    #: ``runner``), "" when it is the job's own making (DONE's ``fault``).
    fault: str = ""


def fault_of(error: ExecutorError) -> str:
    """Whose an executor's failure is: the engine's, or the job's own.

    A step image that does not exist (or cannot be pulled), or commands no
    engine takes, is the job's mistake: every runner would fail it alike,
    so it says nothing of this runner's health (``NotRunnable``).
    """
    return "" if isinstance(error, NotRunnable) else "engine"


def branch_of(ref: str) -> str | None:
    """The branch name of a ref (``refs/heads/x`` -> ``x``), or None for tags etc."""
    prefix = "refs/heads/"
    if ref.startswith(prefix):
        return ref[len(prefix) :]
    return None if ref.startswith("refs/") or ref == "HEAD" else ref


async def run_pipeline(
    pipeline: Pipeline,
    *,
    workspace: Path,
    executor: Executor,
    reporter: Reporter,
    stop: Stop,
    context: Context,
    default_timeout: float | None = None,
    sampling: Sampling | None = None,
) -> Outcome:
    """Run the steps in order; the first failure skips the rest."""
    if not pipeline.when.matches(branch=context.branch, event=context.event):
        skipped = [_skipped(i, s) for i, s in enumerate(pipeline.steps)]
        for outcome in skipped:
            await reporter.step_finished(outcome)
        where = f"branch {context.branch}" if context.branch else "no branch"
        return Outcome(
            status="skipped",
            reason=f"pipeline 'when' does not match ({where}, event {context.event})",
            steps=tuple(skipped),
        )
    # Tracks whether the output ends mid-line, for the closing line of a stopped step.
    tail = _Tail(reporter)
    budget = pipeline.timeout or default_timeout
    deadline = time.monotonic() + budget if budget else None
    status, reason, fault = "success", "", ""
    outcomes: list[StepOutcome] = []
    name = f"job-{context.job_id}" if context.job_id is not None else "exec"
    try:
        async with executor.session(
            job=name, workspace=workspace, pipeline=pipeline, output=tail.output
        ) as session:
            for index, step in enumerate(pipeline.steps):
                if status != "success" or not step.when.matches(
                    branch=context.branch, event=context.event
                ):
                    outcome = _skipped(index, step)
                else:
                    outcome, result = await _run_step(
                        index, step, pipeline, session, tail, stop, context, deadline, sampling
                    )
                    status, reason = _fold(status, step, result, budget)
                    if status == "error" and not fault:
                        fault = result.fault
                    if result.status in _STOPPED:
                        await tail.line(_closing(step, result))
                outcomes.append(outcome)
                await tail.step_finished(outcome)
    except ExecutorError as e:
        await tail.output(f"{e}\n".encode())
        rest = [_skipped(i, s) for i, s in enumerate(pipeline.steps) if i >= len(outcomes)]
        for outcome in rest:
            await tail.step_finished(outcome)
        steps = (*outcomes, *rest)
        return Outcome(status="error", reason=str(e), steps=steps, fault=fault or fault_of(e))
    return Outcome(status=status, reason=reason, steps=tuple(outcomes), fault=fault)


async def _run_step(
    index: int,
    step: Step,
    pipeline: Pipeline,
    session: Session,
    reporter: Reporter,
    stop: Stop,
    context: Context,
    deadline: float | None,
    sampling: Sampling | None,
) -> tuple[StepOutcome, StepResult]:
    await reporter.step_started(index, step)
    await reporter.output(f"--- step {index + 1}/{len(pipeline.steps)}: {step.name}\n".encode())
    timeout = _step_timeout(step, deadline)
    if stop.is_set():
        result = StepResult(status=stop.status, exit_code=None, duration=0.0, reason=stop.reason)
    elif timeout is not None and timeout <= 0:
        result = StepResult(
            status="timed_out", exit_code=None, duration=0.0, reason="pipeline timed out"
        )
    else:
        # The combination's values are variables of every step too, as users
        # of other CIs' matrices expect; ``env`` may still override them.
        env: Mapping[str, str] = context.env() | dict(pipeline.variant) | dict(step.env)
        meter = meter_for(sampling, index)
        try:
            result = await session.run_step(
                step, env=env, output=reporter.output, stop=stop, timeout=timeout, usage=meter
            )
        except ExecutorError as e:
            await reporter.output(f"{e}\n".encode())
            result = StepResult(
                status="error", exit_code=None, duration=0.0, reason=str(e), fault=fault_of(e)
            )
        except BaseException:
            meter.drop()  # cancelled (or a bug): nothing more is sent, nothing waits
            raise
        await meter.close()  # its last samples go before the step's end
    outcome = StepOutcome(
        index=index,
        name=step.name,
        status=result.status,
        exit_code=result.exit_code,
        duration=result.duration,
    )
    return outcome, result


#: Step ends that cut its output off, maybe mid-line: the log says so.
_STOPPED = frozenset({"cancelled", "timed_out"})


def _closing(step: Step, result: StepResult) -> str:
    """The log's last line for a stopped step: ``--- cancelled after 12.3s in step 'x': why``."""
    what = result.status.replace("_", " ")
    why = f": {result.reason}" if result.reason else ""
    return f"--- {what} after {result.duration:.1f}s in step {step.name!r}{why}"


class _Tail:
    """A ``Reporter`` that remembers whether the output so far ends mid-line."""

    def __init__(self, reporter: Reporter) -> None:
        self._reporter = reporter
        self._mid_line = False

    async def step_started(self, index: int, step: Step) -> None:
        await self._reporter.step_started(index, step)

    async def output(self, data: bytes) -> None:
        if data:
            self._mid_line = not data.endswith(b"\n")
        await self._reporter.output(data)

    async def line(self, text: str) -> None:
        """``text`` as a line of its own, also after output cut off mid-line."""
        await self.output(f"{chr(10) if self._mid_line else ''}{text}\n".encode())

    async def step_finished(self, outcome: StepOutcome) -> None:
        await self._reporter.step_finished(outcome)


def _step_timeout(step: Step, deadline: float | None) -> float | None:
    left = deadline - time.monotonic() if deadline is not None else None
    if step.timeout is None:
        return left
    return step.timeout if left is None else min(step.timeout, left)


def _fold(status: str, step: Step, result: StepResult, budget: float | None) -> tuple[str, str]:
    """The pipeline's status after this step."""
    if result.status == "success":
        return status, ""
    if result.status == "failed":
        if step.allow_failure:
            return status, ""
        why = f": {result.reason}" if result.reason else ""
        return "failed", f"step {step.name!r} failed with exit code {result.exit_code}{why}"
    if result.status == "timed_out" and step.timeout is None and budget:
        return "timed_out", f"pipeline timed out after {budget:.0f}s in step {step.name!r}"
    return result.status, result.reason or f"step {step.name!r}: {result.status}"


def _skipped(index: int, step: Step) -> StepOutcome:
    return StepOutcome(index=index, name=step.name, status="skipped", exit_code=None, duration=0.0)
