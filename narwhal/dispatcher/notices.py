"""What standby dispatchers announce, carried out by the leader (PostgreSQL only).

A standby writes a submission (a queued job) or a cancel request
(``cancel_requested``) to the shared database, then announces the job's id
(``notice``) with NOTIFY. The leader hears it on its lock session
(``Leadership.listen``) and hands it to ``Dispatcher.adopt``: a queued job
it does not hold joins its queue; a cancel is carried out, its runner told.

A notification can be lost (a standby killed between its write and its
NOTIFY, none sent while no one led), so the leader also sweeps the store:
once when it takes the lead, for whatever was written while nobody led
(every cancel request found then is carried out), and every
``SWEEP_INTERVAL`` after that. Acting twice on a job is harmless: adopt
reads the row back and compares it with what memory holds, and the store
fences every move, so a stale view never runs a job twice.

A payload is untrusted text from the database: anything but ``job <id>``
is logged and dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re

from narwhal.dispatcher.core import Conflict, Dispatcher
from narwhal.dispatcher.leadership import Leadership
from narwhal.dispatcher.records import ACTIVE, JobState
from narwhal.dispatcher.store.base import JobQuery
from narwhal.errors import NotFound, StoreError

log = logging.getLogger(__name__)

#: Seconds between two sweeps of the store for what no notification said.
SWEEP_INTERVAL = 30.0
_NOTICE = re.compile(r"job ([1-9][0-9]{0,17})")


def notice(job_id: int) -> str:
    """What a standby announces of a job it wrote."""
    return f"job {job_id}"


def job_of(payload: str) -> int | None:
    """The job id of a ``notice``, or None for anything else."""
    matched = _NOTICE.fullmatch(payload)
    return int(matched.group(1)) if matched else None


class Notices:
    """The leader's side: hear the standbys' notices, sweep the store, adopt."""

    def __init__(self, dispatcher: Dispatcher, leadership: Leadership) -> None:
        self._dispatcher = dispatcher
        self._leadership = leadership
        self._heard: set[int] = set()
        self._ready = asyncio.Event()
        self._refused = 0

    async def start(self) -> None:
        """Listen (``StoreError`` if the lock session fails), then run supervised."""
        await self._leadership.listen(self._on_notice)
        self._dispatcher.spawn("dispatcher notices loop", self._loop)

    def _on_notice(self, payload: str) -> None:
        job_id = job_of(payload)
        if job_id is None:
            self._refused += 1
            if self._refused <= 10:
                log.warning("leader: ignored a notice that is not 'job <id>': %.60r", payload)
            return
        self._heard.add(job_id)
        self._ready.set()

    async def _loop(self) -> None:
        await self.sweep(first=True)  # listening already: nothing falls in between
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SWEEP_INTERVAL):
                    await self._ready.wait()
            if not self._ready.is_set():
                await self.sweep()
                continue
            self._ready.clear()
            heard, self._heard = sorted(self._heard), set()
            for job_id in heard:
                await self._adopt(job_id)

    async def sweep(self, *, first: bool = False) -> None:
        """Adopt the live jobs memory is behind on: queued ones it lacks, cancels not made.

        ``first``: just took the lead; every cancel request found is carried
        out (memory was loaded from the store, so it cannot tell which are new).
        """
        dispatcher = self._dispatcher
        live = (JobState.QUEUED, *ACTIVE)
        try:
            jobs = await dispatcher.store.list_jobs(JobQuery(states=live, limit=None))
        except StoreError as e:
            log.warning("leader: cannot sweep the store for standbys' jobs: %s", e)
            return
        for job in jobs:
            held = dispatcher.jobs.get(job.id)
            if job.cancel_requested and first:
                await self._cancel(job.id)
            elif (held is None and job.state == JobState.QUEUED) or (
                job.cancel_requested and held is not None and not held.cancel_requested
            ):
                await self._adopt(job.id)

    async def _cancel(self, job_id: int) -> None:
        try:
            with contextlib.suppress(Conflict, NotFound):  # ended meanwhile
                await self._dispatcher.cancel(job_id)
        except StoreError as e:  # the next sweep finds it again
            log.warning("job %d: cannot cancel it as a standby asked: %s", job_id, e)

    async def _adopt(self, job_id: int) -> None:
        try:
            await self._dispatcher.adopt(job_id)
        except StoreError as e:  # the next sweep finds it again
            log.warning("job %d: cannot take what a standby wrote: %s", job_id, e)
