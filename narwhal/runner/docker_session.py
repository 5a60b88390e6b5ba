"""One job's containers on a Docker engine: its services, its network, a container per step.

A session makes sure every image is there (pulling a missing one, or
refusing to when pulling is off), starts the ``services:`` on a network of
the job's own, then runs each step in a fresh container: the job's
workspace bind-mounted at ``/workspace`` (the working directory), the
step's env, limits within the runner's maxima, never privileged, no Docker
socket inside, labelled with the runner and the job. When the session
ends, however it ends, every container, network and volume it made is
removed. Every SDK call goes through ``docker_engine.call`` (off the loop,
engine errors as ``ExecutorError``); a step's output is read by a thread
of its own (``docker_output``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import logging
import os
import re
import tarfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from docker.errors import ImageNotFound  # type: ignore[import-untyped,unused-ignore]

from narwhal.config import RunnerConfig
from narwhal.errors import ExecutorError
from narwhal.pipeline import Pipeline, Step
from narwhal.pipeline_containers import Service
from narwhal.runner.docker_engine import (
    ENGINE_ERRORS,
    LABEL_SESSION,
    call,
    discard,
    engine_message,
    nothing,
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
from narwhal.runner.executor import NotRunnable, Output, StepResult, Stop
from narwhal.runner.probes import CgroupProbe
from narwhal.runner.usage import UNMETERED, Meter

log = logging.getLogger(__name__)

Container = Any  # docker.models.containers.Container; the SDK has no types


def _slug(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_.-]+", "-", text).strip("-.")[:40] or "x"


class DockerSession:
    """One job's containers: its services, its network, one container per step."""

    def __init__(
        self,
        client: Any,
        config: RunnerConfig,
        *,
        session_id: str,
        labels: dict[str, str],
        job: str,
        workspace: Path,
        pipeline: Pipeline,
        output: Output,
    ) -> None:
        self._client = client
        self._config = config
        self._pipeline = pipeline
        self._workspace = workspace.resolve()
        self._output = output
        self.id = session_id
        self.labels = labels
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
            await call(remove_labelled, self._client, selector, keep=nothing)
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
            # Not this runner's failure: the job asks for an image it lacks.
            raise NotRunnable(
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
        await call(
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
        container = await call(self._client.containers.create, service.image, **kwargs)
        await call(container.start)
        await self._output(f"service {service.name} started ({service.image})\n".encode())

    async def _restore_owner(self) -> None:
        """Give files that root in a container made back to the runner's user."""
        owner = f"{os.getuid()}:{os.getgid()}"
        try:
            container = await call(
                self._client.containers.run,
                self._images_used[-1],
                [f"chown -R {owner} {WORKSPACE}"],
                entrypoint=["/bin/sh", "-c"],
                volumes={str(self._workspace): {"bind": WORKSPACE, "mode": "rw"}},
                network_mode="none",
                labels=self.labels,
                detach=True,
            )
            await call(container.wait)
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
        usage: Meter = UNMETERED,
    ) -> StepResult:
        started = time.monotonic()
        container = await self._create_step(step, env)
        follower: Follower | None = None
        pump: asyncio.Task[None] | None = None
        try:
            stream = await call(container.attach, stdout=True, stderr=True, stream=True, logs=False)
            follower = Follower(container, stream)
            await call(container.start)
            pump = asyncio.create_task(follower.pump(output))
            limit = capped(step.resources, self._config).memory
            usage.watch(
                CgroupProbe(container.id, pid=lambda: _init_pid(container)), memory_limit=limit
            )
            ended = await race(pump, stop, timeout)
            await usage.last()
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
            await call(discard, container)
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
            raise NotRunnable(f"step {step.name!r}: its commands are longer than 120 kB")
        network: dict[str, Any] = (
            {"network": self._network}
            if self._network
            else {"network_mode": self._config.docker_network}
        )
        return await call(
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
            await call(container.kill, signal=signal)
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
        await call(container.reload)
        if container.attrs.get("State", {}).get("OOMKilled"):
            limit = capped(step.resources, self._config).memory
            shown = f" of {limit // 2**20} MiB" if limit else ""
            await output(f"narwhal: step killed: out of memory (limit{shown})\n".encode())
        return None

    async def _deps_reason(self, container: Container, step: Step) -> str:
        names = ", ".join(step.dependencies)
        text = f"installing dependencies {names} failed"
        try:
            chunks, _ = await call(container.get_archive, DEPS_FILE)
            with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as tar:
                member = tar.extractfile(tar.getmembers()[0])
                text = member.read().decode(errors="replace").strip() if member else text
        except (ExecutorError, tarfile.TarError, IndexError):
            pass  # the generic message names the dependencies too
        return f"step {step.name!r}: {text}"


def _init_pid(container: Container) -> int | None:
    """The container's init process as the engine says (blocking: the probe's thread)."""
    try:
        container.reload()
    except ENGINE_ERRORS:
        return None
    pid = container.attrs.get("State", {}).get("Pid")
    return pid if isinstance(pid, int) else None


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
