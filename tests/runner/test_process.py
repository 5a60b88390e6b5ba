"""Child processes of the job path: pipes, exit status, kill, and the no-pidfd fallback."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from narwhal.runner import process


@pytest.fixture(params=["pidfd", "thread"])
def waits(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Every test runs twice: exits seen on a pidfd, and waited for by a thread."""
    if request.param == "thread":
        monkeypatch.setattr(process, "_pidfd", lambda pid: None)
    yield request.param


def _sh(script: str, tmp_path: Path, **sinks: process.Sink) -> process.Child:
    return process.start(
        ["sh", "-c", script],
        cwd=tmp_path,
        env={"PATH": os.environ["PATH"]},
        stdout=sinks.get("stdout", "pipe"),
        stderr=sinks.get("stderr", "pipe"),
    )


def _fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_reads_stdout_until_it_ends_and_the_exit_status(tmp_path: Path, waits: str) -> None:
    async def main() -> tuple[bytes, int]:
        child = _sh("echo one; echo two >&2; exit 3", tmp_path, stderr="stdout")
        out = b""
        while chunk := await child.read(4):
            assert len(chunk) <= 4
            out += chunk
        code = await child.wait()
        child.close()
        return out, code

    assert asyncio.run(main()) == (b"one\ntwo\n", 3)


def test_communicate_reads_both_pipes_at_once(tmp_path: Path, waits: str) -> None:
    # More than a pipe holds on each: reading one after the other would hang.
    script = "head -c 300000 /dev/zero; head -c 200000 /dev/zero >&2"

    async def main() -> tuple[int, int, int | None]:
        child = _sh(script, tmp_path)
        out, err = await child.communicate()
        child.close()
        return len(out), len(err), child.returncode

    assert asyncio.run(main()) == (300000, 200000, 0)


def test_one_pipe_or_none(tmp_path: Path, waits: str) -> None:
    async def main() -> tuple[tuple[bytes, bytes], tuple[bytes, bytes]]:
        only_err = _sh("echo gone; echo kept >&2", tmp_path, stdout="devnull")
        nothing = _sh("echo gone; echo gone >&2", tmp_path, stdout="devnull", stderr="devnull")
        results = await only_err.communicate(), await nothing.communicate()
        only_err.close()
        nothing.close()
        return results

    assert asyncio.run(main()) == ((b"", b"kept\n"), (b"", b""))


def test_a_killed_process_reports_the_signal(tmp_path: Path, waits: str) -> None:
    async def main() -> int:
        child = _sh("sleep 30", tmp_path)
        child.kill()
        code = await child.wait()
        child.close()
        return code

    assert asyncio.run(main()) == -signal.SIGKILL


def test_close_kills_a_running_process_and_still_reaps_it(tmp_path: Path, waits: str) -> None:
    async def main() -> tuple[int, int]:
        child = _sh("sleep 30", tmp_path)
        child.close()
        return child.pid, await asyncio.wait_for(child.wait(), 10)

    pid, code = asyncio.run(main())
    assert code == -signal.SIGKILL
    assert not Path(f"/proc/{pid}").exists()  # reaped, not a zombie


def test_a_cancelled_wait_leaves_the_process_alone(tmp_path: Path, waits: str) -> None:
    async def main() -> int:
        child = _sh("sleep 0.2; exit 4", tmp_path)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(child.wait(), 0.01)
        code = await child.wait()
        child.close()
        return code

    assert asyncio.run(main()) == 4


def test_a_read_cancelled_after_close_spares_a_reused_pipe(tmp_path: Path, waits: str) -> None:
    async def main() -> bytes:
        first = _sh("sleep 30", tmp_path)
        pending = asyncio.create_task(first.read(100))
        await asyncio.sleep(0.05)  # the read waits on the loop for its pipe
        first.close()
        # The next pipe takes the numbers just freed and waits on the loop
        # before the stale read's clean-up runs, which must not unregister it.
        second = _sh("sleep 0.2; echo second", tmp_path)
        reading = asyncio.create_task(second.read(100))
        await asyncio.sleep(0.05)
        pending.cancel()
        await asyncio.gather(pending, return_exceptions=True)
        data = await asyncio.wait_for(reading, 10)
        await first.wait()
        await second.wait()
        second.close()
        return data

    assert asyncio.run(main()) == b"second\n"


def test_a_missing_program_raises_and_leaks_no_descriptor(tmp_path: Path, waits: str) -> None:
    async def main() -> None:
        with pytest.raises(FileNotFoundError):
            process.start(
                ["/nonexistent/program"], cwd=tmp_path, env={}, stdout="pipe", stderr="pipe"
            )

    before = _fds()
    asyncio.run(main())
    assert _fds() <= before


def test_no_descriptor_is_left_behind(tmp_path: Path, waits: str) -> None:
    async def main() -> None:
        for _ in range(20):
            child = _sh("echo x", tmp_path)
            await child.communicate()
            child.close()

    asyncio.run(main())  # a first loop opens its own descriptors (selector, self-pipe)
    before = _fds()
    asyncio.run(main())
    assert _fds() <= before
