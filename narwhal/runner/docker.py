"""The Docker executor: every step in a container of its own, on a real engine.

A session is one job. It makes sure every image is there (pulling a missing
one, or refusing to when pulling is off), starts the ``services:`` on a
network of the job's own, then runs each step in a fresh container: the
job's workspace bind-mounted at ``/workspace`` (the working directory), the
step's env, limits within the runner's maxima, never privileged, no Docker
socket inside, labelled with the runner and the job. When the session ends,
however it ends, every container, network and volume it made is removed; a
runner that was killed leaves labelled leftovers, which ``reap`` removes
when it starts again.

The docker SDK blocks, so every call runs in a thread (``asyncio.to_thread``);
a step's output is read by a thread of its own (``docker_output``).
Engine exceptions become ``ExecutorError`` here and nowhere else.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import io
import logging
import os
import re
import shutil
import socket
import tarfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from docker.errors import ImageNotFound  # type: ignore[import-untyped,unused-ignore]

from narwhal.config import RunnerConfig
from narwhal.errors import ExecutorError
from narwhal.pipeline import Pipeline, Step
from narwhal.pipeline_containers import Service
from narwhal.runner.docker_engine import (
    ENGINE_ERRORS,
    LABEL_HOST,
    LABEL_INSTANCE,
    LABEL_JOB,
    LABEL_PID,
    LABEL_RUNNER,
    LABEL_SESSION,
    connect,
    discard,
    engine_message,
    nothing,
    process_alive,
    remove_labelled,
)
from narwhal.runner.docker_output import Follower, race
from narwhal.runner.docker_pull import (
    HINT,
    NOT_FOUND_EXIT,
    not_found_line,
    not_found_reason,
    pull_image,
)
from narwhal.runner.docker_spec import (
    DEPS_EXIT,
    DEPS_FILE,
    WORKSPACE,
    capped,
    container_script,
    isolation,
)
from narwhal.runner.executor import Executor, LocalExecutor, Output, StepResult, Stop
from narwhal.runner.masking import SecretsExecutor

log = logging.getLogger(__name__)

T = TypeVar("T")
Container = Any  # docker.models.containers.Container; the SDK has no types


def _slug(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_.-]+", "-", text).strip("-.")[:40] or "x"


def executor_for(config: RunnerConfig) -> SecretsExecutor:
    """The executor ``config.executor`` names, handing every step the runner's secrets.

    Close it with ``aclose`` (the Docker one holds an engine connection).
    """
    inner: Executor
    if config.executor == "docker":
        inner = DockerExecutor(config)
    else:
        inner = LocalExecutor(grace=config.cancel_grace)
    return SecretsExecutor(inner, config.secrets)


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

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking SDK call off the loop; engine errors become ExecutorError."""
        try:
            return await asyncio.to_thread(functools.partial(fn, *args, **kwargs))
        except ENGINE_ERRORS as e:
            raise ExecutorError(f"docker: {engine_message(e)}") from e

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
        session = DockerSession(
            self, client, job=job, workspace=workspace, pipeline=pipeline, output=output
        )
        try:
            await session.setup()
            yield session
        finally:
            await asyncio.shield(session.teardown())


class DockerSession:
    """One job's containers: its services, its network, one container per step."""

    def __init__(
        self,
        executor: DockerExecutor,
        client: Any,
        *,
        job: str,
        workspace: Path,
        pipeline: Pipeline,
        output: Output,
    ) -> None:
        self._x = executor
        self._client = client
        self._config = executor.config
        self._pipeline = pipeline
        self._workspace = workspace.resolve()
        self._output = output
        self.id = uuid.uuid4().hex[:12]
        self.labels = executor.labels(job, self.id)
        self._prefix = f"narwhal-{_slug(self._config.runner_id)}-{_slug(job)}-{self.id}"
        self._network: str | None = None
        self._steps = 0
        self._images_used: list[str] = []

    # setup and teardown

    async def setup(self) -> None:
        images = [self.image_of(step) for step in self._pipeline.steps]
        images += [service.image for service in self._pipeline.services]
        for image in dict.fromkeys(images):
            await self._ensure_image(image)
        if self._pipeline.services:
            await self._make_network()
            for service in self._pipeline.services:
                await self._start_service(service)

    async def teardown(self) -> None:
        """Remove every container and the network of this session, whatever happened."""
        if os.geteuid() != 0 and self._images_used:
            await self._restore_owner()
        selector = {"label": f"{LABEL_SESSION}={self.id}"}
        try:
            await self._x.call(remove_labelled, self._client, selector, keep=nothing)
        except ExecutorError as e:
            # The runner's next start removes what is left; the job's outcome stands.
            log.warning("session %s: cleanup incomplete: %s", self.id, e)

    def image_of(self, step: Step) -> str:
        return step.image or self._config.docker_image

    async def _ensure_image(self, image: str) -> None:
        try:
            await asyncio.to_thread(self._client.images.get, image)
            return
        except ImageNotFound as e:
            missing = engine_message(e)
        except ENGINE_ERRORS as e:
            raise ExecutorError(f"docker: {engine_message(e)}") from e
        if self._config.docker_pull == "never":
            raise ExecutorError(
                f"image {image}: {missing} (this runner does not pull images); {HINT}"
            )
        await pull_image(
            self._client, image, output=self._output, timeout=self._config.docker_pull_timeout
        )

    async def _make_network(self) -> None:
        # With network 'none' the job's network is internal: services are
        # reachable from the steps, and nothing is reachable beyond them.
        internal = self._config.docker_network == "none"
        self._network = f"{self._prefix}-net"
        await self._x.call(
            self._client.networks.create,
            self._network,
            driver="bridge",
            internal=internal,
            labels=self.labels,
        )

    async def _start_service(self, service: Service) -> None:
        name = f"{self._prefix}-svc-{_slug(service.name)}"
        endpoint = self._client.api.create_endpoint_config(aliases=[service.name])
        kwargs: dict[str, Any] = {
            "name": name,
            "hostname": service.name,
            "environment": dict(service.env),
            "labels": self.labels,
            "network": self._network,
            "networking_config": {self._network: endpoint},
            **isolation(self._pipeline.resources, self._config),
        }
        if service.command is not None:
            kwargs["command"] = list(service.command)
        container = await self._x.call(self._client.containers.create, service.image, **kwargs)
        await self._x.call(container.start)
        await self._output(f"service {service.name} started ({service.image})\n".encode())

    async def _restore_owner(self) -> None:
        """Give files that root in a container made back to the runner's user."""
        owner = f"{os.getuid()}:{os.getgid()}"
        try:
            container = await self._x.call(
                self._client.containers.run,
                self._images_used[-1],
                [f"chown -R {owner} {WORKSPACE}"],
                entrypoint=["/bin/sh", "-c"],
                volumes={str(self._workspace): {"bind": WORKSPACE, "mode": "rw"}},
                network_mode="none",
                labels=self.labels,
                detach=True,
            )
            await self._x.call(container.wait)
        except ExecutorError as e:
            log.warning("session %s: cannot give the workspace back: %s", self.id, e)

    # steps

    async def run_step(
        self,
        step: Step,
        *,
        env: Mapping[str, str],
        output: Output,
        stop: Stop,
        timeout: float | None,
    ) -> StepResult:
        started = time.monotonic()
        container = await self._create_step(step, env)
        follower: Follower | None = None
        pump: asyncio.Task[None] | None = None
        try:
            stream = await self._x.call(
                container.attach, stdout=True, stderr=True, stream=True, logs=False
            )
            follower = Follower(container, stream)
            await self._x.call(container.start)
            pump = asyncio.create_task(follower.pump(output))
            ended = await race(pump, stop, timeout)
            if ended != "exited":
                await self._terminate(container, pump, stop)
            await pump
            code = follower.exit_code()
            if code is None:
                raise ExecutorError(f"docker: lost step {step.name!r}: {follower.error}")
            deps_error = await self._diagnose(container, step, code, output)
        finally:
            await self._finish(container, follower, pump)
        duration = time.monotonic() - started
        if deps_error and ended == "exited":
            return StepResult(status="error", exit_code=code, duration=duration, reason=deps_error)
        result = _result(ended, code, duration, stop, timeout)
        if result.status == "failed" and code == NOT_FOUND_EXIT:
            # The job's reason says it too, not only the log: a first job fails so.
            hint = not_found_reason(self.image_of(step), self._config.docker_image)
            return dataclasses.replace(result, reason=hint)
        return result

    async def _finish(
        self, container: Container, follower: Follower | None, pump: asyncio.Task[None] | None
    ) -> None:
        """Remove the step's container (killing it if need be), then its reader."""
        if pump is not None and not pump.done():
            pump.cancel()
        try:
            await self._x.call(discard, container)
        except ExecutorError as e:
            log.warning("session %s: cannot remove %s: %s", self.id, container.name, e)
        if follower is not None:
            await follower.close()

    async def _create_step(self, step: Step, env: Mapping[str, str]) -> Container:
        self._steps += 1
        image = self.image_of(step)
        self._images_used.append(image)
        script = container_script(step)
        if len(script) > 120_000:
            raise ExecutorError(f"step {step.name!r}: its commands are longer than 120 kB")
        network: dict[str, Any] = (
            {"network": self._network}
            if self._network
            else {"network_mode": self._config.docker_network}
        )
        return await self._x.call(
            self._client.containers.create,
            image,
            entrypoint=["/bin/sh", "-c"],
            command=[script],
            name=f"{self._prefix}-{self._steps}",
            labels=self.labels,
            environment=dict(env),
            working_dir=WORKSPACE,
            volumes={str(self._workspace): {"bind": WORKSPACE, "mode": "rw"}},
            log_config={"type": "none", "config": {}},
            **network,
            **isolation(step.resources, self._config),
        )

    async def _terminate(self, container: Container, pump: asyncio.Task[None], stop: Stop) -> None:
        """SIGTERM, the grace period (cut short by ``stop.hurry``), then SIGKILL.

        A container already gone is fine.
        """
        await self._signal(container, "SIGTERM")
        if not await stop.within_grace(pump, self._config.cancel_grace):
            await self._signal(container, "SIGKILL")

    async def _signal(self, container: Container, signal: str) -> None:
        try:
            await self._x.call(container.kill, signal=signal)
        except ExecutorError as e:
            log.debug("session %s: %s not delivered: %s", self.id, signal, e)

    async def _diagnose(
        self, container: Container, step: Step, code: int, output: Output
    ) -> str | None:
        """Why a step ended badly: the error of missing dependencies, or None.

        A step killed at its memory limit gets a line saying so in its log.
        """
        if code == 0:
            return None
        if code == DEPS_EXIT and step.dependencies:
            return await self._deps_reason(container, step)
        if code == NOT_FOUND_EXIT:
            await output(not_found_line(self.image_of(step), self._config.docker_image))
        await self._x.call(container.reload)
        if container.attrs.get("State", {}).get("OOMKilled"):
            limit = capped(step.resources, self._config).memory
            shown = f" of {limit // 2**20} MiB" if limit else ""
            await output(f"narwhal: step killed: out of memory (limit{shown})\n".encode())
        return None

    async def _deps_reason(self, container: Container, step: Step) -> str:
        names = ", ".join(step.dependencies)
        text = f"installing dependencies {names} failed"
        try:
            chunks, _ = await self._x.call(container.get_archive, DEPS_FILE)
            with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as tar:
                member = tar.extractfile(tar.getmembers()[0])
                text = member.read().decode(errors="replace").strip() if member else text
        except (ExecutorError, tarfile.TarError, IndexError):
            pass  # the generic message names the dependencies too
        return f"step {step.name!r}: {text}"


def _result(
    ended: str, code: int | None, duration: float, stop: Stop, timeout: float | None
) -> StepResult:
    if ended == "stopped":
        return StepResult(status=stop.status, exit_code=code, duration=duration, reason=stop.reason)
    if ended == "timed_out":
        text = f"step timed out after {timeout:.0f}s" if timeout else "timed out"
        return StepResult(status="timed_out", exit_code=code, duration=duration, reason=text)
    status = "success" if code == 0 else "failed"
    return StepResult(status=status, exit_code=code, duration=duration)
