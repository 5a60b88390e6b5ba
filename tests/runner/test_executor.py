"""The local executor: real processes, process groups, timeouts and cancel."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from narwhal.pipeline import load
from narwhal.runner.executor import LocalSession, StepResult, Stop
from tests.support.daemons import alive
from tests.support.eventually import eventually


def _step(commands: str, **extra: str) -> object:
    lines = "".join(f"    {k}: {v}\n" for k, v in extra.items())
    text = f"steps:\n  - name: s\n    commands: {commands}\n{lines}"
    return load(text).pipeline().steps[0]


def _run(
    step: object,
    workspace: Path,
    *,
    stop: Stop | None = None,
    timeout: float | None = None,
    grace: float = 2.0,
) -> tuple[StepResult, bytes]:
    out: list[bytes] = []

    async def collect(data: bytes) -> None:
        out.append(data)

    async def main() -> StepResult:
        return await LocalSession(workspace=workspace, grace=grace).run_step(
            step,
            env={"GREETING": "hi"},
            output=collect,  # type: ignore[arg-type]
            stop=stop or Stop(),
            timeout=timeout,
        )

    return asyncio.run(main()), b"".join(out)


def test_runs_commands_in_workspace_with_env(tmp_path: Path) -> None:
    (tmp_path / "f.txt").write_text("content\n")
    result, out = _run(_step('[cat f.txt, echo "$GREETING", echo err >&2]'), tmp_path)
    assert result.status == "success" and result.exit_code == 0
    assert out == b'+ cat f.txt\ncontent\n+ echo "$GREETING"\nhi\n+ echo err >&2\nerr\n'


def test_first_failing_command_stops_the_step(tmp_path: Path) -> None:
    result, out = _run(_step("[echo one, 'exit 7', echo never]"), tmp_path)
    assert result.status == "failed" and result.exit_code == 7
    assert b"never\n" not in out


def test_runner_environment_does_not_leak(tmp_path: Path) -> None:
    os.environ["NARWHAL_TEST_SECRET"] = "leak"
    try:
        _, out = _run(_step("['echo \"x${NARWHAL_TEST_SECRET}x\"']"), tmp_path)
    finally:
        del os.environ["NARWHAL_TEST_SECRET"]
    assert b"xx\n" in out


def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "bg.pid"
    step = _step(f"['sleep 300 & echo $! > {pidfile}', 'sleep 300']")
    started = time.monotonic()
    result, _ = _run(step, tmp_path, timeout=0.5)
    assert result.status == "timed_out"
    assert time.monotonic() - started < 10
    pid = int(pidfile.read_text())
    _gone(pid)


def test_sigterm_then_kill_after_grace(tmp_path: Path) -> None:
    step = _step("[\"trap '' TERM; sleep 300\"]")
    started = time.monotonic()
    result, _ = _run(step, tmp_path, timeout=0.3, grace=0.5)
    assert result.status == "timed_out"
    assert time.monotonic() - started < 5, "SIGKILL followed the grace period"


def test_stop_cancels_a_running_step(tmp_path: Path) -> None:
    stop = Stop()

    async def later() -> None:
        await asyncio.sleep(0.3)
        stop.set("cancelled", "cancelled by user")

    async def main() -> StepResult:
        task = asyncio.create_task(later())
        out: list[bytes] = []

        async def collect(data: bytes) -> None:
            out.append(data)

        result = await LocalSession(workspace=tmp_path, grace=1).run_step(
            _step("['sleep 300']"),
            env={},
            output=collect,  # type: ignore[arg-type]
            stop=stop,
            timeout=None,
        )
        await task
        return result

    result = asyncio.run(main())
    assert result.status == "cancelled" and result.reason == "cancelled by user"


def test_missing_dependency_is_an_error_naming_it(tmp_path: Path) -> None:
    result, out = _run(_step("[echo hi]", dependencies="[sh, no-such-tool-xyz]"), tmp_path)
    assert result.status == "error"
    assert "no-such-tool-xyz" in result.reason
    assert b"no-such-tool-xyz" in out


def _gone(pid: int) -> None:
    eventually(lambda: not alive(pid), timeout=5, what=f"process {pid} to end")
