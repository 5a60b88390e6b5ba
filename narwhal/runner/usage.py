"""CPU and memory of each running step, sampled while it runs and sent in USAGE frames.

A session (``executor.Session.run_step``) knows what a step's processes
are: the local executor's process group, the Docker executor's container.
Once they run it hands the step's ``Meter`` a ``Probe`` for them
(``probes``); the meter reads the probe every ``interval`` seconds and
keeps ``(seconds since the step started, CPU cores in use over the last
interval, memory bytes)``. The first sample comes after half an interval,
so a step of a second has one even when its container is gone by the end;
the session asks for one more just before it stops or removes what ran
(``Meter.last``).

A long step keeps at most ``MAX_USAGE_SAMPLES``: when that many are kept,
every other one goes and the interval doubles, so the samples stay evenly
spread over the whole step and a day-long step costs no more than a
ten-minute one. Samples go out every ``send_every`` seconds and when the
step ends, each frame carrying those taken since the one before.

Measuring must never fail or slow a step: a probe runs on a thread (reading
``/proc`` for many processes can take milliseconds), and a probe that
fails, for whatever reason, only means no sample.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from narwhal.mesh.protocol import MAX_USAGE_SAMPLES

log = logging.getLogger(__name__)

#: ``(seconds since the step started, CPU cores in use, memory bytes)``.
Sample = tuple[float, float, int]
#: Sends a step's new samples: ``(step index, samples, memory limit)``.
Send = Callable[[int, tuple[Sample, ...], int | None], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Reading:
    """What a probe saw: CPU seconds used so far and memory in use now.

    ``memory`` None: every process of the step has ended (nothing is in
    use); ``peak`` is then the most the largest of them used, if known.
    """

    cpu: float
    memory: int | None
    peak: int = 0


class Probe(Protocol):
    """Measures one step's processes. Blocking: the meter calls it on a thread."""

    def read(self) -> Reading | None:
        """The step's usage now; None (or any exception) when there is nothing to read."""
        ...


class Meter(Protocol):
    """What a session tells about a running step, to have it measured."""

    def watch(self, probe: Probe, *, memory_limit: int | None) -> None:
        """The step's processes run from now on; ``memory_limit`` in bytes, None: none."""
        ...

    async def last(self) -> None:
        """Take a last sample now: the step's processes are about to be stopped or removed."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class Sampling:
    """How a job's steps are measured, and where their samples go."""

    send: Send
    interval: float = 1.0
    send_every: float = 5.0


class Samples:
    """A step's samples, at most ``limit``: when full, every other one goes.

    Also remembers which were sent, so that each frame carries only new
    ones; a sample thinned out before it was sent is never sent.
    """

    def __init__(self, interval: float, limit: int = MAX_USAGE_SAMPLES) -> None:
        self.interval = interval
        self.kept: list[Sample] = []
        self._limit = limit
        self._sent = 0

    def add(self, sample: Sample) -> None:
        self.kept.append(sample)
        if len(self.kept) >= self._limit:
            self.kept = self.kept[::2]
            # Of the first ``sent``, those at even positions stay.
            self._sent = (self._sent + 1) // 2
            self.interval *= 2

    def unsent(self) -> tuple[Sample, ...]:
        return tuple(self.kept[self._sent :])

    def mark_sent(self, count: int) -> None:
        self._sent += count


class StepMeter:
    """Samples one step's probe on a timer and sends the samples (see the module docstring)."""

    def __init__(
        self, sampling: Sampling, index: int, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._sampling = sampling
        self._index = index
        self._clock = clock
        self._start = clock()
        self._samples = Samples(sampling.interval)
        self._probe: Probe | None = None
        self._limit: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._last_cpu = 0.0
        self._last_at = self._start
        #: The most memory a sample had, thinned out or not.
        self._most = 0
        self._failed = False

    @property
    def samples(self) -> list[Sample]:
        return list(self._samples.kept)

    def watch(self, probe: Probe, *, memory_limit: int | None) -> None:
        if self._probe is not None:
            return  # one set of processes per step
        self._probe, self._limit = probe, memory_limit
        # The step's processes are new: they have used no CPU yet.
        self._last_at = self._clock()
        self._task = asyncio.create_task(self._tick())

    async def last(self) -> None:
        await self._stop_ticking()
        probe, self._probe = self._probe, None
        if probe is not None:
            await self.sample(probe)

    def drop(self) -> None:
        """The step was cancelled: stop sampling at once; what was not sent stays unsent."""
        self._probe = None
        if self._task is not None:
            self._task.cancel()

    async def close(self) -> None:
        """The step is over: stop sampling, send what was not sent. Raises only CancelledError."""
        await self._stop_ticking()
        self._probe = None
        await self._send()

    @property
    def interval(self) -> float:
        return self._samples.interval

    async def sample(self, probe: Probe) -> None:
        """Read ``probe`` once (on a thread) and keep what it says."""
        try:
            reading = await asyncio.to_thread(probe.read)
        except Exception as e:  # a probe must never fail a step: no sample, that is all
            self._complain(e)
            return
        if reading is not None:
            self._keep(reading, self._clock())

    def _keep(self, reading: Reading, now: float) -> None:
        elapsed = now - self._last_at
        used = reading.cpu - self._last_cpu
        if self._samples.kept and elapsed < self.interval / 4:
            # A last sample just after a timed one: /proc counts CPU time in
            # clock ticks, too coarse to divide by a few milliseconds. The
            # rate before stands; the memory is what this sample adds.
            cpu = self._samples.kept[-1][1]
        else:
            # Less than before: a process whose time was counted left the
            # group unwaited for. The interval then counts as idle.
            cpu = used / elapsed if elapsed > 0 and used > 0 else 0.0
        self._last_cpu, self._last_at = reading.cpu, now
        memory = reading.memory
        if memory is None:
            memory = self._ended(reading.peak)
        self._most = max(self._most, memory)
        self._samples.add((round(now - self._start, 3), round(cpu, 3), memory))

    def _ended(self, peak: int) -> int:
        """Memory of a sample taken once all the step's processes ended.

        Their peak if no sample saw that much (it came and went between two,
        or before the first), so the step's peak is right; else what the
        sample before had, so the graph does not jump at its end.
        """
        if peak > self._most or not self._samples.kept:
            return peak
        return self._samples.kept[-1][2]

    async def _tick(self) -> None:
        await self._baseline()
        delay = self.interval / 2
        sent_at = self._clock()
        while self._probe is not None:
            await asyncio.sleep(delay)
            await self.sample(self._probe)
            if self._clock() - sent_at >= self._sampling.send_every:
                await self._send()
                sent_at = self._clock()
            delay = self.interval

    async def _baseline(self) -> None:
        """Where the step's CPU counter stands as it starts (a container's already
        holds its start-up); kept as no sample. Without it, it counts from zero."""
        if self._probe is None:
            return
        try:
            reading = await asyncio.to_thread(self._probe.read)
        except Exception as e:  # as any other read: no figure, that is all
            self._complain(e)
            return
        if reading is not None and reading.memory is not None:  # None: over already
            self._last_cpu, self._last_at = reading.cpu, self._clock()

    async def _send(self) -> None:
        new = self._samples.unsent()
        if not new:
            return
        try:
            await self._sampling.send(self._index, new, self._limit)
        except Exception as e:  # the step goes on; its graph has a gap
            self._complain(e)
            return
        self._samples.mark_sent(len(new))

    async def _stop_ticking(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            # ``wait`` leaves the task's CancelledError in it; ours propagates.
            await asyncio.wait({task})

    def _complain(self, error: Exception) -> None:
        if not self._failed:  # once per step: a probe that fails, fails every time
            self._failed = True
            log.warning("step %d: no usage sample: %s", self._index, error)


class Unmetered:
    """A meter that measures nothing: ``narwhal exec``, and runs without ``Sampling``."""

    def watch(self, probe: Probe, *, memory_limit: int | None) -> None:
        pass

    async def last(self) -> None:
        pass

    def drop(self) -> None:
        pass

    async def close(self) -> None:
        pass


#: The default of ``Session.run_step``: nothing measured (it holds no state).
UNMETERED = Unmetered()


def meter_for(sampling: Sampling | None, index: int) -> StepMeter | Unmetered:
    """The meter of step ``index``: one that measures when ``sampling`` is given."""
    return StepMeter(sampling, index) if sampling is not None else UNMETERED
