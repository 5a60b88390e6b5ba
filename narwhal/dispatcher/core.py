"""The dispatcher: one ROUTER socket, the job store, the scheduler.

Every state change is committed to the store before the frame that acts on
it is sent (a JOB is sent only after the job is recorded as ``assigned``), so
a crash between the two leaves a job that recovery finds, never one that
runs without a record.

Shutdown order (``aclose``): stop scheduling, stop the mesh loops, close the
socket with its linger, terminate the ZeroMQ context, close the store.
Runners keep running their jobs and report them to the next dispatcher.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import zmq
import zmq.asyncio

from narwhal.config import DispatcherConfig
from narwhal.dispatcher.links import BACKOFF_MAX, Link, check_endpoint, pick
from narwhal.dispatcher.store import JobRecord, SqliteStore
from narwhal.errors import NarwhalError, ProtocolError
from narwhal.mesh import protocol as p
from narwhal.mesh.transport import QuietLog, router_socket

log = logging.getLogger(__name__)

T = TypeVar("T")


class Conflict(NarwhalError):
    """The request does not fit the job's current state (e.g. cancel a finished job)."""


class Dispatcher:
    """Schedules stored jobs onto runners and records what they report."""

    def __init__(
        self, config: DispatcherConfig, *, context: zmq.asyncio.Context | None = None
    ) -> None:
        self.config = config
        self.session = uuid.uuid4().hex
        self._ctx = context or zmq.asyncio.Context()
        self._own_ctx = context is None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="narwhal-store")
        self._store: SqliteStore | None = None
        self._sock: zmq.asyncio.Socket | None = None
        self._links: dict[bytes, Link] = {}
        self._generation = 0
        #: Queued jobs in submission order (dicts keep insertion order).
        self._queue: dict[int, JobRecord] = {}
        #: Jobs found assigned/running at start, waiting for their runner's READY.
        self._orphans: dict[tuple[int, int], JobRecord] = {}
        self._orphan_deadline = 0.0
        self._wake = asyncio.Event()
        #: Set whenever a runner slot is given back (see ``drained``).
        self._released = asyncio.Event()
        self._watchers: dict[int, set[asyncio.Event]] = {}
        self._listeners: list[Callable[[JobRecord], None]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._quiet = QuietLog(log)
        self._closed = False
        self.bad_frames = 0

    # lifecycle

    async def __aenter__(self) -> Dispatcher:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        self.config.data_dir.mkdir(parents=True, exist_ok=True)
        self._store = await self._run(SqliteStore, self.config.db_path)
        self._sock = router_socket(self._ctx, linger_ms=self.config.mesh.linger_ms)
        await self._recover()
        for endpoint in (*self.config.runners, *await self.db(SqliteStore.endpoints)):
            self.connect(endpoint)
        for loop in (self._receive_loop(), self._liveness_loop(), self._schedule_loop()):
            self._spawn(loop)
        self._wake.set()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._sock is not None:
            self._sock.close(self.config.mesh.linger_ms)
        if self._own_ctx:
            self._ctx.term()
        if self._store is not None:
            await self._run(self._store.close)
        self._pool.shutdown(wait=True)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    async def db(self, method: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call a ``SqliteStore`` method on the store thread."""
        assert self._store is not None  # noqa: S101 - set in start()
        return await self._run(method, self._store, *args, **kwargs)

    async def _recover(self) -> None:
        for job in await self.db(
            SqliteStore.list_jobs, states=["queued"], limit=-1, ascending=True
        ):
            self._queue[job.id] = job
        active = await self.db(SqliteStore.list_jobs, states=["assigned", "running"], limit=-1)
        self._orphans = {(j.id, j.attempt): j for j in active}
        # Runners that still hold these jobs report them in READY; give them
        # time to reconnect before the jobs go back to the queue.
        self._orphan_deadline = time.monotonic() + max(2 * self.config.mesh.dead_after, 5.0)

    # runner links

    def connect(self, endpoint: str) -> Link:
        """Connect to a runner endpoint (idempotent per endpoint)."""
        endpoint = check_endpoint(endpoint)
        for link in self._links.values():
            if link.endpoint == endpoint:
                return link
        return self._open(endpoint)

    def _open(self, endpoint: str, backoff: float = 1.0) -> Link:
        assert self._sock is not None  # noqa: S101 - set in start()
        self._generation += 1
        alias = f"{self._generation}:{endpoint}".encode()
        self._sock.setsockopt(zmq.CONNECT_ROUTING_ID, alias)
        self._sock.connect(endpoint)
        link = Link(endpoint=endpoint, alias=alias, backoff=backoff)
        self._links[alias] = link
        # Queued until the connection is up; the runner answers with READY.
        self._send(link, p.Heartbeat(session=self.session))
        return link

    def _reopen(self, link: Link, backoff: float) -> None:
        assert self._sock is not None  # noqa: S101 - set in start()
        del self._links[link.alias]
        with contextlib.suppress(zmq.ZMQError):
            self._sock.disconnect(link.endpoint)
        self._open(link.endpoint, backoff)

    def links(self) -> list[Link]:
        return list(self._links.values())

    def _send(self, link: Link, message: p.Message) -> bool:
        assert self._sock is not None  # noqa: S101 - set in start()
        try:
            self._sock.send_multipart([link.alias, p.encode(message)], flags=zmq.NOBLOCK)
        except zmq.Again:
            self._quiet.warning(link.endpoint, "runner %s: send queue full", link.endpoint)
            return False
        except zmq.ZMQError as e:
            self._quiet.warning(link.endpoint, "runner %s: cannot send: %s", link.endpoint, e)
            return False
        return True

    async def _liveness_loop(self) -> None:
        mesh = self.config.mesh
        while True:
            await asyncio.sleep(mesh.heartbeat_interval)
            now = time.monotonic()
            for link in list(self._links.values()):
                if link.state == "ready" and now - link.last_seen > mesh.dead_after:
                    silent = now - link.last_seen
                    await self._lose(
                        link, f"runner {link.runner_id} lost: silent for {silent:.1f}s"
                    )
                    self._reopen(link, 1.0)
                elif link.state == "ready":
                    self._send(link, p.Heartbeat(session=self.session))
                elif now - link.connected_at > max(link.backoff, mesh.dead_after):
                    self._reopen(link, min(link.backoff * 2, BACKOFF_MAX))
            if self._orphans and now > self._orphan_deadline:
                await self._requeue_orphans()

    async def _lose(self, link: Link, reason: str) -> None:
        """The runner behind ``link`` is gone: its jobs go back to the queue."""
        log.warning("%s", reason)
        link.state = "lost"
        for job_id, attempt in sorted(link.jobs):
            await self._requeue(job_id, attempt, reason)
        self._release(link, *link.jobs)

    async def _requeue_orphans(self) -> None:
        orphans, self._orphans = self._orphans, {}
        for job_id, attempt in orphans:
            await self._requeue(job_id, attempt, "no runner reported the job after a restart")

    async def _requeue(self, job_id: int, attempt: int, reason: str) -> None:
        job = await self.db(SqliteStore.get_job, job_id)
        if job.attempt != attempt or job.terminal:
            return
        if job.cancel_requested:
            await self._finish(job_id, attempt, "cancelled", f"cancelled; {reason}")
        elif attempt >= self.config.max_attempts:
            await self._finish(
                job_id, attempt, "error", f"{reason}; gave up after {attempt} attempts"
            )
        else:
            requeued = await self._transition(job_id, attempt, "queued", f"{reason}; requeued")
            if requeued is not None:
                self._queue[requeued.id] = requeued

    async def _finish(self, job_id: int, attempt: int, status: str, reason: str) -> None:
        await self._transition(job_id, attempt, status, reason)

    async def _transition(
        self, job_id: int, attempt: int, to: str, reason: str, runner_id: str | None = None
    ) -> JobRecord | None:
        """Commit a state change, then tell log followers and listeners."""
        job = await self.db(
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

    # frames from runners

    async def _receive_loop(self) -> None:
        assert self._sock is not None  # noqa: S101 - set in start()
        while True:
            parts = await self._sock.recv_multipart()
            link = self._links.get(parts[0])
            if link is None or len(parts) != 2:
                self.bad_frames += 1
                self._quiet.warning("unknown-peer", "frame from unknown peer %r ignored", parts[0])
                continue
            try:
                message = p.decode(parts[1])
            except ProtocolError as e:
                self.bad_frames += 1
                self._quiet.warning(link.endpoint, "runner %s: bad frame: %s", link.endpoint, e)
                continue
            link.seen()
            try:
                await self._handle(link, message)
            except NarwhalError as e:
                self._quiet.warning(
                    link.endpoint, "runner %s: %s frame refused: %s", link.endpoint, message.KIND, e
                )

    async def _handle(self, link: Link, message: p.Message) -> None:
        handler = self._handlers.get(type(message))
        if handler is None:
            self._quiet.warning(
                link.endpoint, "runner %s: unexpected %s frame", link.endpoint, message.KIND
            )
            return
        await handler(self, link, message)

    async def _on_heartbeat(self, link: Link, message: p.Heartbeat) -> None:
        if link.state != "ready" or message.session != link.session:
            # A runner we have no READY from for this session: ask again.
            self._send(link, p.Heartbeat(session=self.session))

    async def _on_ready(self, link: Link, message: p.Ready) -> None:
        if link.session is not None and link.session != message.session:
            keep = {tuple(a) for a in message.active}
            gone = {j for j in link.jobs if j not in keep}
            link.jobs -= gone
            for job_id, attempt in sorted(gone):
                await self._requeue(job_id, attempt, f"runner {message.runner_id} restarted")
        link.state = "ready"
        link.runner_id = message.runner_id
        link.session = message.session
        link.capacity = message.capacity
        link.labels = dict(message.labels)
        link.version = message.version
        link.backoff = 1.0
        for pair in message.active:
            await self._adopt(link, pair)
        log.info(
            "runner %s ready at %s with %d slot(s)", link.runner_id, link.endpoint, link.capacity
        )
        self._wake.set()

    async def _adopt(self, link: Link, pair: tuple[int, ...]) -> None:
        """A runner reports a job it still holds (after a dispatcher restart)."""
        if len(pair) != 2:
            raise ProtocolError("ready.active: expected [job_id, attempt] pairs")
        job_id, attempt = pair
        link.jobs.add((job_id, attempt))
        self._orphans.pop((job_id, attempt), None)
        try:
            job = await self.db(SqliteStore.get_job, job_id)
        except NarwhalError:
            job = None
        if job is None or job.attempt != attempt or job.terminal:
            self._send(link, p.Cancel(job_id=job_id, attempt=attempt, reason="superseded"))

    async def _on_accept(self, link: Link, message: p.Accept) -> None:
        await self._transition(
            message.job_id, message.attempt, "running", f"accepted by {link.runner_id}"
        )

    async def _on_reject(self, link: Link, message: p.Reject) -> None:
        self._release(link, (message.job_id, message.attempt))
        await self._requeue(
            message.job_id,
            message.attempt,
            f"runner {link.runner_id} rejected it: {message.reason}",
        )

    async def _on_checked_out(self, link: Link, message: p.CheckedOut) -> None:
        variants = message.variants
        first = variants[0] if variants else None
        fresh = await self.db(
            SqliteStore.set_checkout,
            message.job_id,
            attempt=message.attempt,
            sha=message.sha,
            pipeline=message.pipeline,
            matrix=first,
        )
        if not fresh or len(variants) < 2:
            return
        parent = await self.db(SqliteStore.get_job, message.job_id)
        if parent.parent_id is not None:
            return
        for variant in variants[1:]:
            await self._create(
                repo=parent.repo,
                ref=parent.ref,
                sha=message.sha,
                event=parent.event,
                labels=parent.labels,
                matrix=variant,
                parent_id=parent.id,
                reason=f"matrix of job {parent.id}",
            )

    async def _on_log(self, link: Link, message: p.Log) -> None:
        await self.db(
            SqliteStore.append_log,
            message.job_id,
            attempt=message.attempt,
            seq=message.seq,
            data=message.data,
        )
        self._notify(message.job_id)

    async def _on_step_started(self, link: Link, message: p.StepStarted) -> None:
        await self.db(
            SqliteStore.step_started,
            message.job_id,
            attempt=message.attempt,
            index=message.index,
            name=message.name,
        )

    async def _on_step_finished(self, link: Link, message: p.StepFinished) -> None:
        await self.db(
            SqliteStore.step_finished,
            message.job_id,
            attempt=message.attempt,
            index=message.index,
            name=message.name,
            status=message.status,
            exit_code=message.exit_code,
            duration=message.duration,
        )

    async def _on_done(self, link: Link, message: p.Done) -> None:
        self._release(link, (message.job_id, message.attempt))
        reason = message.reason or message.status
        await self._finish(message.job_id, message.attempt, message.status, reason)

    _handlers: dict[type, Callable[[Dispatcher, Link, Any], Coroutine[Any, Any, None]]] = {
        p.Heartbeat: _on_heartbeat,
        p.Ready: _on_ready,
        p.Accept: _on_accept,
        p.Reject: _on_reject,
        p.CheckedOut: _on_checked_out,
        p.Log: _on_log,
        p.StepStarted: _on_step_started,
        p.StepFinished: _on_step_finished,
        p.Done: _on_done,
    }

    # scheduling

    async def _schedule_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._schedule()

    async def _schedule(self) -> None:
        for job in list(self._queue.values()):
            link = pick(self._links.values(), job.labels)
            if link is None:
                continue
            key = (job.id, job.attempt)
            link.jobs.add(key)  # reserve the slot before the store round trip
            del self._queue[job.id]
            assigned = await self._transition(
                job.id, job.attempt, "assigned", f"assigned to {link.runner_id}", link.runner_id
            )
            if assigned is None:
                link.jobs.discard(key)
                continue
            frame = p.Job(
                job_id=job.id,
                attempt=job.attempt,
                repo=job.repo,
                ref=job.ref,
                sha=job.sha,
                event=job.event,
                matrix=job.matrix,
            )
            if not self._send(link, frame):
                self._release(link, key)
                await self._requeue(job.id, job.attempt, f"could not send to {link.runner_id}")

    def _release(self, link: Link, *keys: tuple[int, int]) -> None:
        """Give slots back: schedule again, and tell ``drained`` waiters."""
        link.jobs.difference_update(keys)
        self._released.set()
        self._wake.set()

    async def drained(self) -> None:
        """Return once no runner holds a job of this dispatcher."""
        while any(link.jobs for link in self._links.values()):
            self._released.clear()
            await self._released.wait()

    # what the API calls

    async def _create(self, **fields: Any) -> JobRecord:
        job, created = await self.db(SqliteStore.create_job_once, **fields)
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
    ) -> JobRecord:
        """Queue a job; a ``source_key`` seen before returns that job instead.

        The key is what makes redelivered commit events (AMQP redelivery, a
        forge retrying a webhook) idempotent.
        """
        return await self._create(
            repo=repo, ref=ref, sha=sha, event=event, labels=labels, source_key=source_key
        )

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
        )

    async def cancel(self, job_id: int) -> JobRecord:
        job = await self.db(SqliteStore.get_job, job_id)
        if job.terminal:
            raise Conflict(f"job {job_id} already ended ({job.state})")
        if job.state == "queued":
            self._queue.pop(job_id, None)
            await self._finish(job_id, job.attempt, "cancelled", "cancelled by user")
        else:
            await self.db(SqliteStore.request_cancel, job_id)
            link = self._holder(job_id, job.attempt)
            if link is None:
                await self._finish(job_id, job.attempt, "cancelled", "cancelled by user")
            else:
                self._send(
                    link, p.Cancel(job_id=job_id, attempt=job.attempt, reason="cancelled by user")
                )
        return await self.db(SqliteStore.get_job, job_id)

    def _holder(self, job_id: int, attempt: int) -> Link | None:
        for link in self._links.values():
            if (job_id, attempt) in link.jobs:
                return link
        return None

    async def add_runner(self, url: str) -> Link:
        link = self.connect(url)
        await self.db(SqliteStore.add_endpoint, link.endpoint)
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
