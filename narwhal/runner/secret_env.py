"""Secrets handed to steps as environment variables: the runner's, and each job's.

``SecretsExecutor`` wraps an executor so that every step gets the secrets
last, over its own env. The runner wraps its executor once with its own
secrets (``runner.executor_for``) and, for a job that brings secrets of its own,
once more around that (``for_job``). Hiding the values in what a job prints
is ``masking``'s part; this module only decides what reaches a step.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

from narwhal.pipeline import Pipeline, Step
from narwhal.runner.executor import Executor, Output, Session, StepResult, Stop
from narwhal.runner.usage import UNMETERED, Meter


def for_job(executor: Executor, secrets: Mapping[str, str]) -> Executor:
    """The runner's executor, handing every step the job's secrets too.

    Wrapped outside the runner's own ``SecretsExecutor``: a runner secret
    of the same name wins, and the pipeline's ``env`` shadows neither.
    """
    if not secrets:
        return executor
    return SecretsExecutor(executor, secrets)


class SecretsExecutor:
    """Wraps an executor so that every step also gets the runner's secrets as env vars.

    Secrets are added last: a pipeline cannot shadow one with its own ``env``.
    """

    def __init__(self, inner: Executor, secrets: Mapping[str, str]) -> None:
        self.inner = inner
        self._secrets = dict(secrets)

    def reap(self, work_dir: Path) -> int:
        return self.inner.reap(work_dir)

    async def aclose(self) -> None:
        """Close the inner executor if it holds anything (the Docker one does)."""
        close = getattr(self.inner, "aclose", None)
        if close is not None:
            await close()

    def session(
        self, *, job: str, workspace: Path, pipeline: Pipeline, output: Output
    ) -> AbstractAsyncContextManager[Session]:
        return self._session(job=job, workspace=workspace, pipeline=pipeline, output=output)

    @asynccontextmanager
    async def _session(
        self, *, job: str, workspace: Path, pipeline: Pipeline, output: Output
    ) -> AsyncIterator[Session]:
        async with self.inner.session(
            job=job, workspace=workspace, pipeline=pipeline, output=output
        ) as session:
            yield _SecretsSession(session, self._secrets)


class _SecretsSession:
    def __init__(self, inner: Session, secrets: Mapping[str, str]) -> None:
        self._inner = inner
        self._secrets = secrets

    async def run_step(
        self,
        step: Step,
        *,
        env: Mapping[str, str],
        output: Output,
        stop: Stop,
        timeout: float | None,
        usage: Meter = UNMETERED,
    ) -> StepResult:
        return await self._inner.run_step(
            step,
            env={**env, **self._secrets},
            output=output,
            stop=stop,
            timeout=timeout,
            usage=usage,
        )
