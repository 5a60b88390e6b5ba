"""run_pipeline: step order, when filters, allow_failure, timeouts."""

from __future__ import annotations

import asyncio
from pathlib import Path

from narwhal.mesh.protocol import StepOutcome
from narwhal.pipeline import Step, load
from narwhal.runner.executor import LocalExecutor, Stop
from narwhal.runner.job import Context, Outcome, branch_of, run_pipeline


class Recorder:
    def __init__(self) -> None:
        self.events: list[str] = []
        self.out = b""

    async def step_started(self, index: int, step: Step) -> None:
        self.events.append(f"start {step.name}")

    async def output(self, data: bytes) -> None:
        self.out += data

    async def step_finished(self, outcome: StepOutcome) -> None:
        self.events.append(f"{outcome.status} {outcome.name}")


def _run(
    text: str, tmp_path: Path, *, branch: str | None = "main", event: str = "push"
) -> tuple[Outcome, Recorder]:
    recorder = Recorder()
    outcome = asyncio.run(
        run_pipeline(
            load(text).pipeline(),
            workspace=tmp_path,
            executor=LocalExecutor(grace=1),
            reporter=recorder,
            stop=Stop(),
            context=Context(branch=branch, event=event, sha="0" * 40),
        )
    )
    return outcome, recorder


def test_allow_failure_keeps_going(tmp_path: Path) -> None:
    outcome, rec = _run(
        """\
steps:
  - {name: flaky, command: "exit 1", allow_failure: true}
  - {name: after, command: "echo ran"}
""",
        tmp_path,
    )
    assert outcome.status == "success"
    assert rec.events == ["start flaky", "failed flaky", "start after", "success after"]


def test_step_when_filters_by_branch_and_event(tmp_path: Path) -> None:
    text = """\
steps:
  - {name: always, command: "true"}
  - {name: release-only, command: "true", when: {branch: "release/*"}}
  - {name: pr-only, command: "true", when: {event: [pull_request]}}
"""
    outcome, rec = _run(text, tmp_path, branch="release/1.0")
    assert [s.status for s in outcome.steps] == ["success", "success", "skipped"]
    outcome, rec = _run(text, tmp_path, branch="main", event="pull_request")
    assert [s.status for s in outcome.steps] == ["success", "skipped", "success"]


def test_pipeline_when_skips_everything(tmp_path: Path) -> None:
    outcome, rec = _run(
        """\
when: {branch: [main]}
steps:
  - {name: a, command: "echo no"}
""",
        tmp_path,
        branch="feature",
    )
    assert outcome.status == "skipped"
    assert outcome.reason == "pipeline 'when' does not match (branch feature, event push)"
    assert [s.status for s in outcome.steps] == ["skipped"]
    assert rec.out == b""


def test_pipeline_timeout_spans_steps(tmp_path: Path) -> None:
    outcome, _ = _run(
        """\
timeout: 1s
steps:
  - {name: a, command: "sleep 0.6"}
  - {name: b, command: "sleep 5"}
  - {name: c, command: "true"}
""",
        tmp_path,
    )
    assert outcome.status == "timed_out"
    assert "pipeline timed out" in outcome.reason
    assert [s.status for s in outcome.steps] == ["success", "timed_out", "skipped"]


def test_context_env_reaches_steps(tmp_path: Path) -> None:
    _, rec = _run(
        """\
env: {A: "1"}
steps:
  - name: e
    env: {B: "2"}
    command: echo "$CI $NARWHAL_BRANCH $NARWHAL_EVENT $A $B"
""",
        tmp_path,
        branch="dev",
        event="tag",
    )
    assert b"true dev tag 1 2\n" in rec.out


def test_branch_of() -> None:
    assert branch_of("refs/heads/feature/x") == "feature/x"
    assert branch_of("refs/tags/v1") is None
    assert branch_of("HEAD") is None
    assert branch_of("main") == "main"
