"""``narwhal exec``: a directory's narwhal.yml run here, without a dispatcher.

The Docker modules (and the SDK) are imported only with ``--executor
docker``, or ``auto`` when an engine answers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import sys
from pathlib import Path
from typing import BinaryIO, cast

from narwhal.cli.pipes import SIGPIPE_STATUS, PipeGuard
from narwhal.config import RunnerConfig
from narwhal.daemons.executors import pick_executor
from narwhal.errors import ConfigError
from narwhal.runner.executor import Executor, LocalExecutor, Stop
from narwhal.runner.local_exec import exec_directory
from narwhal.runner.masking import masked_writer
from narwhal.runner.secret_env import SecretsExecutor
from narwhal.settings import docker_options, positive


def run_exec(args: argparse.Namespace) -> int:
    directory = Path(args.directory)
    if not directory.is_dir():
        raise ConfigError(f"{directory}: not a directory")
    conf = RunnerConfig(
        runner_id="exec",
        cancel_grace=positive(float, "--cancel-grace", args.cancel_grace),
        **docker_options(args),
    )
    # Asked now that the command runs, not while its flags were read.
    conf = dataclasses.replace(conf, executor=pick_executor(args.executor, conf.docker_host))
    return asyncio.run(_exec_directory(directory, args, conf))


async def _exec_directory(directory: Path, args: argparse.Namespace, conf: RunnerConfig) -> int:
    async with contextlib.AsyncExitStack() as stack:
        executor: Executor = LocalExecutor(grace=conf.cancel_grace)
        if conf.executor == "docker":
            from narwhal.runner.docker import DockerExecutor  # the Docker SDK: only now

            docker = await stack.enter_async_context(DockerExecutor(conf))
            await asyncio.to_thread(docker.remove_leftovers)
            executor = docker
        stop = Stop()
        stdout = PipeGuard(sys.stdout.buffer, stop)
        out = stack.enter_context(masked_writer(cast(BinaryIO, stdout), conf.secrets.values()))
        status = await exec_directory(
            directory,
            executor=SecretsExecutor(executor, conf.secrets),
            branch=args.branch,
            event=args.event,
            out=out,
            err=sys.stderr,
            stop=stop,
        )
    return SIGPIPE_STATUS if stdout.broken else status
