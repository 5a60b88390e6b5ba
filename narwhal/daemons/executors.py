"""Which executor runs a runner's steps, settled when the runner starts.

``--executor auto`` means docker when a Docker engine answers, else local.
Asking the engine is I/O, so it happens here, when a daemon (or ``narwhal
exec``) starts, never while flags are read; and the Docker modules, with the
Docker SDK, are imported only once the Docker executor is chosen, so a
runner with the local executor never loads them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging

from narwhal.config import RunnerConfig

log = logging.getLogger("narwhal")


def pick_executor(choice: str, docker_host: str | None) -> str:
    """``auto`` is docker when an engine answers, else local; the choice is logged.

    Blocking (it asks the engine): call it off the event loop.
    """
    if choice == "local":
        return "local"
    from narwhal.runner.docker_engine import engine_problem

    problem = engine_problem(docker_host)
    if choice == "docker":
        if problem:
            log.warning("executor docker: %s; jobs end in error until it answers", problem)
        return "docker"
    if problem:
        log.info("executor: local (%s)", problem)
        return "local"
    log.info("executor: docker (a Docker engine answers)")
    return "docker"


async def resolved(conf: RunnerConfig) -> RunnerConfig:
    """``conf`` with its executor settled, ``local`` or ``docker`` (asked off the loop)."""
    executor = await asyncio.to_thread(pick_executor, conf.executor, conf.docker_host)
    return dataclasses.replace(conf, executor=executor)
