"""One job attempt on a runner, from its JOB frame to its DONE frame.

An attempt checks the commit out into a workspace of its own, reads its
narwhal.yml from the commit, runs the pipeline (``job.run_pipeline``) and
ends with DONE, whatever happened: a failed checkout, an unreadable
narwhal.yml and even a bug in the runner end the attempt in ``error`` with
the reason in its log, so the slot is never lost; DONE's ``fault`` says
whether that was the runner's side (its checkout, its engine, itself) or
the job's own making. CHECKED_OUT says what the checkout cost and what the
pipeline asks of a runner. Every frame goes on the
attempt's ``JobStream`` through a ``FrameReporter``, which masks the job's
secrets and the runner's. The mesh side (taking JOB frames, ACKs, CANCEL)
is the ``Runner``'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import shutil
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from narwhal.config import RunnerConfig
from narwhal.errors import CheckoutError, PipelineError, RepoError
from narwhal.mesh import protocol as p
from narwhal.pipeline import PIPELINE_FILE
from narwhal.redact import redacted
from narwhal.repos import check_ref, check_repo, check_sha
from narwhal.runner.checkout import Checkout, GitFailed, MirrorCache, PipelineFiles
from narwhal.runner.executor import Executor, Stop
from narwhal.runner.job import Context, Outcome, branch_of, run_pipeline
from narwhal.runner.masking import mask_text
from narwhal.runner.mirror_index import default_limit
from narwhal.runner.reporter import FrameReporter
from narwhal.runner.secret_env import for_job
from narwhal.runner.stream import JobStream
from narwhal.runner.usage import Sampling

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(slots=True)
class Attempt:
    """A job attempt the runner holds: running, or with frames not yet acknowledged."""

    job: p.Job
    stop: Stop
    stream: JobStream
    task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()


class AttemptRunner:
    """Runs job attempts for one runner: its executor, its mirrors, its work folder."""

    def __init__(self, config: RunnerConfig, *, executor: Executor, work: Path) -> None:
        self.config = config
        self._executor = executor
        self._work = work
        self._mirrors = MirrorCache(work / "mirrors", allow_local=config.allow_local_repos)
        self._pipelines = PipelineFiles(self._mirrors, name=PIPELINE_FILE)

    @property
    def mirrors(self) -> MirrorCache:
        return self._mirrors

    async def load(self) -> None:
        """Bound the mirror cache (``mirror_cache_size``, else a share of the free
        disk) and rebuild its index from disk; at the runner's start."""
        limit = self.config.mirror_cache_size
        if limit is None:
            limit = await asyncio.to_thread(default_limit, self._work)
        await self._mirrors.load(limit)
        index = self._mirrors.index
        log.info(
            "runner %s: mirror cache bound %d MiB%s; %d mirror(s) of %d MiB held",
            self.config.runner_id,
            limit >> 20,
            "" if self.config.mirror_cache_size else " (a quarter of the free disk)",
            len(index.entries),
            index.total >> 20,
        )

    async def run(self, job: p.Job, stop: Stop, stream: JobStream) -> None:
        """Run the attempt and put its DONE on ``stream``; never raises but CancelledError."""
        started = time.monotonic()
        # The job's own secrets are masked like the runner's (its log, its reason).
        secret_values = [*self.config.secrets.values(), *job.secrets.values()]
        reporter = FrameReporter(stream, secret_values)
        name = f"job-{job.job_id}-{job.attempt}-{secrets.token_hex(4)}"
        workspace = self._work / name
        # Its workspace borrows the mirror's objects: the mirror stays until it is gone.
        with self._mirrors.borrow(job.repo):
            try:
                outcome = await self._execute(job, stop, reporter, workspace)
            except Exception as e:  # a bug must not take the slot with it
                log.exception("runner %s: job %d crashed", self.config.runner_id, job.job_id)
                outcome = Outcome(
                    status="error", reason=f"runner error: {e}", steps=(), fault="runner"
                )
            finally:
                await asyncio.to_thread(shutil.rmtree, workspace, True)
        await reporter.flush()
        await stream.put(
            lambda seq: p.Done(
                job_id=job.job_id,
                attempt=job.attempt,
                seq=seq,
                status=outcome.status,
                reason=mask_text(outcome.reason, secret_values),
                duration=time.monotonic() - started,
                steps=outcome.steps,
                fault=outcome.fault,
            )
        )

    async def _execute(
        self, job: p.Job, stop: Stop, reporter: FrameReporter, workspace: Path
    ) -> Outcome:
        try:
            done = await _until_stopped(self._checkout(job, workspace), stop)
        except RepoError as e:
            # A repository or ref this runner does not take: the job's input,
            # which says nothing of the runner's health.
            return await _ended_before_steps(reporter, e, fault="")
        except CheckoutError as e:
            return await _ended_before_steps(reporter, e, fault="checkout")
        if done is None:
            await reporter.output(f"--- {stop.reason or stop.status} during checkout\n".encode())
            return Outcome(status=stop.status, reason=stop.reason, steps=())
        try:
            pipeline_file = await self._pipelines.load(job.repo, done.sha)
            pipeline = pipeline_file.pipeline(job.matrix)
        except (CheckoutError, PipelineError) as e:
            # The commit is known: record it (no pipeline name), so that a
            # resubmit builds this very commit, not where the branch is now.
            await reporter.checked_out(done, "", ())
            # An invalid or missing narwhal.yml is the job's own making.
            fault = "" if isinstance(e, PipelineError) else "checkout"
            return await _ended_before_steps(reporter, e, fault=fault)
        except Exception:  # a bug: ``run`` reports it, with the commit recorded first
            await reporter.checked_out(done, "", ())
            raise
        variants = pipeline_file.variants if job.matrix is None else ()
        await reporter.checked_out(
            done, pipeline.name, tuple(dict(v) for v in variants), demands=pipeline.demands()
        )
        context = Context(
            branch=branch_of(job.ref),
            event=job.event,
            sha=done.sha,
            job_id=job.job_id,
            attempt=job.attempt,
        )
        return await run_pipeline(
            pipeline,
            workspace=workspace,
            executor=for_job(self._executor, job.secrets),
            reporter=reporter,
            stop=stop,
            context=context,
            default_timeout=job.timeout or self.config.default_timeout,
            sampling=Sampling(
                send=reporter.usage,
                interval=self.config.usage_interval,
                send_every=self.config.usage_send_every,
            ),
        )

    async def _checkout(self, job: p.Job, workspace: Path) -> Checkout:
        # Again here: a JOB frame is the last door before git runs.
        check_repo(job.repo, allow_local=self.config.allow_local_repos)
        check_ref(job.ref)
        if job.sha is not None:
            check_sha(job.sha)
        return await self._mirrors.checkout(job.repo, ref=job.ref, sha=job.sha, workspace=workspace)


async def _ended_before_steps(reporter: FrameReporter, error: Exception, *, fault: str) -> Outcome:
    """A job that ends in ``error`` before its first step: say why in its log and reason.

    The log gets all git said (its advice too), the reason one line.
    """
    # git quotes the URL it failed on: its credentials stay here.
    shown = redacted(str(error))
    if isinstance(error, GitFailed) and error.output.strip():
        await reporter.output(redacted(error.output.rstrip() + "\n").encode())
    await reporter.output(f"{shown}\n".encode())
    return Outcome(status="error", reason=shown, steps=(), fault=fault)


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
