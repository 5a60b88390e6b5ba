"""Who waits for a job to change: log followers of the REST API."""

from __future__ import annotations

import asyncio


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
