"""The dispatcher's one event stream: everything that happens, typed, in commit order.

Every part that wants to know what happened subscribes here instead of
hooking into the job table or the mesh: the commit status reporter, the
REST API's log followers (``watchers``), the Prometheus metrics
(``metrics``) and the metrics publisher for the backend (``publisher``).

Events are published after the store committed what they say (a job's new
state, a step's end, a log chunk), on the event loop, synchronously: a
consumer must not block, and hands slow work to a task or queue of its own.
A consumer that raises is logged and the others still hear the event, so a
broken consumer never stops dispatching.

Runner events come from the mesh's callbacks (joined, left) and from the
dispatcher's gauges (``gauges``, about twice a second), which report runners
whose load changed and the queue's depth, so a burst of thousands of slot
changes a second costs one comparison per runner per look, not one event each.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from narwhal.dispatcher.records import JobRecord

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class JobChanged:
    """A job was created (``before`` None) or moved from state ``before``."""

    job: JobRecord
    before: str | None


@dataclass(frozen=True, slots=True)
class JobUpdated:
    """A job's row changed without a state change: its checkout, the reason it
    waits, a cancel asked for. ``job`` is the record as memory holds it now
    (None when the job is not queued or active, e.g. read back from the store)."""

    job_id: int
    job: JobRecord | None


@dataclass(frozen=True, slots=True)
class StepChanged:
    """A step started (``status`` "running", no exit code yet) or finished."""

    job_id: int
    attempt: int
    index: int
    name: str
    status: str
    exit_code: int | None
    duration: float | None
    at: float


@dataclass(frozen=True, slots=True)
class LogAppended:
    """A log chunk of ``size`` bytes was stored (the text is read from the store)."""

    job_id: int
    attempt: int
    seq: int
    size: int


@dataclass(frozen=True, slots=True)
class UsageSampled:
    """CPU and memory samples of one running step, as its runner measured them.

    ``samples``: ``(seconds since the step started, CPU cores in use, memory
    bytes)``; ``memory_limit``: the step's limit in bytes (None: none).
    """

    job_id: int
    attempt: int
    index: int
    samples: tuple[tuple[float, float, int], ...]
    memory_limit: int | None


@dataclass(frozen=True, slots=True)
class RunnerChanged:
    """A runner joined (READY), or its load (free slots, jobs) changed.

    ``runner`` is its API view (``links.runner_json``).
    """

    runner: dict[str, Any]
    joined: bool


@dataclass(frozen=True, slots=True)
class RunnerLeft:
    """A runner was lost or dropped; ``runner`` is its last API view."""

    runner: dict[str, Any]
    reason: str


@dataclass(frozen=True, slots=True)
class QueueDepth:
    """The queue changed: how many jobs wait, how many run, and the oldest waiting."""

    queued: int
    active: int
    oldest: JobRecord | None


Event = (
    JobChanged
    | JobUpdated
    | StepChanged
    | LogAppended
    | UsageSampled
    | RunnerChanged
    | RunnerLeft
    | QueueDepth
)
Consumer = Callable[[Event], None]


def on_jobs(callback: Callable[[JobRecord], None]) -> Consumer:
    """A consumer that hands ``callback`` each job created or moved, and nothing else."""

    def consume(event: Event) -> None:
        if type(event) is JobChanged:
            callback(event.job)

    return consume


class Feed:
    """Publishes events to the consumers subscribed, in subscription order."""

    def __init__(self) -> None:
        self._consumers: list[Consumer] = []

    def subscribe(self, consumer: Consumer) -> Callable[[], None]:
        """Hear every event from now on; returns the call that stops it."""
        self._consumers.append(consumer)

        def unsubscribe() -> None:
            if consumer in self._consumers:
                self._consumers.remove(consumer)

        return unsubscribe

    def publish(self, event: Event) -> None:
        for consumer in self._consumers:
            try:
                consumer(event)
            except Exception:  # one broken consumer must not stop dispatching
                log.exception("feed consumer %r failed on %s", consumer, type(event).__name__)

    def __bool__(self) -> bool:
        """Whether anyone listens: a source skips building events nobody hears."""
        return bool(self._consumers)
