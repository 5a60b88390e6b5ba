"""Supervised loops: a crash is logged with its traceback and the loop restarted."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from narwhal.supervise import spawn, supervise
from tests.support.eventually import eventually_async


class Worker:
    """A real loop: takes items from a queue, and crashes on a poison item."""

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[str] = asyncio.Queue()
        self.done: list[str] = []
        self.starts: list[float] = []

    async def loop(self) -> None:
        self.starts.append(time.monotonic())
        while True:
            item = await self.inbox.get()
            if item == "poison":
                raise RuntimeError("poisoned")
            self.done.append(item)


def test_a_crashed_loop_is_logged_and_restarted_with_growing_backoff(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> Worker:
        worker = Worker()
        tasks: set[asyncio.Task[None]] = set()
        task = spawn(tasks, "test worker loop", worker.loop)
        for item in ("a", "poison", "b", "poison", "c"):
            worker.inbox.put_nowait(item)
        await eventually_async(lambda: worker.done == ["a", "b", "c"])
        assert not task.done() and task in tasks
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert task.cancelled() and not tasks
        return worker

    with caplog.at_level(logging.ERROR, logger="narwhal.supervise"):
        worker = asyncio.run(scenario())
    assert len(worker.starts) == 3
    first, second = (b - a for a, b in zip(worker.starts, worker.starts[1:], strict=False))
    assert 0.1 <= first < second  # 0.1 s, then 0.2 s
    crashes = [r for r in caplog.records if "test worker loop crashed" in r.getMessage()]
    assert len(crashes) == 2
    assert all(r.exc_info and "poisoned" in str(r.exc_info[1]) for r in crashes)
    assert "Traceback" in caplog.text and "RuntimeError: poisoned" in caplog.text


def test_cancellation_propagates_while_running_and_while_backing_off() -> None:
    async def scenario() -> None:
        worker = Worker()
        running = asyncio.create_task(supervise("w", worker.loop))
        await eventually_async(lambda: worker.starts)
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        backing_off = asyncio.create_task(supervise("w", worker.loop, backoff=60))
        worker.inbox.put_nowait("poison")
        await eventually_async(lambda: len(worker.starts) == 2 and worker.inbox.empty())
        await asyncio.sleep(0.05)
        backing_off.cancel()
        with pytest.raises(asyncio.CancelledError):
            await backing_off
        assert len(worker.starts) == 2

    asyncio.run(scenario())


def test_a_loop_that_returns_is_done() -> None:
    calls: list[int] = []

    async def once() -> None:
        calls.append(1)

    asyncio.run(supervise("once", once))
    assert calls == [1]
