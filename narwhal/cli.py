"""The ``narwhal`` command: daemons (up, dispatcher, runner) and client commands.

This is the one place where flags and ``NARWHAL_*`` environment variables are
parsed into config objects, where logging is configured, and where signals
and exit codes are handled. Exit codes: 0 success, 1 a job or pipeline did
not succeed, 2 a usage, config or connection error.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

import zmq.asyncio

from narwhal import __version__
from narwhal.config import (
    DEFAULT_HTTP_PORT,
    DEFAULT_RUNNER_PORT,
    DispatcherConfig,
    MeshConfig,
    RunnerConfig,
    default_data_dir,
    default_work_dir,
)
from narwhal.errors import ConfigError, NarwhalError

log = logging.getLogger("narwhal")


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"NARWHAL_{name}", default)


def host_port(text: str, default_port: int) -> tuple[str, int]:
    """Parse ``HOST:PORT`` / ``HOST`` / ``:PORT`` / ``[::1]:PORT``."""
    host, sep, port = text.rpartition(":")
    if not sep or "]" in port:
        host, port = text, str(default_port)
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def parse_labels(text: str) -> dict[str, str]:
    labels = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"labels must look like key=value,key=value; got {item!r}")
        labels[key.strip()] = value.strip()
    return labels


def _positive(kind: type[int] | type[float], name: str, value: str) -> float:
    try:
        number = kind(value)
    except ValueError:
        raise ConfigError(f"{name}: expected a number, got {value!r}") from None
    if number <= 0:
        raise ConfigError(f"{name}: must be positive, got {value!r}")
    return number


def _non_negative(name: str, value: str) -> float:
    return 0.0 if value in ("0", "0.0") else _positive(float, name, value)


def _mesh(args: argparse.Namespace) -> MeshConfig:
    return MeshConfig(
        heartbeat_interval=_positive(float, "--heartbeat-interval", args.heartbeat_interval),
        liveness=int(_positive(int, "--liveness", args.liveness)),
    )


def dispatcher_config(args: argparse.Namespace) -> DispatcherConfig:
    host, port = host_port(args.http, DEFAULT_HTTP_PORT)
    token = args.api_token or None
    if token is None and not _loopback(host):
        raise ConfigError(f"--http {args.http} is reachable beyond this machine: set --api-token")
    return DispatcherConfig(
        data_dir=Path(args.data_dir).expanduser(),
        http_host=host,
        http_port=port,
        runners=tuple(getattr(args, "runner", None) or ()),
        api_token=token,
        max_attempts=int(_positive(int, "--max-attempts", args.max_attempts)),
        mesh=_mesh(args),
    )


def runner_config(
    args: argparse.Namespace, *, listen: str | None = None, default_id: str | None = None
) -> RunnerConfig:
    endpoint = listen or args.listen
    default_id = default_id or f"{socket.gethostname()}-{endpoint.rpartition(':')[2]}"
    if args.executor != "local":
        raise ConfigError(f"--executor {args.executor}: only 'local' is available so far")
    return RunnerConfig(
        runner_id=args.id or default_id,
        listen=endpoint,
        capacity=int(_positive(int, "--capacity", args.capacity)),
        labels=parse_labels(args.labels),
        executor=args.executor,
        work_dir=Path(args.work_dir).expanduser(),
        cancel_grace=_positive(float, "--cancel-grace", args.cancel_grace),
        drain_timeout=_non_negative("--drain-timeout", args.drain_timeout),
        mesh=_mesh(args),
    )


def _loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


# argument parser


def _mesh_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--heartbeat-interval",
        default=_env("HEARTBEAT_INTERVAL", "1.0"),
        help="seconds between heartbeats (NARWHAL_HEARTBEAT_INTERVAL)",
    )
    p.add_argument(
        "--liveness",
        default=_env("LIVENESS", "3"),
        help="missed heartbeats before a peer is dead (NARWHAL_LIVENESS)",
    )


def _dispatcher_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--http",
        default=_env("HTTP", f"127.0.0.1:{DEFAULT_HTTP_PORT}"),
        help="REST API address HOST:PORT; port 0 picks a free one (NARWHAL_HTTP)",
    )
    p.add_argument(
        "--data-dir",
        default=_env("DATA_DIR", str(default_data_dir())),
        help="where the job store lives (NARWHAL_DATA_DIR)",
    )
    p.add_argument(
        "--api-token",
        default=_env("API_TOKEN"),
        help="token required by mutating API calls (NARWHAL_API_TOKEN)",
    )
    p.add_argument(
        "--max-attempts",
        default=_env("MAX_ATTEMPTS", "3"),
        help="attempts before a job whose runner was lost ends in error",
    )
    _mesh_flags(p)


def _runner_flags(p: argparse.ArgumentParser, *, listen: bool = True) -> None:
    if listen:
        p.add_argument(
            "--listen",
            default=_env("LISTEN", f"tcp://127.0.0.1:{DEFAULT_RUNNER_PORT}"),
            help="endpoint the dispatcher connects to (NARWHAL_LISTEN)",
        )
    p.add_argument("--id", default=_env("RUNNER_ID"), help="runner id (default HOST-PORT)")
    p.add_argument(
        "--capacity",
        default=_env("CAPACITY", str(os.cpu_count() or 1)),
        help="jobs run at once (NARWHAL_CAPACITY)",
    )
    p.add_argument("--labels", default=_env("LABELS", ""), help="k=v,k=v the runner offers")
    p.add_argument("--executor", default=_env("EXECUTOR", "local"), choices=["local", "docker"])
    p.add_argument(
        "--work-dir",
        default=_env("WORK_DIR", str(default_work_dir())),
        help="where job workspaces are made (NARWHAL_WORK_DIR)",
    )
    p.add_argument(
        "--cancel-grace",
        default=_env("CANCEL_GRACE", "10"),
        help="seconds between SIGTERM and SIGKILL on cancel or timeout",
    )
    p.add_argument(
        "--drain-timeout",
        default=_env("DRAIN_TIMEOUT", "0"),
        help="on shutdown, seconds running jobs may finish before they are cancelled",
    )


def _client_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--server",
        default=_env("SERVER", f"http://127.0.0.1:{DEFAULT_HTTP_PORT}"),
        help="dispatcher API URL (NARWHAL_SERVER)",
    )
    p.add_argument("--api-token", default=_env("API_TOKEN"), help="API token (NARWHAL_API_TOKEN)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="narwhal", description="A small, fast, self-hosted CI.")
    parser.add_argument("--version", action="version", version=f"narwhal {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser("up", help="dispatcher + one local runner + REST API in one process")
    _dispatcher_flags(up)
    _runner_flags(up, listen=False)

    dispatcher = sub.add_parser("dispatcher", help="run the dispatcher and its REST API")
    _dispatcher_flags(dispatcher)
    dispatcher.add_argument(
        "--runner",
        action="append",
        metavar="URL",
        help="runner endpoint tcp://HOST:PORT (repeatable)",
    )

    runner = sub.add_parser("runner", help="run a runner that the dispatcher connects to")
    _runner_flags(runner)
    _mesh_flags(runner)

    submit = sub.add_parser("submit", help="submit a job for a repository")
    submit.add_argument("repo", help="clone URL or local path")
    submit.add_argument("--ref", default="HEAD", help="ref to build, e.g. refs/heads/main")
    submit.add_argument("--sha", help="exact commit (default: the tip of --ref)")
    submit.add_argument("--event", default="push", help="event name seen by 'when' filters")
    submit.add_argument("-f", "--follow", action="store_true", help="stream the log until done")
    _client_flags(submit)

    logs = sub.add_parser("logs", help="print a job's log")
    logs.add_argument("job", type=int)
    logs.add_argument("-f", "--follow", action="store_true", help="stream until the job ends")
    _client_flags(logs)

    jobs = sub.add_parser("jobs", help="list jobs")
    jobs.add_argument("--state", action="append", help="only jobs in this state (repeatable)")
    jobs.add_argument("--repo", help="only jobs of this repository")
    jobs.add_argument("--limit", type=int, default=20)
    _client_flags(jobs)

    for name, text in (("cancel", "cancel a job"), ("resubmit", "run a job's commit again")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("job", type=int)
        _client_flags(cmd)

    runners = sub.add_parser("runners", help="list the runners the dispatcher knows")
    _client_flags(runners)

    exe = sub.add_parser("exec", help="run a directory's narwhal.yml here, without a dispatcher")
    exe.add_argument("directory", nargs="?", default=".")
    exe.add_argument(
        "--branch", help="branch seen by 'when' filters (default: the checked-out one)"
    )
    exe.add_argument("--event", default="push", help="event seen by 'when' filters")
    exe.add_argument("--executor", default="local", choices=["local", "docker"])
    exe.add_argument("--cancel-grace", default="10")
    return parser


# daemons


async def _serve(dconf: DispatcherConfig, rconf: RunnerConfig | None) -> None:
    from narwhal.dispatcher.server import serve

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    ctx = zmq.asyncio.Context()
    try:
        await serve(dconf, rconf, context=ctx, stop=stop, announce=_announce)
    finally:
        ctx.term()


def _announce(line: str) -> None:
    print(line, flush=True)  # noqa: T201 - the CLI's own output


async def _run_runner(conf: RunnerConfig) -> None:
    from narwhal.runner.runner import Runner

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with Runner(conf) as runner:
        _announce(f"narwhal runner {conf.runner_id} listening on {runner.endpoint}")
        await stop.wait()


def _daemon(args: argparse.Namespace) -> int:
    if args.command == "runner":
        asyncio.run(_run_runner(runner_config(args)))
        return 0
    dconf = dispatcher_config(args)
    rconf = None
    if args.command == "up":
        rconf = runner_config(args, listen="tcp://127.0.0.1:*", default_id="local")
    asyncio.run(_serve(dconf, rconf))
    return 0


def _exec(args: argparse.Namespace) -> int:
    from narwhal.runner.executor import LocalExecutor
    from narwhal.runner.local_exec import exec_directory

    if args.executor != "local":
        raise ConfigError(f"--executor {args.executor}: only 'local' is available so far")
    directory = Path(args.directory)
    if not directory.is_dir():
        raise ConfigError(f"{directory}: not a directory")
    grace = _positive(float, "--cancel-grace", args.cancel_grace)
    return asyncio.run(
        exec_directory(
            directory,
            executor=LocalExecutor(grace=grace),
            branch=args.branch,
            event=args.event,
            out=sys.stdout.buffer,
            err=sys.stderr,
        )
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    daemon = args.command in ("up", "dispatcher", "runner")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO if daemon else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if daemon:
            return _daemon(args)
        if args.command == "exec":
            return _exec(args)
        from narwhal.client import run_client

        return run_client(args)
    except (NarwhalError, OSError) as e:
        print(f"narwhal: {e}", file=sys.stderr)  # noqa: T201 - the CLI's own output
        return 2
    except KeyboardInterrupt:
        return 130


def entrypoint() -> None:
    """Console script entry: ``narwhal``."""
    sys.exit(main())
