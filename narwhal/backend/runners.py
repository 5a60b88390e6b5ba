"""Each runner's load over the last hour, from the feed's runner updates.

The feed says what a runner's load is when it changes, not at a steady
pace; the runner page draws it as a series of ``[t, busy, capacity]`` every
``STEP`` seconds for the last ``SPAN`` seconds. Each step keeps the most
slots that were busy during it (a job of two seconds still shows), and a
step with no update repeats the one before: nothing changed then. Memory is
bounded: ``SPAN / STEP`` steps per runner, and at most ``MAX_RUNNERS``
runners (those heard of longest ago go first).
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable

#: Seconds a step covers, and how far back the series goes.
STEP = 10
SPAN = 3600
MAX_RUNNERS = 1000


class _Series:
    """One runner's steps: ``[step start, busiest, capacity]``, oldest first."""

    def __init__(self) -> None:
        self.steps: deque[list[int]] = deque(maxlen=SPAN // STEP)
        #: The load now, which the next steps repeat until it changes.
        self.busy = 0
        self.capacity = 0

    def record(self, start: int, busy: int, capacity: int) -> None:
        self._fill(start)
        self.busy, self.capacity = busy, capacity
        last = self.steps[-1] if self.steps else None
        if last is not None and last[0] == start:
            last[1], last[2] = max(last[1], busy), capacity
        else:
            self.steps.append([start, busy, capacity])

    def _fill(self, start: int) -> None:
        """Steps since the last update, each at the load then (a gap of more than SPAN: none)."""
        if not self.steps:
            return
        step = max(self.steps[-1][0] + STEP, start - SPAN)
        while step < start:
            self.steps.append([step, self.busy, self.capacity])
            step += STEP

    def series(self, now_step: int) -> list[list[int]]:
        self._fill(now_step + STEP)
        return [list(step) for step in self.steps if step[0] > now_step - SPAN]


class RunnerHistory:
    """Runner id -> its load series."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._series: OrderedDict[str, _Series] = OrderedDict()

    def record(self, runner_id: str, busy: int, capacity: int) -> None:
        series = self._series.get(runner_id)
        if series is None:
            series = self._series[runner_id] = _Series()
            while len(self._series) > MAX_RUNNERS:
                self._series.popitem(last=False)
        self._series.move_to_end(runner_id)
        series.record(self._step(), max(0, busy), max(0, capacity))

    def series(self, runner_id: str) -> list[list[int]]:
        """``[[t, busy, capacity], ...]`` for the last hour, oldest first ([] if unknown)."""
        series = self._series.get(runner_id)
        return [] if series is None else series.series(self._step())

    def _step(self) -> int:
        now = int(self._clock())
        return now - now % STEP
