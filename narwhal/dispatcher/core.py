"""The dispatcher: the job store, the queue, the scheduler, and what frames mean.

Every state change is committed to the store before the frame that acts on
it is sent (a JOB goes out only after the job is recorded as ``assigned``),
and a runner's frame is acknowledged only after what it says is stored, so a
crash anywhere leaves a job that recovery finds, never one that runs without
a record or a result that is lost.

Shutdown order (``aclose``): stop scheduling and the mesh loops, close the
socket with its linger, terminate the ZeroMQ context (if ours), close the
store. Runners keep running their jobs and report them to the next
dispatcher.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

import zmq.asyncio

from narwhal.config import DispatcherConfig
from narwhal.dispatcher.access import StoreAccess
from narwhal.dispatcher.batch import FrameBatch
from narwhal.dispatcher.links import Link, Slots
from narwhal.dispatcher.pool import RunnerPool
from narwhal.dispatcher.records import ACTIVE, JobRecord, Move
from narwhal.dispatcher.store.sqlite import SqliteStore
from narwhal.dispatcher.vault import Vault, load_key
from narwhal.dispatcher.waiting import EXPLAIN_INTERVAL, Explainer
from narwhal.errors import NarwhalError, NotFound, StoreError
from narwhal.mesh import protocol as p
from narwhal.pipeline import MAX_COMBINATIONS
from narwhal.supervise import spawn

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Seconds before scheduling again after the store refused a write.
STORE_RETRY = 1.0


class Conflict(NarwhalError):
    """The request does not fit the job's current state (e.g. cancel a finished job)."""


class Dispatcher:
    """Schedules stored jobs onto runners and records what they report."""

    def __init__(
        self, config: DispatcherConfig, *, context: zmq.asyncio.Context | None = None
    ) -> None:
        self.config = config
        self._ctx = context or zmq.asyncio.Context()
        self._own_ctx = context is None
        self._store = StoreAccess(config.db_path)
        self._runners: RunnerPool | None = None
        self._vault: Vault | None = None
        #: Queued jobs in submission order (dicts keep insertion order).
        self._queue: dict[int, JobRecord] = {}
        #: The latest record of every assigned or running job, so the hot path
        #: moves jobs without reading rows back (see ``SqliteStore.move``).
        self._records: dict[int, JobRecord] = {}
        #: Jobs found assigned/running at start, waiting for their runner's
        #: READY until the deadline, then requeued with the reason given.
        self._orphans: dict[tuple[int, int], str] = {}
        self._orphan_deadline = 0.0
        #: Jobs of lost runners whose requeue the store refused: retried.
        self._unrequeued: dict[tuple[int, int], str] = {}
        self._requeuer: asyncio.Task[None] | None = None
        #: Says in queued jobs' reasons why they wait (``dispatcher.waiting``).
        self._explainer = Explainer()
        self._wake = asyncio.Event()
        #: Set whenever a runner slot is given back (see ``drained``).
        self._released = asyncio.Event()
        self._watchers: dict[int, set[asyncio.Event]] = {}
        self._listeners: list[Callable[[JobRecord], None]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    # lifecycle

    async def __aenter__(self) -> Dispatcher:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        key = await asyncio.to_thread(load_key, self.config.data_dir)
        await self._store.open()
        self._vault = Vault(key, self._write)
        await self.db(self._vault.load)
        self._runners = RunnerPool(
            self.config.mesh,
            self._ctx,
            self,
            curve=self.config.curve,
            max_capacity=self.config.max_runner_capacity,
        )
        await self._recover()
        for endpoint in (*self.config.runners, *await self.db(SqliteStore.endpoints)):
            self._runners.connect(endpoint)
        spawn(self._tasks, "dispatcher receive loop", self._runners.receive_loop)
        spawn(self._tasks, "dispatcher liveness loop", self._runners.liveness_loop)
        spawn(self._tasks, "dispatcher monitor loop", self._runners.monitor_loop)
        spawn(self._tasks, "dispatcher schedule loop", self._schedule_loop)
        spawn(self._tasks, "dispatcher checkpoint loop", self._store.checkpoint_loop)
        spawn(self._tasks, "dispatcher explain loop", self._explain_loop)
        self._wake.set()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._runners is not None:
            self._runners.close()
        if self._own_ctx:
            self._ctx.term()
        await self._store.close()

    async def db(self, method: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call a reading ``SqliteStore`` method (on the reader thread, see ``access``)."""
        return await self._store.read(method, *args, **kwargs)

    def _write(self, method: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call a writing ``SqliteStore`` method (on the loop, see ``access``)."""
        return self._store.write(method, *args, **kwargs)

    def write(self, method: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``_write`` for the parts kept beside the jobs in the same store (API tokens)."""
        return self._store.write(method, *args, **kwargs)

    @property
    def secrets(self) -> Vault:
        """Per-repository secrets (``dispatcher.vault``)."""
        assert self._vault is not None  # noqa: S101 - set in start()
        return self._vault

    @property
    def runners(self) -> RunnerPool:
        assert self._runners is not None  # noqa: S101 - set in start()
        return self._runners

    async def _recover(self) -> None:
        queued = await self.db(SqliteStore.list_jobs, states=["queued"], limit=-1, ascending=True)
        self._queue = {job.id: job for job in queued}
        active = await self.db(SqliteStore.list_jobs, states=["assigned", "running"], limit=-1)
        reason = "no runner reported the job after a restart"
        self._orphans = {(j.id, j.attempt): reason for j in active}
        # Runners that still hold these jobs list them in READY; give them
        # time to reconnect before the jobs go back to the queue.
        self._orphan_deadline = time.monotonic() + max(2 * self.config.mesh.dead_after, 5.0)
        if self._orphans:
            self._requeue_later()
            log.info("recovering %d running job(s) from the store", len(self._orphans))

    def _requeue_later(self) -> None:
        """Make sure the requeue loop runs (it ends once nothing is left to requeue)."""
        if self._requeuer is None or self._requeuer.done():
            self._requeuer = spawn(self._tasks, "dispatcher requeue loop", self._requeue_loop)

    async def _requeue_loop(self) -> None:
        """Retry refused requeues, and requeue the orphans no runner claimed by the deadline."""
        while self._orphans or self._unrequeued:
            if self._unrequeued:
                key, reason = self._unrequeued.popitem()
            elif time.monotonic() < self._orphan_deadline:
                wait = self._orphan_deadline - time.monotonic()
                await asyncio.sleep(min(wait, STORE_RETRY))  # a refused requeue may come
                continue
            else:
                key, reason = self._orphans.popitem()
            if not await self._requeue_or_retry(key, reason):
                await asyncio.sleep(STORE_RETRY)

    async def _requeue_or_retry(self, key: tuple[int, int], reason: str) -> bool:
        """Requeue a job no runner holds any more; if the store refuses, retry it later."""
        try:
            await self._requeue(*key, reason)
        except StoreError as e:
            log.error("job %d: cannot requeue it (retrying): %s", key[0], e)
            self._unrequeued[key] = reason
            self._requeue_later()
            return False
        return True

    # job state

    async def _transition(
        self, job_id: int, attempt: int, to: str, reason: str, runner_id: str | None = None
    ) -> JobRecord | None:
        """Commit a state change, then tell log followers and listeners."""
        job = self._write(
            SqliteStore.transition,
            job_id,
            attempt=attempt,
            to=to,
            reason=reason,
            runner_id=runner_id,
        )
        if job is not None:
            self._changed(job)
        return job

    def _changed(self, job: JobRecord) -> None:
        if job.state in ACTIVE:
            self._records[job.id] = job
        else:
            self._records.pop(job.id, None)
        self._notify(job.id)
        for listener in self._listeners:
            try:
                listener(job)
            except Exception:  # one broken listener must not stop dispatching
                log.exception("job listener %r failed", listener)

    def add_listener(self, listener: Callable[[JobRecord], None]) -> None:
        """Call ``listener(job)`` after every committed state change and new job.

        Listeners run on the event loop and must not block: hand slow work
        (forge status calls, metrics) to a task or queue of their own.
        """
        self._listeners.append(listener)

    async def _requeue(self, job_id: int, attempt: int, reason: str) -> None:
        try:
            job = await self.db(SqliteStore.get_job, job_id)
        except NotFound:  # never a held job's fate; a bad claim must not end a loop
            log.error("job %d to requeue does not exist", job_id)
            return
        if job.attempt != attempt or job.terminal:
            return
        if job.cancel_requested:
            await self._transition(job_id, attempt, "cancelled", f"cancelled; {reason}")
        elif attempt >= self.config.max_attempts:
            await self._transition(
                job_id, attempt, "error", f"{reason}; gave up after {attempt} attempts"
            )
        else:
            requeued = await self._transition(job_id, attempt, "queued", f"{reason}; requeued")
            if requeued is not None:
                self._queue[requeued.id] = requeued
                self._wake.set()

    # what runners report (called by the pool)

    async def on_ready(self, link: Link, ready: p.Ready) -> None:
        """Take over the jobs a READY lists that the store says this runner holds.

        At most ``capacity`` entries are looked at, all in one store read
        (a READY listing thousands must not stall the frames of others).
        Entries that name no job, another runner's job, or an attempt this
        runner never held are ignored and counted as bad frames.
        """
        keys, tracked = self._listed(link, ready.active)
        verdicts: dict[tuple[int, int], str] = {}
        if keys:
            assert link.runner_id is not None  # noqa: S101 - set before on_ready
            verdicts = await self.db(SqliteStore.holders, link.runner_id, list(keys))
        for key, next_seq in keys.items():
            self._adopt(link, key, next_seq, verdicts.get(key))
        ignored = len(ready.active) - tracked - len(verdicts)
        if ignored:
            self.runners.bad(link, f"READY lists {ignored} job(s) it does not hold", ignored)
        self._wake.set()

    @staticmethod
    def _listed(
        link: Link, active: tuple[tuple[int, ...], ...]
    ) -> tuple[dict[tuple[int, int], int], int]:
        """READY's new well-formed ``[job_id, attempt, next_seq]`` entries, up to
        ``capacity``; and how many name a stream the link already has."""
        keys: dict[tuple[int, int], int] = {}
        tracked = 0
        for entry in active[: link.capacity]:
            if len(entry) != 3:
                continue
            if (entry[0], entry[1]) in link.streams:
                tracked += 1
            else:
                keys[(entry[0], entry[1])] = entry[2]
        return keys, tracked

    def _adopt(self, link: Link, key: tuple[int, int], next_seq: int, verdict: str | None) -> None:
        """A runner reports a job it holds (after a reconnect or a dispatcher restart).

        Only a job found running at start (a recovery orphan) that the store
        says this runner holds is taken over live. Any other attempt of this
        runner is over (superseded, ended, or being requeued after the runner
        was lost): it is tracked until its DONE, its frames change nothing,
        and the runner is told to stop it. A second claimant of a runner id
        thus never inherits the jobs of the link it replaces.
        """
        if verdict is None:
            return
        live = verdict == "held" and self._orphans.pop(key, None) is not None
        link.jobs.add(key)  # it occupies a slot until its DONE, live or not
        self.runners.open_stream(link, key, expected=next_seq, live=live)
        if not live:
            self.runners.send(link, p.Cancel(job_id=key[0], attempt=key[1], reason="superseded"))

    async def on_stray(self, link: Link, message: p.Message) -> bool:
        """A job frame outside any known stream: acknowledge it if the job is settled.

        A runner that runs an attempt we gave up on (its JOB arrived late) is
        told to stop. False for a job that does not exist or is still live
        (it is held on another link): the pool counts that as a bad frame.
        """
        job_id, attempt = message.job_id, message.attempt  # type: ignore[attr-defined]
        try:
            job = await self.db(SqliteStore.get_job, job_id)
        except NarwhalError:
            return False
        settled = job.terminal or job.attempt != attempt
        if settled and not isinstance(message, p.Done):
            self.runners.send(link, p.Cancel(job_id=job_id, attempt=attempt, reason="superseded"))
        return settled

    async def on_lost(self, link: Link, reason: str) -> None:
        """The runner behind ``link`` is gone: its jobs go back to the queue."""
        held = sorted(link.jobs)
        self._release(link, *held)
        for key in held:
            await self._requeue_or_retry(key, reason)

    async def on_frames(self, frames: list[tuple[Link, p.Message]]) -> None:
        """Store what one batch of frames says, in one transaction, then act on it."""
        batch = FrameBatch(self._records)
        rejects: list[tuple[Link, p.Reject]] = []
        for link, message in frames:
            if isinstance(message, p.Reject):
                rejects.append((link, message))
                continue
            if isinstance(message, p.Done):
                key = (message.job_id, message.attempt)
                self._release(link, key)
                stream = link.streams.get(key)
                if stream is not None and not stream.live:
                    continue  # an attempt that is over: its DONE frees the slot, nothing more
            batch.add(link, message)
        if batch.calls:
            await self._recorded(batch, self._write(SqliteStore.apply, batch.calls))
        for link, reject in rejects:
            await self._on_reject(link, reject)

    async def _recorded(self, batch: FrameBatch, results: list[Any]) -> None:
        """Act on what a batch's store calls did, in frame order."""
        for index, ((method, kwargs), result) in enumerate(zip(batch.calls, results, strict=True)):
            if method is SqliteStore.move:
                for record, applied in zip(batch.moved[index], result, strict=True):
                    if applied:
                        self._changed(record)
                    else:  # memory and store disagree: read the row next time
                        self._records.pop(record.id, None)
            elif method is SqliteStore.transition and result is not None:
                self._changed(result)
            elif method is SqliteStore.append_log:
                self._notify(kwargs["job_id"])
            elif method is SqliteStore.set_checkout:
                # Its row changed (sha, pipeline, matrix): read it back next time.
                self._records.pop(kwargs["job_id"], None)
                if result:
                    await self._expand(kwargs["job_id"], kwargs["sha"], kwargs["variants"])

    async def _on_reject(self, link: Link, message: p.Reject) -> None:
        key = (message.job_id, message.attempt)
        link.streams.pop(key, None)
        self._release(link, key)
        reason = f"runner {link.runner_id} rejected it: {message.reason}"
        await self._requeue_or_retry(key, reason)

    async def _expand(self, job_id: int, sha: str, variants: tuple[dict[str, str], ...]) -> None:
        """One job for each matrix combination after the first (which ``job_id`` runs).

        Read on the writer, not awaited: no API request runs between the
        commit that records the checkout (perhaps the parent's end too) and
        the siblings' creation, so whoever sees the parent ended sees them
        all. A parent being cancelled gets none (``cancel_submission``).
        """
        parent = self._write(SqliteStore.get_job, job_id)
        if parent.cancel_requested or parent.state == "cancelled":
            return
        for variant in variants[1:]:
            await self._create(
                repo=parent.repo,
                ref=parent.ref,
                sha=sha,
                event=parent.event,
                labels=parent.labels,
                matrix=variant,
                parent_id=parent.id,
                reason=f"matrix of job {parent.id}",
                fork_of=parent.fork_of,
            )

    # scheduling

    async def _schedule_loop(self) -> None:
        self._wake.set()  # (re)started: a wake-up may have been taken by a crashed round
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._schedule()
            await asyncio.sleep(0)  # a set event does not yield: let frames in

    async def _schedule(self) -> None:
        """Assign queued jobs to free slots: one transaction for the lot, then send."""
        picked: list[tuple[JobRecord, Link]] = []
        slots = Slots(self.runners.links())
        for job in self._queue.values():  # not copied: a long queue is not re-read per round
            if not slots:
                break  # nor scanned while every slot is taken
            link = slots.take(job.labels)
            if link is None:
                continue
            link.jobs.add((job.id, job.attempt))  # reserve the slot before the store
            picked.append((job, link))
        if not picked:
            return
        now = time.time()
        moves: list[Move] = [
            (job.id, job.attempt, "assigned", f"assigned to {link.runner_id}", link.runner_id)
            for job, link in picked
        ]
        try:
            applied = self._write(SqliteStore.move, moves, at=now)
        except StoreError as e:
            # Nothing was assigned: the jobs stay queued and the slots free.
            for job, link in picked:
                link.jobs.discard((job.id, job.attempt))
            log.error("cannot assign jobs (retrying in %.0f s): %s", STORE_RETRY, e)
            await asyncio.sleep(STORE_RETRY)
            self._wake.set()
            return
        for (job, link), move, ok in zip(picked, moves, applied, strict=True):
            del self._queue[job.id]
            if not ok:  # cancelled meanwhile
                self._release(link, (job.id, job.attempt))
                continue
            self._changed(job.moved("assigned", move[3], link.runner_id, now))
            self._dispatch(link, job)

    async def _explain_loop(self) -> None:
        while True:
            await asyncio.sleep(EXPLAIN_INTERVAL)
            self._explain()

    def _explain(self) -> None:
        """Put why each queued job waits in its reason; write only reasons that changed."""
        changed = self._explainer.look(self._queue, self.runners.links())
        if not changed:
            return
        try:
            self._write(SqliteStore.set_reasons, changed)
        except StoreError as e:  # said again at the next look
            log.warning("cannot record why %d job(s) wait: %s", len(changed), e)
            self._explainer = Explainer()
            return
        for job_id, _, reason in changed:
            self._queue[job_id] = self._queue[job_id]._replace(reason=reason)
            self._notify(job_id)

    def _dispatch(self, link: Link, job: JobRecord) -> None:
        assert link.session is not None  # noqa: S101 - a ready link has a session
        key = (job.id, job.attempt)
        frame = p.Job(
            job_id=job.id,
            attempt=job.attempt,
            runner_session=link.session,
            repo=job.repo,
            ref=job.ref,
            sha=job.sha,
            event=job.event,
            matrix=job.matrix,
            secrets=self.secrets.for_job(job),
        )
        if not self.runners.open_stream(link, key, expected=0, live=True, request=frame):
            # Recorded as assigned: the pool sends it again until the runner
            # answers, or the runner's loss requeues it.
            log.warning("job %d: JOB frame to %s not sent yet", job.id, link.runner_id)

    def _release(self, link: Link, *keys: tuple[int, int]) -> None:
        """Give slots back: schedule again, and tell ``drained`` waiters."""
        link.jobs.difference_update(keys)
        self._released.set()
        self._wake.set()

    async def drained(self) -> None:
        """Return once no runner holds a job of this dispatcher."""
        while any(link.jobs for link in self.runners.links()):
            self._released.clear()
            await self._released.wait()

    # what the API calls

    async def _create(self, **fields: Any) -> JobRecord:
        job, created = self._write(SqliteStore.create_job_once, **fields)
        if created:
            self._queue[job.id] = job
            self._changed(job)
            self._wake.set()
        return job

    async def submit(
        self,
        *,
        repo: str,
        ref: str,
        sha: str | None,
        event: str,
        labels: dict[str, str],
        source_key: str | None = None,
        fork_of: str | None = None,
    ) -> JobRecord:
        """Queue a job; a ``source_key`` seen before returns that job instead.

        The key is what makes redelivered commit events (AMQP redelivery, a
        forge retrying a webhook) idempotent. ``fork_of``: see ``JobRecord``.
        """
        return await self._create(
            repo=repo,
            ref=ref,
            sha=sha,
            event=event,
            labels=labels,
            source_key=source_key,
            fork_of=fork_of,
        )

    async def submit_many(self, jobs: list[dict[str, Any]]) -> list[JobRecord]:
        """Queue many jobs in one store transaction (no ``source_key``)."""
        created = self._write(SqliteStore.create_jobs, jobs)
        for job in created:
            self._queue[job.id] = job
            self._changed(job)
        self._wake.set()
        return created

    async def resubmit(self, job_id: int) -> JobRecord:
        old = await self.db(SqliteStore.get_job, job_id)
        return await self._create(
            repo=old.repo,
            ref=old.ref,
            sha=old.sha,
            event=old.event,
            labels=old.labels,
            matrix=old.matrix,
            reason=f"resubmitted from job {old.id}",
            fork_of=old.fork_of,
        )

    async def cancel(self, job_id: int) -> JobRecord:
        job = await self.db(SqliteStore.get_job, job_id)
        if job.terminal:
            raise Conflict(f"job {job_id} already ended ({job.state})")
        link = self._holder(job_id, job.attempt)
        if link is None:
            # Queued, or held by no connected runner: nothing to stop.
            self._queue.pop(job_id, None)
            await self._transition(job_id, job.attempt, "cancelled", "cancelled by user")
        else:
            self._write(SqliteStore.request_cancel, job_id)
            self._records.pop(job_id, None)  # its row changed: read it back next time
            cancel = p.Cancel(job_id=job_id, attempt=job.attempt, reason="cancelled by user")
            self.runners.send(link, cancel)
        return await self.db(SqliteStore.get_job, job_id)

    async def cancel_submission(self, job_id: int) -> list[JobRecord]:
        """Cancel a job and the matrix jobs it spawned; return each as it is now.

        The jobs that already ended are left as they are (and not returned);
        ``Conflict`` if none was still going.
        """
        job = await self.db(SqliteStore.get_job, job_id)
        children = await self.db(SqliteStore.list_jobs, parent=job_id, limit=MAX_COMBINATIONS)
        going = [j for j in (job, *reversed(children)) if not j.terminal]
        if not going:
            raise Conflict(f"job {job_id} already ended ({job.state})")
        cancelled: list[JobRecord] = []
        for j in going:
            with contextlib.suppress(Conflict):  # ended meanwhile
                cancelled.append(await self.cancel(j.id))
        return cancelled

    def _holder(self, job_id: int, attempt: int) -> Link | None:
        for link in self.runners.links():
            if (job_id, attempt) in link.jobs:
                return link
        return None

    def links(self) -> list[Link]:
        return self.runners.links()

    def connect(self, endpoint: str) -> Link | None:
        return self.runners.connect(endpoint)

    async def add_runner(self, url: str) -> Link:
        link = self.runners.connect(url)
        if link is None:
            raise Conflict(f"{url}: refused ({self.runners.refused.get(url, 'duplicate')})")
        self._write(SqliteStore.add_endpoint, link.endpoint)
        return link

    def queued(self) -> int:
        return len(self._queue)

    # change notification for log followers

    def watch(self, job_id: int) -> asyncio.Event:
        event = asyncio.Event()
        self._watchers.setdefault(job_id, set()).add(event)
        return event

    def unwatch(self, job_id: int, event: asyncio.Event) -> None:
        watchers = self._watchers.get(job_id)
        if watchers is not None:
            watchers.discard(event)
            if not watchers:
                del self._watchers[job_id]

    def _notify(self, job_id: int) -> None:
        for event in self._watchers.get(job_id, ()):
            event.set()
