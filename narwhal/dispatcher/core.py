"""The dispatcher: the queue, the scheduler, and what runners' frames mean for jobs.

It is composed of three parts it is given (``Dispatcher(config, store=...,
mesh=...)``): the job store (``store.base.JobStore``), the mesh of runners
(``mesh.Mesh``) and a placement policy (``placement``). Job state has one
owner, the job table (``jobs``); this module decides *when* it changes.

Every state change is committed to the store before the frame that acts on
it is sent (a JOB goes out only after the job is recorded as ``assigned``:
the send is an after-commit hook), and a runner's frame is acknowledged
only after what it says is stored, so a crash anywhere leaves a job that
recovery finds, never one that runs without a record or a result that is
lost.

Shutdown order (``aclose``): stop scheduling and the mesh loops, close the
mesh (its socket, with its linger), close the store. Runners keep running
their jobs and report them to the next dispatcher.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from narwhal.config import DispatcherConfig
from narwhal.dispatcher.batch import record_frames
from narwhal.dispatcher.feed import Feed
from narwhal.dispatcher.gauges import GAUGE_INTERVAL, Gauges
from narwhal.dispatcher.health import Health
from narwhal.dispatcher.jobs import JobTable
from narwhal.dispatcher.mesh import Key, Mesh, Peer
from narwhal.dispatcher.placement import Placed, Placement, policy
from narwhal.dispatcher.records import JobRecord, JobState
from narwhal.dispatcher.recovery import STORE_RETRY, Recovery
from narwhal.dispatcher.retention import Collector
from narwhal.dispatcher.signals import Signals
from narwhal.dispatcher.store.base import AddEndpoint, JobQuery, JobStore, NewJob, Write
from narwhal.dispatcher.vault import Vault, load_key
from narwhal.dispatcher.waiting import EXPLAIN_INTERVAL, Explainer, Pending
from narwhal.dispatcher.watchers import Watchers
from narwhal.errors import NarwhalError, NotFound, StoreError
from narwhal.mesh import protocol as p
from narwhal.pipeline import MAX_COMBINATIONS
from narwhal.supervise import spawn

log = logging.getLogger(__name__)


class Conflict(NarwhalError):
    """The request does not fit the job's current state (e.g. cancel a finished job)."""


async def going(store: JobStore, job: JobRecord) -> list[JobRecord]:
    """``job`` and the matrix jobs it spawned that have not ended, children first.

    ``Conflict`` if none is still going (what a cancel of them all answers).
    """
    children = await store.list_jobs(JobQuery(parent=job.id, limit=MAX_COMBINATIONS))
    alive = [j for j in (job, *reversed(children)) if not j.terminal]
    if not alive:
        raise Conflict(f"job {job.id} already ended ({job.state})")
    return alive


class Dispatcher:
    """Schedules stored jobs onto runners and records what they report."""

    def __init__(
        self,
        config: DispatcherConfig,
        *,
        store: JobStore,
        mesh: Mesh,
        placement: Placement | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.mesh = mesh
        #: What runners' frames taught about them, for placement (``signals``).
        self.signals = Signals(Health(period=config.quarantine))
        self.placement = placement or policy(config.placement, self.signals)
        #: Everything that happens, for whoever wants to know (``dispatcher.feed``).
        self.feed = Feed()
        self.jobs = JobTable(store, feed=self.feed, max_attempts=config.max_attempts)
        self.watchers = Watchers()
        self.feed.subscribe(self.watchers.on_event)
        self._gauges = Gauges(self.feed, self.jobs)
        self._recovery = Recovery(self)
        self._vault: Vault | None = None
        #: Says in queued jobs' reasons why they wait (``dispatcher.waiting``).
        self._explainer = Explainer(self.placement, self.signals)
        self._wake = asyncio.Event()
        #: A round held a job for a busy warm runner: schedule again then.
        self._retry: asyncio.TimerHandle | None = None
        self.jobs.on_queued = self._wake.set
        #: Set whenever a runner slot is given back (see ``drained``).
        self._released = asyncio.Event()
        #: Writes that may wait for the next commit (``write_soon``).
        self._soon: list[Write] = []
        self._soon_ready = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        #: Log retention (``--log-keep-*``): run every interval, and by ``POST /api/gc``.
        self.retention = Collector(store, config.retention)

    # lifecycle

    async def __aenter__(self) -> Dispatcher:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        key = await asyncio.to_thread(load_key, self.config.data_dir)
        await self.store.open()
        self._vault = Vault(key, self.write)
        await self._vault.load(self.store)
        self.mesh.attach(self)
        await self._recovery.start(await self.jobs.load())
        for endpoint in (*self.config.runners, *await self.store.endpoints()):
            self.mesh.connect(endpoint)
        for name, loop in self.mesh.loops().items():
            spawn(self._tasks, f"dispatcher {name} loop", loop)
        spawn(self._tasks, "dispatcher schedule loop", self._schedule_loop)
        spawn(self._tasks, "dispatcher store loop", self.store.maintain)
        spawn(self._tasks, "dispatcher explain loop", self._explain_loop)
        spawn(self._tasks, "dispatcher write loop", self._soon_loop)
        spawn(self._tasks, "dispatcher gauge loop", self._gauge_loop)
        if self.config.retention.bounded:
            spawn(self._tasks, "dispatcher gc loop", self.retention.loop)
        self._wake.set()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._retry is not None:
            self._retry.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.mesh.close()
        await self.store.close()

    @property
    def secrets(self) -> Vault:
        """Per-repository secrets (``dispatcher.vault``)."""
        assert self._vault is not None  # noqa: S101 - set in start()
        return self._vault

    def spawn(self, name: str, loop: Callable[[], Any]) -> asyncio.Task[None]:
        """Run ``loop`` supervised, as one of the dispatcher's tasks."""
        return spawn(self._tasks, name, loop)

    # writes of the parts kept beside the jobs (tokens, secrets, endpoints)

    async def write(self, *writes: Write) -> list[Any]:
        """Make ``writes`` in one unit, now; their results (``StoreError`` if refused)."""
        return await self.store.apply(writes)

    def write_soon(self, write: Write) -> None:
        """Make ``write`` with the next commit, within a moment (losing it is harmless)."""
        self._soon.append(write)
        self._soon_ready.set()

    async def _soon_loop(self) -> None:
        while True:
            await self._soon_ready.wait()
            self._soon_ready.clear()
            writes, self._soon = self._soon, []
            try:
                await self.store.apply(writes)
            except StoreError as e:
                log.warning("cannot record %d deferred write(s): %s", len(writes), e)

    async def _gauge_loop(self) -> None:
        while True:
            await asyncio.sleep(GAUGE_INTERVAL)
            self._gauges.look(self.mesh.peers())

    # job state

    async def requeue(self, key: Key, reason: str) -> None:
        """A job attempt no runner holds any more goes back to the queue (or ends)."""
        try:
            job = await self.jobs.fetch(key[0])
        except NotFound:  # never a held job's fate; a bad claim must not end a loop
            log.error("job %d to requeue does not exist", key[0])
            return
        if job.attempt != key[1] or job.terminal:
            return
        changes = self.jobs.begin()
        self.jobs.requeue(changes, job, reason)
        await changes.commit()

    # what runners report (called by the mesh)

    async def on_ready(self, peer: Peer, ready: p.Ready) -> None:
        await self._recovery.on_ready(peer, ready)
        self._gauges.joined(peer)
        self._wake.set()

    async def on_stray(self, peer: Peer, message: p.Message) -> bool:
        """A job frame outside any known stream: acknowledge it if the job is settled.

        A runner that runs an attempt we gave up on (its JOB arrived late) is
        told to stop. False for a job that does not exist or is still live
        (it is held on another link): the mesh counts that as a bad frame.
        """
        job_id, attempt = message.job_id, message.attempt  # type: ignore[attr-defined]
        try:
            job = await self.jobs.fetch(job_id)
        except NarwhalError:
            return False
        settled = job.terminal or job.attempt != attempt
        if settled and not isinstance(message, p.Done):
            self.mesh.cancel(peer, (job_id, attempt), "superseded")
        return settled

    async def on_lost(self, peer: Peer, held: Sequence[Key], reason: str) -> None:
        """The runner behind ``peer`` is gone: its jobs go back to the queue."""
        self._gauges.left(peer, reason)
        for key in sorted(held):
            await self._recovery.requeue_or_retry(key, reason)

    def on_released(self) -> None:
        self._released.set()
        self._wake.set()

    async def on_frames(self, frames: list[tuple[Peer, p.Message]]) -> None:
        """Store what one batch of frames says, in one unit of work, then act on it."""
        rejects = [(peer, m) for peer, m in frames if isinstance(m, p.Reject)]
        learnt = self._learnable(frames)  # before the commit: a job that ends leaves memory
        changes = self.jobs.begin()
        record_frames(self.jobs, changes, [f for f in frames if not isinstance(f[1], p.Reject)])
        if changes.unit:
            await changes.commit()
        self._learn(learnt)
        for peer, reject in rejects:
            reason = f"runner {peer.runner_id} rejected it: {reject.reason}"
            await self._recovery.requeue_or_retry((reject.job_id, reject.attempt), reason)

    def _learnable(
        self, frames: list[tuple[Peer, p.Message]]
    ) -> list[tuple[str, str, p.CheckedOut | p.Done]]:
        """``(runner id, repository, frame)`` for the frames placement learns from."""
        learnt = []
        for peer, message in frames:
            if isinstance(message, p.CheckedOut | p.Done) and peer.runner_id is not None:
                job = self.jobs.get(message.job_id)
                if job is not None:
                    learnt.append((peer.runner_id, job.repo, message))
        return learnt

    def _learn(self, learnt: list[tuple[str, str, p.CheckedOut | p.Done]]) -> None:
        """What stored CHECKED_OUT and DONE frames say of their runners, for placement."""
        now = time.monotonic()
        for runner_id, repo, message in learnt:
            if isinstance(message, p.CheckedOut):
                self.signals.checked_out(
                    runner_id,
                    repo,
                    message.sha,
                    seconds=message.checkout,
                    cold=message.cold,
                    now=now,
                )
            elif isinstance(message, p.Done):
                self.signals.ended(
                    runner_id, repo, fault=message.fault, duration=message.duration, now=now
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
        """Assign queued jobs to free slots: one unit for the lot, then send."""
        picked: list[tuple[JobRecord, Placed]] = []
        placing = self.placement.round(self.mesh.peers())
        walk = self.jobs.order.walk(self.jobs.running)
        for job in walk:
            if not placing:
                break  # the rest of the queue is not scanned while every slot is taken
            verdict = placing.take(job)
            if not isinstance(verdict, Placed):
                self._explainer.saw(job, verdict)
                continue
            walk.took(job)
            self.mesh.reserve(verdict.peer, (job.id, job.attempt))  # the slot, before the store
            picked.append((job, verdict))
        self._retry_at(placing.retry_at())
        if not picked:
            return
        changes = self.jobs.begin()
        for job, placed in picked:
            self.jobs.assign(changes, job, placed.peer.runner_id or "?", placed.text)
        changes.after_commit(lambda: self._send_jobs(picked))
        try:
            await changes.commit()
        except StoreError as e:
            # Nothing was assigned: the jobs stay queued and the slots free.
            for job, placed in picked:
                self.mesh.release(placed.peer, (job.id, job.attempt))
            log.error("cannot assign jobs (retrying in %.0f s): %s", STORE_RETRY, e)
            await asyncio.sleep(STORE_RETRY)
            self._wake.set()

    def _retry_at(self, when: float | None) -> None:
        """Schedule again at ``when`` (monotonic), when a held job stops waiting."""
        if when is None or (self._retry is not None and self._retry.when() <= when):
            return
        if self._retry is not None:
            self._retry.cancel()
        loop = asyncio.get_running_loop()
        delay = max(0.0, when - time.monotonic())
        self._retry = loop.call_at(loop.time() + delay, self._retried)

    def _retried(self) -> None:
        self._retry = None
        self._wake.set()

    def _send_jobs(self, picked: list[tuple[JobRecord, Placed]]) -> None:
        for job, placed in picked:
            peer = placed.peer
            assigned = self.jobs.active.get(job.id)
            # Not assigned after all (the store fenced it off): memory dropped it.
            if assigned is None or assigned.attempt != job.attempt:
                self.mesh.release(peer, (job.id, job.attempt))
                continue
            self._dispatch(peer, assigned)

    def _dispatch(self, peer: Peer, job: JobRecord) -> None:
        frame = p.Job(
            job_id=job.id,
            attempt=job.attempt,
            runner_session=self._session(peer),
            repo=job.repo,
            ref=job.ref,
            sha=job.sha,
            event=job.event,
            matrix=job.matrix,
            secrets=self.secrets.for_job(job),
        )
        if not self.mesh.send_job(peer, frame):
            # Recorded as assigned: the mesh sends it again until the runner
            # answers, or the runner's loss requeues it.
            log.warning("job %d: JOB frame to %s not sent yet", job.id, peer.runner_id)

    async def _explain_loop(self) -> None:
        while True:
            await asyncio.sleep(EXPLAIN_INTERVAL)
            await self._explain()

    async def _explain(self) -> None:
        """Put why each queued job waits in its reason; write only reasons that changed."""
        walk = self.jobs.order.walk(self.jobs.running)
        changed = self._explainer.look(self.jobs.queue, walk, self.mesh.peers())
        if not changed:
            return
        changes = self.jobs.begin()
        self.jobs.set_reasons(changes, changed)
        try:
            await changes.commit()
        except StoreError as e:  # said again at the next look (the texts differ still)
            log.warning("cannot record why %d job(s) wait: %s", len(changed), e)

    async def drained(self) -> None:
        """Return once no runner holds a job of this dispatcher."""
        while any(peer.held for peer in self.mesh.peers()):
            self._released.clear()
            await self._released.wait()

    # what the API calls

    async def create(self, job: NewJob) -> JobRecord:
        """Queue ``job``; one whose ``source_key`` was seen returns that job instead."""
        changes = self.jobs.begin()
        created = self.jobs.create(changes, job)
        await changes.commit()
        return created.value[0]

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
        priority: int = 0,
        cpus: float | None = None,
        memory: int | None = None,
    ) -> JobRecord:
        """Queue a job; a ``source_key`` seen before returns that job instead.

        The key is what makes redelivered commit events (AMQP redelivery, a
        forge retrying a webhook) idempotent. ``fork_of``, ``priority``,
        ``cpus``, ``memory``: see ``JobRecord``.
        """
        return await self.create(
            NewJob(
                repo=repo,
                ref=ref,
                sha=sha,
                event=event,
                labels=labels,
                source_key=source_key,
                fork_of=fork_of,
                priority=priority,
                cpus=cpus,
                memory=memory,
            )
        )

    async def submit_many(self, jobs: list[NewJob]) -> list[JobRecord]:
        """Queue many jobs in one store transaction (no ``source_key``)."""
        changes = self.jobs.begin()
        created = self.jobs.create_many(changes, jobs)
        await changes.commit()
        return created.value

    async def resubmit(self, job_id: int) -> JobRecord:
        return await self.create(NewJob.again(await self.jobs.fetch(job_id)))

    async def cancel(self, job_id: int) -> JobRecord:
        job = await self.jobs.fetch(job_id)
        if job.terminal:
            raise Conflict(f"job {job_id} already ended ({job.state})")
        key = (job_id, job.attempt)
        peer = self.mesh.holder(key)
        changes = self.jobs.begin()
        if peer is None:
            # Queued, or held by no connected runner: nothing to stop.
            self.jobs.transition(
                changes, job_id, job.attempt, JobState.CANCELLED, "cancelled by user"
            )
            await changes.commit()
        else:
            self.jobs.request_cancel(changes, job)
            await changes.commit()
            self.mesh.cancel(peer, key, "cancelled by user")
        return await self.jobs.fetch(job_id)

    async def cancel_submission(self, job_id: int) -> list[JobRecord]:
        """Cancel a job and the matrix jobs it spawned; return each as it is now.

        The jobs that already ended are left as they are (and not returned);
        ``Conflict`` if none was still going.
        """
        cancelled: list[JobRecord] = []
        for j in await going(self.store, await self.jobs.fetch(job_id)):
            with contextlib.suppress(Conflict):  # ended meanwhile
                cancelled.append(await self.cancel(j.id))
        return cancelled

    async def adopt(self, job_id: int) -> None:
        """Act on what a standby wrote of a job (``dispatcher.notices``).

        A queued job memory does not hold joins the queue; a cancel asked
        for a live job is carried out (its runner is told).
        """
        try:
            stored = await self.store.get_job(job_id)
        except NotFound:
            return
        held = self.jobs.get(job_id)
        if held is None:
            if stored.state != JobState.QUEUED:
                return  # ended, or (active) already ours since recovery loaded it
            log.debug("job %d: queued by a standby dispatcher", job_id)
            self.jobs.changed(stored, new=True)
            asked = stored.cancel_requested
        else:
            asked = stored.cancel_requested and not held.cancel_requested
        if asked and not stored.terminal:
            with contextlib.suppress(Conflict):  # ended meanwhile
                await self.cancel(job_id)

    async def add_runner(self, url: str) -> Peer:
        peer = self.mesh.connect(url)
        if peer is None:
            raise Conflict(f"{url}: refused ({self.mesh.refused.get(url, 'duplicate')})")
        await self.write(AddEndpoint(url=peer.endpoint, at=time.time()))
        return peer

    def queued(self) -> int:
        return len(self.jobs.queue)

    def pending(self, job_id: int) -> Pending | None:
        """Why a queued job waits, its place in the queue and expected start."""
        return self._explainer.pending(job_id)

    def pending_counts(self) -> dict[str, int]:
        """Queued jobs by the reason they wait (``placement.REASONS``)."""
        return self._explainer.counts()

    @staticmethod
    def _session(peer: Peer) -> str:
        assert peer.session is not None  # noqa: S101 - a ready runner has a session
        return peer.session
