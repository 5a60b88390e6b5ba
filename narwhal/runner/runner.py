"""The runner daemon: a DEALER socket bound where the dispatcher connects.

A runner offers ``capacity`` slots. It answers every HELLO (one per new
dispatcher connection) with READY, takes jobs while it has free slots, runs
each in a workspace of its own and sends everything back on the job's
``JobStream``, which keeps frames until the dispatcher acknowledges them. It
never imports the dispatcher.

This module is the runner's mesh side and lifecycle: the socket, HELLO and
READY, heartbeats, ACKs and CANCELs routed to the attempts it holds, and
the shutdown order. READY carries the runner's state (``state``), a
heartbeat only a state that changed since the one sent last. What one job
attempt does, from its JOB to its DONE, is ``attempt``'s; the frames it
sends are made by ``reporter``.

While the dispatcher is away (silent for ``heartbeat_interval x liveness``)
jobs keep running; their frames wait in their streams (bounded) and are
resent after the next HELLO.

Shutdown order (``aclose``): refuse new jobs; let running jobs finish for up
to ``drain_timeout``; cancel the rest (SIGTERM, grace, SIGKILL) and wait for
their DONE; wait (bounded) for the dispatcher to acknowledge the last frames
(these first steps are ``drain``, after which the entrypoint says goodbye on
mDNS); close the socket with its linger; terminate the context if it is ours.
``hurry`` (a second signal) ends the draining and kills running steps at
once; their DONE frames are still sent.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio

from narwhal import __version__
from narwhal.config import RunnerConfig
from narwhal.errors import ProtocolError
from narwhal.mesh import protocol as p
from narwhal.mesh.transport import dealer_socket, pin_curve, send_now
from narwhal.quietlog import QuietLog
from narwhal.runner.attempt import Attempt, AttemptRunner
from narwhal.runner.executor import Executor, LocalExecutor, Stop
from narwhal.runner.secret_env import SecretsExecutor
from narwhal.runner.state import StateReporter, engine_of
from narwhal.runner.stream import JobStream
from narwhal.supervise import spawn

log = logging.getLogger(__name__)


def executor_for(config: RunnerConfig) -> SecretsExecutor:
    """The executor ``config.executor`` names, handing every step the runner's secrets.

    The Docker executor (and with it the Docker SDK) is imported only when
    it is the one chosen: a runner with the local executor never loads it.
    Close the executor with ``aclose`` (the Docker one holds an engine connection).
    """
    inner: Executor
    if config.executor == "docker":
        from narwhal.runner.docker import DockerExecutor

        inner = DockerExecutor(config)
    else:
        inner = LocalExecutor(grace=config.cancel_grace)
    return SecretsExecutor(inner, config.secrets)


class Runner:
    """One runner process's mesh side and job loop."""

    def __init__(
        self,
        config: RunnerConfig,
        *,
        context: zmq.asyncio.Context | None = None,
        executor: Executor | None = None,
    ) -> None:
        self.config = config
        self.session = uuid.uuid4().hex
        self._ctx = context or zmq.asyncio.Context()
        self._own_ctx = context is None
        if executor is None:  # the daemons pass theirs, chosen once the engine answered
            executor = executor_for(config)
        self._executor = executor
        self._sock: zmq.asyncio.Socket | None = None
        self._dispatcher: str | None = None
        self._heard = 0.0
        self._active: dict[tuple[int, int], Attempt] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self._drained = asyncio.Event()
        self._hurried = asyncio.Event()
        self._stopping = False
        self._closed = False
        self._quiet = QuietLog(log)
        self.endpoint = ""
        self.bad_frames = 0
        #: Workspaces live under a folder of this runner's own, so that
        #: ``reap`` never touches another runner's jobs on the same machine.
        self._work = config.work_dir / re.sub(r"[^A-Za-z0-9._-]", "_", config.runner_id)
        self._attempts = AttemptRunner(config, executor=self._executor, work=self._work)
        self.state = StateReporter(
            self._work,
            self._attempts.mirrors.index,
            engine_of(self._executor),
            interval=config.mesh.heartbeat_interval,
            engine_refresh=config.engine_refresh,
        )

    async def __aenter__(self) -> Runner:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        await asyncio.to_thread(_private_dir, self._work / "mirrors")
        if self.config.executor == "local":
            log.warning(
                "runner %s: the local executor does not isolate steps from this runner's "
                "user: a step can read and change whatever that user can (other jobs' "
                "workspaces, the runner's files); use --executor docker for code you do not trust",
                self.config.runner_id,
            )
        reaped = await asyncio.to_thread(self._executor.reap, self._work)
        if reaped:
            log.warning(
                "runner %s: stopped %d step(s) left by an earlier run",
                self.config.runner_id,
                reaped,
            )
        await self._attempts.load()
        await self.state.start()
        self._sock = dealer_socket(self._ctx, linger_ms=self.config.mesh.linger_ms)
        curve = self.config.curve
        if curve is not None:
            # Only the holder of the dispatcher's secret key completes a
            # handshake: any other peer gets no READY and cannot send a JOB.
            pin_curve(self._sock, curve.public_key, curve.secret_key, curve.server_key)
        else:
            log.warning(
                "runner %s: mesh authentication is OFF: any process that reaches %s "
                "can send this runner jobs",
                self.config.runner_id,
                self.config.listen,
            )
        try:
            self._sock.bind(self.config.listen)
        except zmq.ZMQError as e:
            self._sock.close(0)
            raise OSError(f"cannot listen on {self.config.listen}: {e}") from e
        self.endpoint = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        spawn(self._tasks, "runner receive loop", self._receive_loop)
        spawn(self._tasks, "runner heartbeat loop", self._heartbeat_loop)
        if self.state.engine is not None:
            spawn(self._tasks, "runner engine state loop", self.state.watch_engine)
        log.info(
            "runner %s listening on %s with %d slot(s)",
            self.config.runner_id,
            self.endpoint,
            self.config.capacity,
        )

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def drain(self) -> None:
        """Shutdown's first half: refuse new jobs, drain or cancel running ones, report them.

        The socket stays open, so an entrypoint can do what must happen
        between the last report and the close (say goodbye on mDNS).
        Idempotent; ``aclose`` calls it.
        """
        if self._closing:
            await self._drained.wait()
            return
        self._closing = True
        await self._wait_jobs(self.config.drain_timeout, until_hurried=True)
        for active in self._active.values():
            active.stop.set("cancelled", "runner shutting down")
            if self._hurried.is_set():
                active.stop.hurry("cancelled", "runner shutting down at once")
        # Also after a hurry: the steps are killed, and their DONE frames are
        # what records the jobs as cancelled.
        await self._wait_jobs(self.config.cancel_grace + 5)
        if self._dispatcher is not None:
            closed = [asyncio.create_task(a.stream.closed.wait()) for a in self._active.values()]
            if closed:
                await asyncio.wait(closed, timeout=self.config.mesh.dead_after)
                for waiter in closed:
                    waiter.cancel()
        self._drained.set()

    def hurry(self) -> None:
        """Stop at once (a second Ctrl-C): no more draining, running steps get SIGKILL now.

        Jobs are still reported (cancelled) before the socket closes.
        """
        self._hurried.set()
        if self._closing:  # else ``drain`` does it when it starts
            for active in self._active.values():
                active.stop.hurry("cancelled", "runner shutting down at once")

    async def aclose(self) -> None:
        """Refuse new jobs, drain or cancel running ones, report, close."""
        if self._stopping:
            return
        self._stopping = True
        await self.drain()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._sock is not None:
            self._sock.close(self.config.mesh.linger_ms)
        if self._own_ctx:
            self._ctx.term()
        close = getattr(self._executor, "aclose", None)
        if close is not None:  # the Docker executor holds an engine connection
            await close()
        self._closed = True

    async def _wait_jobs(self, timeout: float, *, until_hurried: bool = False) -> None:
        """Until running jobs end or ``timeout`` seconds pass (or ``hurry``, if asked)."""
        running = [a.task for a in self._active.values() if a.task is not None and a.running]
        if not running or timeout <= 0:
            return
        ended = asyncio.ensure_future(asyncio.wait(running))
        waits: set[asyncio.Future[Any]] = {ended}
        if until_hurried:
            waits.add(asyncio.ensure_future(self._hurried.wait()))
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waits:
                waiter.cancel()

    # mesh

    def _send(self, frame: bytes) -> bool:
        if self._sock is None or self._closed:
            return False
        try:
            send_now(self._sock, [frame])
        except zmq.ZMQError:  # no dispatcher connected, or its queue is full
            return False
        return True

    def send(self, message: p.Message) -> bool:
        return self._send(p.encode(message))

    async def _receive_loop(self) -> None:
        assert self._sock is not None  # noqa: S101 - set in start()
        while True:
            frame = await self._sock.recv()
            try:
                message = p.decode(frame)
            except ProtocolError as e:
                self.bad_frames += 1
                self._quiet.warning(
                    "bad-frame",
                    "runner %s: bad frame from dispatcher: %s",
                    self.config.runner_id,
                    e,
                )
                continue
            self._heard = time.monotonic()
            await self._handle(message)

    async def _handle(self, message: p.Message) -> None:
        if isinstance(message, p.Hello):
            self._greet(message.session)
        elif isinstance(message, p.Heartbeat):
            if message.session != self._dispatcher:
                self._greet(message.session)
        elif isinstance(message, p.Ack):
            self._ack(message)
        elif isinstance(message, p.Job):
            await self._take(message)
        elif isinstance(message, p.Cancel):
            active = self._active.get((message.job_id, message.attempt))
            if active is not None:
                active.stop.set("cancelled", message.reason or "cancelled")
        elif isinstance(message, p.Refused):
            # The dispatcher drops the link next: not "silent", refused.
            self._dispatcher = None
            self._quiet.warning(
                "refused",
                "runner %s: the dispatcher refused this runner: %s",
                self.config.runner_id,
                message.reason,
            )
        else:
            self._quiet.warning(
                "unexpected",
                "runner %s: unexpected %s frame from dispatcher",
                self.config.runner_id,
                message.KIND,
            )

    def _greet(self, session: str) -> None:
        """A dispatcher (re)connected: introduce ourselves, then resend what it lacks."""
        if session != self._dispatcher:
            log.info("runner %s: dispatcher %s connected", self.config.runner_id, session[:8])
        self._dispatcher = session
        self.send(self._ready())
        for active in self._active.values():
            active.stream.resend()

    def _ready(self) -> p.Ready:
        # Always the whole state: a dispatcher (re)connecting knows nothing yet.
        state = self.state.current()
        self.state.last_sent = state
        return p.Ready(
            runner_id=self.config.runner_id,
            session=self.session,
            capacity=self.config.capacity,
            labels=dict(self.config.labels),
            version=__version__,
            active=tuple((j, a, x.stream.next_unacked) for (j, a), x in self._active.items()),
            state=state,
        )

    def _ack(self, ack: p.Ack) -> None:
        for job_id, attempt, seq in ack.streams:
            active = self._active.get((job_id, attempt))
            if active is None:
                continue
            active.stream.ack(seq)
            if active.stream.closed.is_set():
                del self._active[(job_id, attempt)]

    async def _heartbeat_loop(self) -> None:
        mesh = self.config.mesh
        beat = p.encode(p.Heartbeat(session=self.session))
        while True:
            await asyncio.sleep(mesh.heartbeat_interval)
            if self._dispatcher is None:
                continue
            now = time.monotonic()
            if now - self._heard > mesh.dead_after:
                log.warning(
                    "runner %s: dispatcher silent for %.1fs; %d job(s) keep running",
                    self.config.runner_id,
                    now - self._heard,
                    sum(a.running for a in self._active.values()),
                )
                self._dispatcher = None
                continue
            await self.state.refresh()
            changed = self.state.worth_sending()
            if changed is None:
                self._send(beat)
            elif self.send(p.Heartbeat(session=self.session, state=changed)):
                self.state.last_sent = changed
            for active in self._active.values():
                stream = active.stream
                if stream.pending and now - stream.last_progress > mesh.dead_after:
                    stream.resend()

    # jobs

    def running(self) -> int:
        return sum(a.running for a in self._active.values())

    async def _take(self, job: p.Job) -> None:
        key = (job.job_id, job.attempt)
        if key in self._active:
            return  # a resent JOB for an attempt we already have
        reason = self._refusal(job)
        if reason:
            self.send(p.Reject(job_id=job.job_id, attempt=job.attempt, reason=reason))
            return
        stream = JobStream(
            job.job_id,
            job.attempt,
            send=self._send,
            max_frames=self.config.stream_frames,
            max_bytes=self.config.stream_bytes,
        )
        active = Attempt(job=job, stop=Stop(), stream=stream)
        self._active[key] = active
        await stream.put(lambda seq: p.Accept(job_id=job.job_id, attempt=job.attempt, seq=seq))
        active.task = self._spawn(self._attempts.run(job, active.stop, stream))
        active.task.add_done_callback(lambda _: self.state.job_ended())

    def _refusal(self, job: p.Job) -> str:
        if job.runner_session != self.session:
            return "meant for an earlier session of this runner"
        if self._closing:
            return "runner shutting down"
        if self.running() >= self.config.capacity:
            return "no free slot"
        return ""


def _private_dir(path: Path) -> None:
    """Make ``path`` (and missing parents) readable by this user only.

    The runner's own folder is made private even when it exists: the
    workspaces, mirrors and per-job homes under it are nobody else's.
    """
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.parent.chmod(0o700)
