"""Jobs whose runner is in doubt: found running at start, or held by a lost runner.

At start every assigned or running job is an orphan: runners that still
hold one list it in READY and take it back (``on_ready``); the rest go
back to the queue once runners had time to reconnect. A requeue the store
refuses is retried until it is made, so a job of a lost runner is never
left assigned to nobody.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from narwhal.dispatcher.mesh import Key, Peer
from narwhal.dispatcher.records import JobRecord
from narwhal.errors import StoreError
from narwhal.mesh import protocol as p

if TYPE_CHECKING:
    from narwhal.dispatcher.core import Dispatcher

log = logging.getLogger(__name__)

#: Seconds before retrying what the store refused (a requeue, an assignment).
STORE_RETRY = 1.0


class Recovery:
    """Orphans waiting for their runner's READY, and requeues waiting for the store."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self._dispatcher = dispatcher
        #: Jobs found assigned/running at start, waiting for their runner's
        #: READY until the deadline, then requeued with the reason given.
        self._orphans: dict[Key, str] = {}
        self._deadline = 0.0
        #: Jobs of lost runners whose requeue the store refused: retried.
        self._unrequeued: dict[Key, str] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self, active: list[JobRecord]) -> None:
        reason = "no runner reported the job after a restart"
        self._orphans = {(j.id, j.attempt): reason for j in active}
        # Runners that still hold these jobs list them in READY; give them
        # time to reconnect before the jobs go back to the queue.
        dead_after = self._dispatcher.config.mesh.dead_after
        self._deadline = time.monotonic() + max(2 * dead_after, 5.0)
        if self._orphans:
            self._later()
            log.info("recovering %d running job(s) from the store", len(self._orphans))

    def _later(self) -> None:
        """Make sure the requeue loop runs (it ends once nothing is left to requeue)."""
        if self._task is None or self._task.done():
            self._task = self._dispatcher.spawn("dispatcher requeue loop", self._loop)

    async def _loop(self) -> None:
        """Retry refused requeues, and requeue the orphans no runner claimed by the deadline."""
        while self._orphans or self._unrequeued:
            if self._unrequeued:
                key, reason = self._unrequeued.popitem()
            elif time.monotonic() < self._deadline:
                wait = self._deadline - time.monotonic()
                await asyncio.sleep(min(wait, STORE_RETRY))  # a refused requeue may come
                continue
            else:
                key, reason = self._orphans.popitem()
            if not await self.requeue_or_retry(key, reason):
                await asyncio.sleep(STORE_RETRY)

    async def requeue_or_retry(self, key: Key, reason: str) -> bool:
        """Requeue a job no runner holds any more; if the store refuses, retry it later."""
        try:
            await self._dispatcher.requeue(key, reason)
        except StoreError as e:
            log.error("job %d: cannot requeue it (retrying): %s", key[0], e)
            self._unrequeued[key] = reason
            self._later()
            return False
        return True

    async def on_ready(self, peer: Peer, ready: p.Ready) -> None:
        """Take over the jobs a READY lists that the store says this runner holds.

        At most ``capacity`` entries are looked at, all in one store read
        (a READY listing thousands must not stall the frames of others).
        Entries that name no job, another runner's job, or an attempt this
        runner never held are ignored and counted as bad frames.
        """
        mesh = self._dispatcher.mesh
        keys, tracked = self._listed(peer, ready.active)
        verdicts = {}
        if keys:
            assert peer.runner_id is not None  # noqa: S101 - set before on_ready
            verdicts = await self._dispatcher.store.holders(peer.runner_id, list(keys))
        for key, next_seq in keys.items():
            verdict = verdicts.get(key)
            if verdict is not None:
                self._adopt(peer, key, next_seq, live=verdict == "held")
        ignored = len(ready.active) - tracked - len(verdicts)
        if ignored:
            mesh.bad(peer, f"READY lists {ignored} job(s) it does not hold", ignored)

    def _listed(
        self, peer: Peer, active: tuple[tuple[int, ...], ...]
    ) -> tuple[dict[Key, int], int]:
        """READY's new well-formed ``[job_id, attempt, next_seq]`` entries, up to
        ``capacity``; and how many name a stream the runner already has."""
        keys: dict[Key, int] = {}
        tracked = 0
        for entry in active[: peer.capacity]:
            if len(entry) != 3:
                continue
            if self._dispatcher.mesh.tracks(peer, (entry[0], entry[1])):
                tracked += 1
            else:
                keys[(entry[0], entry[1])] = entry[2]
        return keys, tracked

    def _adopt(self, peer: Peer, key: Key, next_seq: int, *, live: bool) -> None:
        """A runner reports a job it holds (after a reconnect or a dispatcher restart).

        Only a job found running at start (a recovery orphan) that the store
        says this runner holds is taken over live. Any other attempt of this
        runner is over (superseded, ended, or being requeued after the runner
        was lost): it is tracked until its DONE, its frames change nothing,
        and the runner is told to stop it. A second claimant of a runner id
        thus never inherits the jobs of the link it replaces.
        """
        live = live and self._orphans.pop(key, None) is not None
        mesh = self._dispatcher.mesh
        mesh.adopt(peer, key, next_seq=next_seq, live=live)  # a slot until its DONE
        if not live:
            mesh.cancel(peer, key, "superseded")
