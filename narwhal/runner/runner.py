"""The runner daemon: a DEALER socket bound where the dispatcher connects.

A runner offers ``capacity`` slots. It answers the dispatcher's first
heartbeat (and the first from any new dispatcher session) with READY, takes
jobs while it has free slots, runs each in a workspace of its own and streams
everything back as frames. It never imports the dispatcher.

Shutdown order (``aclose``): stop taking jobs (REJECT from then on), ask the
running jobs to stop and give them ``cancel_grace`` plus a margin to report,
then close the socket with its linger so the last frames leave.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import shutil
import time
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import zmq
import zmq.asyncio

from narwhal import __version__
from narwhal.config import RunnerConfig
from narwhal.errors import CheckoutError, PipelineError, ProtocolError
from narwhal.mesh import protocol as p
from narwhal.mesh.transport import QuietLog, dealer_socket
from narwhal.pipeline import Step, load_path
from narwhal.runner.checkout import checkout
from narwhal.runner.executor import Executor, LocalExecutor, Stop
from narwhal.runner.job import Context, Outcome, branch_of, run_pipeline

log = logging.getLogger(__name__)

PIPELINE_FILE = "narwhal.yml"

T = TypeVar("T")


@dataclass(slots=True)
class _Active:
    job: p.Job
    stop: Stop
    task: asyncio.Task[None]


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
        self._executor = executor or LocalExecutor(grace=config.cancel_grace)
        self._sock: zmq.asyncio.Socket | None = None
        self._dispatcher: str | None = None
        self._active: dict[tuple[int, int], _Active] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self._quiet = QuietLog(log)
        self.endpoint = ""
        self.bad_frames = 0

    async def __aenter__(self) -> Runner:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        self.config.work_dir.mkdir(parents=True, exist_ok=True)
        self._sock = dealer_socket(self._ctx, linger_ms=self.config.mesh.linger_ms)
        try:
            self._sock.bind(self.config.listen)
        except zmq.ZMQError as e:
            self._sock.close(0)
            raise OSError(f"cannot listen on {self.config.listen}: {e}") from e
        self.endpoint = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._spawn(self._receive_loop())
        self._spawn(self._heartbeat_loop())
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

    async def aclose(self) -> None:
        """Stop taking jobs, stop running ones, report, close the socket."""
        if self._closing:
            return
        self._closing = True
        jobs = [a.task for a in self._active.values()]
        for active in self._active.values():
            active.stop.set("cancelled", "runner shutting down")
        if jobs:
            await asyncio.wait(jobs, timeout=self.config.cancel_grace + 5)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._sock is not None:
            self._sock.close(self.config.mesh.linger_ms)
        if self._own_ctx:
            self._ctx.term()

    # mesh

    async def send(self, message: p.Message) -> None:
        assert self._sock is not None  # noqa: S101 - set in start()
        await self._sock.send(p.encode(message))

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
            await self._handle(message)

    async def _handle(self, message: p.Message) -> None:
        if isinstance(message, p.Heartbeat):
            if message.session != self._dispatcher:
                self._dispatcher = message.session
                await self.send(self._ready())
        elif isinstance(message, p.Job):
            await self._take(message)
        elif isinstance(message, p.Cancel):
            active = self._active.get((message.job_id, message.attempt))
            if active is not None:
                active.stop.set("cancelled", message.reason or "cancelled")
        else:
            self._quiet.warning(
                "unexpected",
                "runner %s: unexpected %s frame from dispatcher",
                self.config.runner_id,
                message.KIND,
            )

    def _ready(self) -> p.Ready:
        return p.Ready(
            runner_id=self.config.runner_id,
            session=self.session,
            capacity=self.config.capacity,
            labels=dict(self.config.labels),
            version=__version__,
            active=tuple((j, a) for j, a in self._active),
        )

    async def _heartbeat_loop(self) -> None:
        assert self._sock is not None  # noqa: S101 - set in start()
        beat = p.encode(p.Heartbeat(session=self.session))
        while True:
            await asyncio.sleep(self.config.mesh.heartbeat_interval)
            if self._dispatcher is None:
                continue
            with contextlib.suppress(zmq.Again):
                await self._sock.send(beat, flags=zmq.NOBLOCK)

    # jobs

    async def _take(self, job: p.Job) -> None:
        key = (job.job_id, job.attempt)
        if key in self._active:
            return  # a resent JOB for an attempt already running
        if self._closing or len(self._active) >= self.config.capacity:
            reason = "runner shutting down" if self._closing else "no free slot"
            await self.send(p.Reject(job_id=job.job_id, attempt=job.attempt, reason=reason))
            return
        stop = Stop()
        task = self._spawn(self._run(job, stop))
        self._active[key] = _Active(job=job, stop=stop, task=task)
        await self.send(p.Accept(job_id=job.job_id, attempt=job.attempt))

    async def _run(self, job: p.Job, stop: Stop) -> None:
        started = time.monotonic()
        reporter = FrameReporter(self, job)
        workspace = self.config.work_dir / f"job-{job.job_id}-{job.attempt}-{secrets.token_hex(4)}"
        try:
            outcome = await self._execute(job, stop, reporter, workspace)
        except Exception as e:  # a bug must not take the slot with it
            log.exception("runner %s: job %d crashed", self.config.runner_id, job.job_id)
            outcome = Outcome(status="error", reason=f"runner error: {e}", steps=())
        finally:
            await asyncio.to_thread(shutil.rmtree, workspace, True)
        try:
            await self.send(
                p.Done(
                    job_id=job.job_id,
                    attempt=job.attempt,
                    status=outcome.status,
                    reason=outcome.reason,
                    duration=time.monotonic() - started,
                    steps=outcome.steps,
                )
            )
        finally:
            self._active.pop((job.job_id, job.attempt), None)

    async def _execute(
        self, job: p.Job, stop: Stop, reporter: FrameReporter, workspace: Path
    ) -> Outcome:
        try:
            sha = await _until_stopped(
                checkout(job.repo, ref=job.ref, sha=job.sha, workspace=workspace), stop
            )
            if sha is None:
                return Outcome(status=stop.status, reason=stop.reason, steps=())
            pipeline_file = load_path(workspace / PIPELINE_FILE)
            pipeline = pipeline_file.pipeline(job.matrix)
        except (CheckoutError, PipelineError) as e:
            await reporter.output(f"{e}\n".encode())
            return Outcome(status="error", reason=str(e), steps=())
        variants = pipeline_file.variants if job.matrix is None else ()
        await self.send(
            p.CheckedOut(
                job_id=job.job_id,
                attempt=job.attempt,
                sha=sha,
                pipeline=pipeline.name,
                variants=tuple(dict(v) for v in variants),
            )
        )
        context = Context(branch=branch_of(job.ref), event=job.event, sha=sha, job_id=job.job_id)
        return await run_pipeline(
            pipeline,
            workspace=workspace,
            executor=self._executor,
            reporter=reporter,
            stop=stop,
            context=context,
            default_timeout=job.timeout or self.config.default_timeout,
        )


async def _until_stopped(coro: Coroutine[Any, Any, T], stop: Stop) -> T | None:
    """Await ``coro`` unless ``stop`` is set first; then cancel it and return None."""
    work = asyncio.create_task(coro)
    stopped = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({work, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        if not work.done():
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work
    return None if work.cancelled() else work.result()


class FrameReporter:
    """Sends a job's step boundaries and output to the dispatcher as frames."""

    def __init__(self, runner: Runner, job: p.Job) -> None:
        self._runner = runner
        self._job = job
        self._seq = 0

    async def step_started(self, index: int, step: Step) -> None:
        await self._runner.send(
            p.StepStarted(
                job_id=self._job.job_id, attempt=self._job.attempt, index=index, name=step.name
            )
        )

    async def output(self, data: bytes) -> None:
        for start in range(0, len(data), p.MAX_LOG_CHUNK):
            chunk = data[start : start + p.MAX_LOG_CHUNK]
            await self._runner.send(
                p.Log(job_id=self._job.job_id, attempt=self._job.attempt, seq=self._seq, data=chunk)
            )
            self._seq += 1

    async def step_finished(self, outcome: p.StepOutcome) -> None:
        await self._runner.send(
            p.StepFinished(
                job_id=self._job.job_id,
                attempt=self._job.attempt,
                index=outcome.index,
                name=outcome.name,
                status=outcome.status,
                exit_code=outcome.exit_code,
                duration=outcome.duration,
            )
        )
