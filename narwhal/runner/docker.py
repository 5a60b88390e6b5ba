"""The Docker executor: every step in a container of its own, on a real engine.

One ``DockerExecutor`` serves every job of a runner: it holds the engine
connection (made on first use) and labels everything it makes with the
runner, its process and the job. A session is one job (``docker_session``).
A runner that was killed leaves labelled leftovers, which ``reap`` removes
when it starts again.

Only this module and the ``docker_*`` modules import the Docker SDK: the
runner imports this one when its config chooses the Docker executor
(``runner.executor_for``), so a runner with the local executor never
loads the SDK. The SDK blocks, so every call runs in a thread; engine
exceptions become ``ExecutorError`` in these modules and nowhere else.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import threading
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from narwhal.config import RunnerConfig
from narwhal.errors import ExecutorError
from narwhal.pipeline import Pipeline
from narwhal.runner.docker_engine import (
    ENGINE_ERRORS,
    LABEL_HOST,
    LABEL_INSTANCE,
    LABEL_JOB,
    LABEL_PID,
    LABEL_RUNNER,
    LABEL_SESSION,
    connect,
    engine_message,
    process_alive,
    remove_labelled,
)
from narwhal.runner.docker_session import DockerSession
from narwhal.runner.executor import Output

log = logging.getLogger(__name__)


class DockerExecutor:
    """Runs each step in a container; one instance serves every job of a runner.

    ``reap`` (blocking; the runner calls it in a thread when it starts)
    connects and removes what earlier lives of this runner left behind.
    ``aclose`` closes the engine connection.
    """

    def __init__(self, config: RunnerConfig) -> None:
        self.config = config
        self.instance = uuid.uuid4().hex
        self._client: Any = None
        self._lock = threading.Lock()
        self._closed = False

    async def __aenter__(self) -> DockerExecutor:
        await asyncio.to_thread(self.client)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        with self._lock:
            self._closed = True
            client, self._client = self._client, None
        if client is not None:
            await asyncio.to_thread(client.close)

    def client(self) -> Any:
        """The engine connection, made on first use (blocking). Raises ExecutorError."""
        with self._lock:
            if self._closed:
                raise ExecutorError("docker executor is closed")
            if self._client is None:
                self._client = connect(self.config.docker_host)
            return self._client

    def answers(self) -> bool:
        """Whether the engine answers a ping now (blocking; for the runner's state)."""
        try:
            return bool(self.client().ping())
        except (ExecutorError, *ENGINE_ERRORS):
            return False

    def image_tags(self, most: int) -> tuple[str, ...]:
        """The engine's image tags (``repo:tag``), the newest images first, at most
        ``most`` (blocking). One listing call: the SDK's ``images.list`` asks again
        for every image."""
        try:
            listed = self.client().api.images()
        except (ExecutorError, *ENGINE_ERRORS):
            return ()
        newest = sorted(listed, key=lambda image: image.get("Created") or 0, reverse=True)
        tags = (tag for image in newest for tag in image.get("RepoTags") or ())
        named = dict.fromkeys(tag for tag in tags if isinstance(tag, str) and "<none>" not in tag)
        return tuple(named)[:most]

    def labels(self, job: str, session: str) -> dict[str, str]:
        return {
            LABEL_RUNNER: self.config.runner_id,
            LABEL_INSTANCE: self.instance,
            LABEL_HOST: socket.gethostname(),
            LABEL_PID: str(os.getpid()),
            LABEL_JOB: job,
            LABEL_SESSION: session,
        }

    def reap(self, work_dir: Path) -> int:
        """Remove containers, networks and workspaces of this runner's earlier lives.

        An engine that does not answer is logged, not raised: the runner
        starts anyway and its jobs end in ``error`` until the engine is back.
        """
        removed = 0
        try:
            removed = self.remove_leftovers()
        except ExecutorError as e:
            log.warning("runner %s: cannot reap containers: %s", self.config.runner_id, e)
        for leftover in work_dir.glob("job-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        return removed

    def remove_leftovers(self) -> int:
        """Remove what this runner id labelled and no live runner process owns (blocking)."""
        selector = {"label": f"{LABEL_RUNNER}={self.config.runner_id}"}
        try:
            return remove_labelled(self.client(), selector, keep=self._alive)
        except ENGINE_ERRORS as e:
            raise ExecutorError(f"docker: {engine_message(e)}") from e

    def _alive(self, labels: Mapping[str, str]) -> bool:
        """Whether what carries these labels belongs to a runner process still running."""
        if labels.get(LABEL_INSTANCE) == self.instance:
            return True
        if labels.get(LABEL_HOST) != socket.gethostname():
            return False  # the same runner id elsewhere: a former life, moved
        return process_alive(labels.get(LABEL_PID, ""))

    @asynccontextmanager
    async def session(
        self, *, job: str, workspace: Path, pipeline: Pipeline, output: Output
    ) -> AsyncIterator[DockerSession]:
        client = await asyncio.to_thread(self.client)
        session_id = uuid.uuid4().hex[:12]
        session = DockerSession(
            client,
            self.config,
            session_id=session_id,
            labels=self.labels(job, session_id),
            job=job,
            workspace=workspace,
            pipeline=pipeline,
            output=output,
        )
        try:
            await session.setup()
            yield session
        finally:
            await asyncio.shield(session.teardown())
