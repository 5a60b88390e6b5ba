"""Who waits for a job to change: log followers of the REST API.

A consumer of the dispatcher's ``Feed``: any event about a job (its state,
its row, a step, a log chunk) wakes whoever watches that job.
"""

from __future__ import annotations

import asyncio

from narwhal.dispatcher.feed import Event, JobChanged


class Watchers:
    """Events set whenever a job's row, steps or log changed."""

    def __init__(self) -> None:
        self._events: dict[int, set[asyncio.Event]] = {}

    def watch(self, job_id: int) -> asyncio.Event:
        event = asyncio.Event()
        self._events.setdefault(job_id, set()).add(event)
        return event

    def unwatch(self, job_id: int, event: asyncio.Event) -> None:
        events = self._events.get(job_id)
        if events is not None:
            events.discard(event)
            if not events:
                del self._events[job_id]

    def notify(self, job_id: int) -> None:
        for event in self._events.get(job_id, ()):
            event.set()

    def notify_all(self) -> None:
        """Wake every watcher (a standby's, which hears of no change: it polls)."""
        for events in self._events.values():
            for event in events:
                event.set()

    def on_event(self, event: Event) -> None:
        """The ``Feed`` consumer."""
        if not self._events:
            return
        if isinstance(event, JobChanged):
            self.notify(event.job.id)
        else:
            job_id = getattr(event, "job_id", None)
            if job_id is not None:
                self.notify(job_id)
