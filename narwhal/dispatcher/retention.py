"""Log retention: which ended jobs' logs go, and the collector that deletes them.

A log is the bulk of what a store holds (a job row is a few hundred bytes,
its log up to many megabytes), so retention deletes whole jobs' logs, oldest
first, and keeps the job rows, their history, steps and usage: a job stays
visible with its outcome after its log went. A job still queued or running
is never touched (``JobStore.log_footprints`` lists ended jobs only).

The policy (``RetentionConfig``): logs of jobs that ended more than ``days``
ago go; then, while the stored total is over ``size``, the oldest go. A
repository matching one of ``repos``' patterns has that limit instead and a
size budget of its own, so one noisy repository cannot push everyone else's
logs out. The leader runs the collector every ``interval`` seconds, and
``POST /api/gc`` (``narwhal gc``) runs it at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

from narwhal.config import LogLimit, RetentionConfig
from narwhal.dispatcher.store.base import DropLogs, JobStore, LogFootprint

log = logging.getLogger(__name__)

#: Seconds from the dispatcher's start to its first gc run.
FIRST_RUN = 60.0
#: Jobs whose logs one store write deletes: a long gc is many short commits,
#: so dispatching never waits behind one big delete.
BATCH = 500


@dataclass(frozen=True, slots=True)
class Collected:
    """What a gc run deleted (or, dry, would delete)."""

    jobs: int
    stored: int
    dry_run: bool

    def to_json(self) -> dict[str, object]:
        return {"jobs": self.jobs, "bytes": self.stored, "dry_run": self.dry_run}


def limit_of(repo: str, policy: RetentionConfig) -> tuple[str | None, LogLimit]:
    """The pattern that governs ``repo`` (None: the installation's) and its limit."""
    for pattern, limit in policy.repos:
        if fnmatchcase(repo, pattern):
            return pattern, limit
    return None, policy.keep


def doomed(
    footprints: Sequence[LogFootprint], policy: RetentionConfig, now: float
) -> list[LogFootprint]:
    """The jobs whose logs go, from ``footprints`` (oldest ended first)."""
    groups: dict[str | None, list[LogFootprint]] = {}
    limits: dict[str | None, LogLimit] = {}
    for footprint in footprints:
        key, limit = limit_of(footprint.repo, policy)
        groups.setdefault(key, []).append(footprint)
        limits[key] = limit
    chosen: list[LogFootprint] = []
    for key, group in groups.items():
        chosen += _over(group, limits[key], now)
    return sorted(chosen, key=lambda f: (f.finished_at, f.job_id))


def _over(group: list[LogFootprint], limit: LogLimit, now: float) -> list[LogFootprint]:
    """One budget's victims: too old, then the oldest while over its size."""
    kept = list(group)
    chosen: list[LogFootprint] = []
    if limit.days is not None:
        cutoff = now - limit.days * 86400
        chosen = [f for f in kept if f.finished_at < cutoff]
        kept = [f for f in kept if f.finished_at >= cutoff]
    if limit.size is not None:
        total = sum(f.stored for f in kept)
        for footprint in kept:  # oldest first
            if total <= limit.size:
                break
            chosen.append(footprint)
            total -= footprint.stored
    return chosen


class Collector:
    """Runs the policy against a store: now (``collect``) or every interval (``loop``)."""

    def __init__(self, store: JobStore, policy: RetentionConfig) -> None:
        self.store = store
        self.policy = policy
        #: Stored bytes deleted since start (``narwhal_log_bytes_collected_total``).
        self.freed = 0
        self._lock = asyncio.Lock()

    async def collect(self, *, dry_run: bool = False, now: float | None = None) -> Collected:
        """Delete (or only count) what the policy says goes; one run at a time."""
        async with self._lock:
            victims = doomed(await self.store.log_footprints(), self.policy, now or time.time())
            if dry_run:
                return Collected(len(victims), sum(f.stored for f in victims), True)
            freed = 0
            ids = [f.job_id for f in victims]
            for start in range(0, len(ids), BATCH):
                drop = DropLogs(job_ids=ids[start : start + BATCH], at=time.time())
                (batch,) = await self.store.apply([drop])
                freed += batch
            self.freed += freed
            if victims:
                log.info("gc: deleted the logs of %d jobs, %d bytes stored", len(victims), freed)
            return Collected(len(victims), freed, False)

    async def loop(self) -> None:
        """Run until cancelled: a gc run a minute after start, then every interval."""
        await asyncio.sleep(min(FIRST_RUN, self.policy.interval))
        while True:
            await self.collect()
            await asyncio.sleep(self.policy.interval)
