"""The ``narwhal`` command: daemons (up, dispatcher, runner, agent) and client commands.

Flags are defined here and turned into config objects by ``narwhal.settings``;
this module configures logging and handles signals and exit codes. Exit
codes: 0 success, 1 a job or pipeline did not succeed (a narwhal.yml that does
not load too, for ``exec`` as for ``submit -f``), 2 a usage, config or
connection error, 141 stdout closed early (``| head``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, cast

import zmq.asyncio

from narwhal import __version__
from narwhal.config import (
    DEFAULT_AGENT_PORT,
    DEFAULT_AMQP_QUEUE,
    DEFAULT_HTTP_PORT,
    DEFAULT_RUNNER_PORT,
    AgentConfig,
    DispatcherConfig,
    RunnerConfig,
    default_data_dir,
    default_work_dir,
)
from narwhal.errors import ConfigError, NarwhalError, PipelineError
from narwhal.redact import RedactingFilter, redacted
from narwhal.settings import (
    FORGE_APIS,
    FORGES,
    SECRET_VARIABLES,
    agent_config,
    dispatcher_config,
    docker_options,
    embedded_runner,
    env,
    pick_executor,
    positive,
    runner_config,
)

if TYPE_CHECKING:
    from narwhal.dispatcher.datadir import DataDirLock
    from narwhal.mesh.discovery import Announcer
    from narwhal.runner.executor import Stop

log = logging.getLogger("narwhal")

#: Exit status when stdout's reader went away, as of a program SIGPIPE stopped.
SIGPIPE_STATUS = 128 + signal.SIGPIPE


# argument parser


class _Refused(argparse.Action):
    """A secret's value flag that is gone: every local user can read argv."""

    def __init__(self, option_strings: Sequence[str], dest: str, *, instead: str) -> None:
        super().__init__(option_strings, dest, nargs="?", help=argparse.SUPPRESS)
        self.instead = instead

    def __call__(self, parser: object, *_: object) -> None:
        flag = self.option_strings[0]
        raise ConfigError(
            f"{flag} VALUE is refused (other users can read a command line): use {self.instead}"
        )


def _secret_file_flag(p: argparse.ArgumentParser, flag: str, text: str) -> None:
    """``--X-file PATH`` (or ``NARWHAL_X``, ``NARWHAL_X_FILE``); ``--X VALUE`` refused."""
    name = flag.upper().replace("-", "_")
    p.add_argument(f"--{flag}-file", metavar="PATH", help=f"{text} (NARWHAL_{name}[_FILE])")
    instead = f"--{flag}-file PATH or NARWHAL_{name}"
    p.add_argument(f"--{flag}", action=_Refused, instead=instead)


def _mesh_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--heartbeat-interval",
        default=env("HEARTBEAT_INTERVAL", "1.0"),
        help="seconds between heartbeats (NARWHAL_HEARTBEAT_INTERVAL)",
    )
    p.add_argument(
        "--liveness",
        default=env("LIVENESS", "3"),
        help="missed heartbeats before a peer is dead (NARWHAL_LIVENESS)",
    )


def _dispatcher_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--http",
        default=env("HTTP", f"127.0.0.1:{DEFAULT_HTTP_PORT}"),
        help="REST API address HOST:PORT; port 0 picks a free one (NARWHAL_HTTP)",
    )
    p.add_argument(
        "--data-dir",
        default=env("DATA_DIR", str(default_data_dir())),
        help="where the job store lives (NARWHAL_DATA_DIR)",
    )
    _secret_file_flag(p, "api-token", "one more admin API token, read from a file")
    p.add_argument(
        "--public-read",
        action="store_true",
        default=env("PUBLIC_READ", "") in ("1", "true", "yes"),
        help="jobs, logs and runners readable without a token (NARWHAL_PUBLIC_READ=1)",
    )
    p.add_argument(
        "--max-attempts",
        default=env("MAX_ATTEMPTS", "3"),
        help="attempts before a job whose runner was lost ends in error",
    )
    p.add_argument(
        "--max-runner-capacity",
        default=env("MAX_RUNNER_CAPACITY", "256"),
        help="most slots a runner may claim; more are clamped (NARWHAL_MAX_RUNNER_CAPACITY)",
    )
    _mesh_flags(p)
    p.add_argument(
        "--keys-dir",
        default=None,
        help="CURVE keys: server.key(_secret) and runners/ (default DATA_DIR/keys; "
        "NARWHAL_KEYS_DIR)",
    )
    _insecure_flag(p)
    _amqp_flags(p)
    _status_flags(p)


def _insecure_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--insecure",
        action="store_true",
        default=env("INSECURE", "") == "1",
        help="no CurveZMQ on the mesh: anyone who reaches it can pose as a peer "
        "(NARWHAL_INSECURE=1)",
    )


def _runner_key_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--key",
        metavar="FILE",
        help="this runner's secret key file (default: made at first start in WORK_DIR/keys; "
        "NARWHAL_KEY)",
    )
    p.add_argument(
        "--dispatcher-key",
        metavar="FILE",
        help="the dispatcher's public key, its server.key (required unless --insecure; "
        "NARWHAL_DISPATCHER_KEY)",
    )
    _insecure_flag(p)


def _discovery_flags(p: argparse.ArgumentParser, *, default: str, what: str) -> None:
    p.add_argument(
        "--discovery",
        default=env("DISCOVERY", default),
        help=f"mdns: {what}; none: off (default {default}; NARWHAL_DISCOVERY)",
    )
    p.add_argument(
        "--mdns-interface",
        action="append",
        metavar="IP",
        help="address of an interface mDNS uses (repeatable; default: see docs/discovery.md; "
        "NARWHAL_MDNS_INTERFACE, comma-separated)",
    )


def _local_repos_flag(p: argparse.ArgumentParser, *, default: str) -> None:
    p.add_argument(
        "--allow-local-repos",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"build file:// URLs and absolute paths (default {default}; "
        "NARWHAL_ALLOW_LOCAL_REPOS=1/0)",
    )


def _runner_flags(p: argparse.ArgumentParser, *, listen: bool = True) -> None:
    if listen:
        p.add_argument(
            "--listen",
            default=env("LISTEN", f"tcp://127.0.0.1:{DEFAULT_RUNNER_PORT}"),
            help="endpoint the dispatcher connects to (NARWHAL_LISTEN)",
        )
    p.add_argument(
        "--id",
        default=env("ID", env("RUNNER_ID")),
        help="runner id (NARWHAL_ID; default HOST-XXXXXX, kept in WORK_DIR/runner-ids/)",
    )
    p.add_argument(
        "--capacity",
        default=env("CAPACITY", str(os.cpu_count() or 1)),
        help="jobs run at once (NARWHAL_CAPACITY)",
    )
    p.add_argument("--labels", default=env("LABELS", ""), help="k=v,k=v the runner offers")
    p.add_argument(
        "--executor",
        default=env("EXECUTOR", "auto"),
        choices=["auto", "local", "docker"],
        help="auto: docker when a Docker engine answers, else local (NARWHAL_EXECUTOR)",
    )
    _docker_flags(p)
    p.add_argument(
        "--work-dir",
        default=env("WORK_DIR", str(default_work_dir())),
        help="where job workspaces are made (NARWHAL_WORK_DIR)",
    )
    p.add_argument(
        "--cancel-grace",
        default=env("CANCEL_GRACE", "10"),
        help="seconds between SIGTERM and SIGKILL on cancel or timeout",
    )
    p.add_argument(
        "--drain-timeout",
        default=env("DRAIN_TIMEOUT", "0"),
        help="on shutdown, seconds running jobs may finish before they are cancelled",
    )


def _docker_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--docker-host",
        default=env("DOCKER_HOST"),
        help="Docker engine URL (default: DOCKER_HOST or the local socket)",
    )
    p.add_argument(
        "--image",
        default=env("IMAGE", "debian:bookworm-slim"),
        help="image of steps whose narwhal.yml names none (NARWHAL_IMAGE)",
    )
    p.add_argument(
        "--network",
        default=env("NETWORK", "bridge"),
        help="network of step containers: bridge or none (NARWHAL_NETWORK)",
    )
    p.add_argument(
        "--pull",
        default=env("PULL", "missing"),
        help="missing: pull images the engine lacks; never: such jobs end in error",
    )
    p.add_argument("--pull-timeout", default=env("PULL_TIMEOUT", "600"), help="seconds")
    p.add_argument("--max-memory", default=env("MAX_MEMORY"), help="per container, e.g. 2g")
    p.add_argument("--max-cpus", default=env("MAX_CPUS"), help="per container, e.g. 1.5")
    p.add_argument(
        "--max-pids", default=env("MAX_PIDS", "4096"), help="processes per container; 0: no limit"
    )
    p.add_argument(
        "--secret",
        action="append",
        metavar="NAME",
        help="pass environment variable NAME to every step, masked in logs (repeatable)",
    )
    p.add_argument(
        "--secrets-file",
        default=env("SECRETS_FILE"),
        help="file of NAME=VALUE lines, secrets like --secret (NARWHAL_SECRETS_FILE)",
    )


def _amqp_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--amqp",
        metavar="URL",
        help="RabbitMQ, without a password (it goes in --amqp-file or NARWHAL_AMQP)",
    )
    p.add_argument("--amqp-file", metavar="PATH", help="RabbitMQ URL (NARWHAL_AMQP[_FILE])")
    p.add_argument(
        "--amqp-queue",
        default=env("AMQP_QUEUE", DEFAULT_AMQP_QUEUE),
        help="queue of commit events; NAME.dead holds refused ones (NARWHAL_AMQP_QUEUE)",
    )
    p.add_argument(
        "--amqp-prefetch",
        default=env("AMQP_PREFETCH", "32"),
        help="commit events taken before acking (NARWHAL_AMQP_PREFETCH)",
    )
    p.add_argument(
        "--amqp-confirm-timeout",
        default=env("AMQP_CONFIRM_TIMEOUT", "5"),
        help="seconds to wait for the broker's confirm before answering 503",
    )
    p.add_argument(
        "--amqp-reconnect",
        default=env("AMQP_RECONNECT", "5"),
        help="longest wait in seconds between reconnect attempts",
    )


def _secret_flags(p: argparse.ArgumentParser, kind: str, text: str) -> None:
    for forge in FORGES:
        _secret_file_flag(p, f"{forge}-{kind}", f"{forge} {text.replace('FORGE', forge)}")


def _status_flags(p: argparse.ArgumentParser) -> None:
    _secret_flags(p, "token", "API token for commit statuses")
    for forge in FORGES:
        default = FORGE_APIS.get(forge, "none")
        p.add_argument(
            f"--{forge}-api",
            default=env(f"{forge.upper()}_API"),
            help=f"{forge} API base URL (default {default}; NARWHAL_{forge.upper()}_API)",
        )
    p.add_argument(
        "--public-url",
        default=env("PUBLIC_URL"),
        help="base of job links in commit statuses (default: the API URL; NARWHAL_PUBLIC_URL)",
    )


def _client_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--server",
        default=env("SERVER", f"http://127.0.0.1:{DEFAULT_HTTP_PORT}"),
        help="dispatcher API URL (NARWHAL_SERVER)",
    )
    _secret_file_flag(
        p, "api-token", "API token (default: DATA-DIR/admin.token for a local server)"
    )
    p.add_argument(
        "--data-dir",
        default=env("DATA_DIR", str(default_data_dir())),
        help="the local dispatcher's data dir, whose admin.token is used (NARWHAL_DATA_DIR)",
    )


def _secrets_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    secrets = sub.add_parser("secrets", help="a repository's secrets (docs/secrets.md)")
    actions = secrets.add_subparsers(dest="secrets_command", required=True, metavar="ACTION")
    repo = "clone URL or local path of the repository ('.' too)"
    for name, text in (
        ("set", "set NAME to the value on stdin"),
        ("list", "list the names (never the values)"),
        ("delete", "delete NAME"),
        ("forks", "whether pull requests from forks get the secrets (default off)"),
    ):
        action = actions.add_parser(name, help=text)
        action.add_argument("repo", help=repo)
        if name in ("set", "delete"):
            action.add_argument("name", help="secret name, like API_TOKEN")
        if name == "forks":
            action.add_argument("policy", help="on or off")
        _client_flags(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="narwhal", description="A small, fast, self-hosted CI.")
    parser.add_argument("--version", action="version", version=f"narwhal {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser("up", help="dispatcher + one local runner + REST API in one process")
    _dispatcher_flags(up)
    _discovery_flags(up, default="none", what="also use runners announced on the LAN")
    _runner_flags(up, listen=False)
    _secret_flags(up, "secret", "webhook secret; serves /webhooks/FORGE")
    _local_repos_flag(up, default="on")

    dispatcher = sub.add_parser("dispatcher", help="run the dispatcher and its REST API")
    _dispatcher_flags(dispatcher)
    _discovery_flags(dispatcher, default="mdns", what="connect to runners announced on the LAN")
    dispatcher.add_argument(
        "--runner",
        action="append",
        metavar="URL",
        help="runner endpoint tcp://HOST:PORT (repeatable)",
    )
    _local_repos_flag(dispatcher, default="off")

    agent = sub.add_parser("agent", help="receive forge webhooks, queue commits on RabbitMQ")
    agent.add_argument(
        "--http",
        default=env("AGENT_HTTP", f"127.0.0.1:{DEFAULT_AGENT_PORT}"),
        help="webhook address HOST:PORT; port 0 picks a free one (NARWHAL_AGENT_HTTP)",
    )
    _amqp_flags(agent)
    _secret_flags(agent, "secret", "webhook secret; serves /webhooks/FORGE")

    runner = sub.add_parser("runner", help="run a runner that the dispatcher connects to")
    _runner_flags(runner)
    _mesh_flags(runner)
    _runner_key_flags(runner)
    _discovery_flags(runner, default="mdns", what="announce this runner on the LAN")
    _local_repos_flag(runner, default="off")

    from narwhal.keycommands import add_keys_parser

    add_keys_parser(sub)

    submit = sub.add_parser("submit", help="submit a job for a repository")
    submit.add_argument("repo", help="clone URL or local path")
    submit.add_argument(
        "--ref",
        help="ref to build, e.g. refs/heads/main (default: a local path's checked-out "
        "branch and commit; a URL's HEAD)",
    )
    submit.add_argument("--sha", help="exact commit (default: the tip of --ref)")
    submit.add_argument("--event", default="push", help="event name seen by 'when' filters")
    submit.add_argument("--labels", help="k=v,k=v a runner must offer to take the job")
    submit.add_argument(
        "-f", "--follow", action="store_true", help="stream the logs of all its jobs until done"
    )
    _client_flags(submit)

    logs = sub.add_parser("logs", help="print a job's log")
    logs.add_argument("job", type=int)
    logs.add_argument(
        "-f", "--follow", action="store_true", help="stream it and its matrix jobs until all end"
    )
    _client_flags(logs)

    jobs = sub.add_parser("jobs", help="list jobs")
    jobs.add_argument("--state", action="append", help="only jobs in this state (repeatable)")
    jobs.add_argument("--repo", help="only jobs of this repository")
    jobs.add_argument("--limit", type=int, default=20)
    _client_flags(jobs)

    for name, text in (
        ("cancel", "cancel a job and the matrix jobs it spawned"),
        ("resubmit", "run a job's commit again"),
    ):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("job", type=int)
        if name == "cancel":
            cmd.add_argument(
                "--all", action="store_true", help="a matrix job: cancel its whole submission"
            )
        _client_flags(cmd)

    runners = sub.add_parser("runners", help="list the runners the dispatcher knows")
    _client_flags(runners)
    _secrets_parser(sub)
    _tokens_parser(sub.add_parser("tokens", help="create, list and revoke API tokens (admin)"))

    exe = sub.add_parser("exec", help="run a directory's narwhal.yml here, without a dispatcher")
    exe.add_argument("directory", nargs="?", default=".")
    exe.add_argument(
        "--branch", help="branch seen by 'when' filters (default: the checked-out one)"
    )
    exe.add_argument("--event", default="push", help="event seen by 'when' filters")
    exe.add_argument(
        "--executor",
        default="local",
        choices=["auto", "local", "docker"],
        help="local (default) runs the steps here; docker runs each in a container",
    )
    exe.add_argument("--cancel-grace", default="10")
    _docker_flags(exe)
    return parser


def _tokens_parser(tokens: argparse.ArgumentParser) -> None:
    actions = tokens.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="create a token; it is printed once")
    create.add_argument("--name", required=True)
    create.add_argument("--scope", required=True, choices=["read", "write", "admin"])
    revoke = actions.add_parser("revoke", help="revoke a token: it stops working at once")
    revoke.add_argument("name")
    listing = actions.add_parser("list", help="names, scopes, when created and last used")
    for cmd in (create, revoke, listing):
        _client_flags(cmd)


# daemons


async def _serve(dconf: DispatcherConfig, rconf: RunnerConfig | None, lock: DataDirLock) -> None:
    from narwhal.dispatcher.server import serve

    stop, hurry = _two_signals()
    ctx = zmq.asyncio.Context()
    try:
        await serve(
            dconf, rconf, context=ctx, lock=lock, stop=stop, hurry=hurry, announce=_announce
        )
    finally:
        ctx.term()


def _two_signals() -> tuple[asyncio.Event, asyncio.Event]:
    """SIGINT/SIGTERM once: ``stop`` (an orderly shutdown); again: ``hurry`` (at once)."""
    stop, hurry = asyncio.Event(), asyncio.Event()

    def on_signal() -> None:
        if not stop.is_set():
            log.info("shutting down; press Ctrl-C again to stop at once (running steps killed)")
            stop.set()
        elif not hurry.is_set():
            log.warning("stopping at once: running steps are killed, their jobs end cancelled")
            hurry.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    return stop, hurry


def _announce(line: str) -> None:
    print(line, flush=True)  # noqa: T201 - the CLI's own output


async def _run_runner(conf: RunnerConfig) -> None:
    from narwhal.runner.runner import Runner

    stop, hurry = _two_signals()
    async with Runner(conf) as runner:
        announcer = await _announce_runner(conf, runner.endpoint)
        try:
            shown = f" + mDNS as {announcer.announcement.instance!r}" if announcer else ""
            _announce(f"narwhal runner {conf.runner_id} listening on {runner.endpoint}{shown}")
            await stop.wait()
        finally:
            # Goodbye only after the last job reports are in (a goodbye makes
            # the dispatcher drop the link and requeue what it still holds),
            # and before the socket closes.
            hurried = asyncio.create_task(_on_hurry(hurry, runner.hurry))
            try:
                await runner.drain()
            finally:
                hurried.cancel()
            if announcer is not None:
                await announcer.aclose()


async def _on_hurry(hurry: asyncio.Event, action: Callable[[], None]) -> None:
    await hurry.wait()
    action()


async def _announce_runner(conf: RunnerConfig, endpoint: str) -> Announcer | None:
    if not conf.discovery.enabled:
        return None
    from narwhal.mesh.announcement import Announcement
    from narwhal.mesh.discovery import Announcer, announced_addresses

    host, _, port = endpoint.partition("://")[2].rpartition(":")
    interfaces = conf.discovery.interfaces
    announcement = Announcement(
        runner_id=conf.runner_id,
        addresses=announced_addresses(host, interfaces),
        port=int(port),
        capacity=conf.capacity,
        labels=dict(conf.labels),
        key=conf.curve.public_key.decode() if conf.curve is not None else None,
    )
    announcer = Announcer(announcement, interfaces=interfaces)
    await announcer.start()
    return announcer


async def _run_agent(conf: AgentConfig) -> None:
    from narwhal.agent.server import serve_agent

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await serve_agent(conf, stop=stop, announce=_announce)


def _scrub_secrets() -> None:
    """Secrets read from the environment are not handed down to child processes."""
    for name in SECRET_VARIABLES:
        os.environ.pop(name, None)


def _daemon(args: argparse.Namespace) -> int:
    if args.command == "agent":
        conf = agent_config(args)
        _scrub_secrets()
        asyncio.run(_run_agent(conf))
        return 0
    if args.command == "runner":
        asyncio.run(_run_runner(runner_config(args)))
        return 0
    from narwhal.dispatcher import datadir

    # Locked before anything writes into it (keys, the embedded runner's trust).
    with datadir.hold(Path(args.data_dir).expanduser()) as lock:
        dconf = dispatcher_config(args)
        rconf = None
        if args.command == "up":
            rconf = runner_config(args, listen="tcp://127.0.0.1:*", default_id="local")
            rconf = embedded_runner(dconf, rconf)
        _scrub_secrets()
        asyncio.run(_serve(dconf, rconf, lock))
    return 0


def _exec(args: argparse.Namespace) -> int:
    directory = Path(args.directory)
    if not directory.is_dir():
        raise ConfigError(f"{directory}: not a directory")
    conf = RunnerConfig(
        runner_id="exec",
        cancel_grace=positive(float, "--cancel-grace", args.cancel_grace),
        **docker_options(args),
    )
    conf = dataclasses.replace(conf, executor=pick_executor(args.executor, conf.docker_host))
    return asyncio.run(_exec_directory(directory, args, conf))


async def _exec_directory(directory: Path, args: argparse.Namespace, conf: RunnerConfig) -> int:
    from narwhal.runner.docker import DockerExecutor
    from narwhal.runner.executor import Executor, LocalExecutor, Stop
    from narwhal.runner.local_exec import exec_directory
    from narwhal.runner.masking import masked_writer
    from narwhal.runner.secret_env import SecretsExecutor

    async with contextlib.AsyncExitStack() as stack:
        executor: Executor = LocalExecutor(grace=conf.cancel_grace)
        if conf.executor == "docker":
            docker = await stack.enter_async_context(DockerExecutor(conf))
            await asyncio.to_thread(docker.remove_leftovers)
            executor = docker
        stop = Stop()
        stdout = _PipeGuard(sys.stdout.buffer, stop)
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


class _PipeGuard:
    """stdout for ``exec``: once its reader is gone (``| head``), stop the build.

    Steps would block on a full pipe, or their output be lost: the build is
    cancelled in order instead, the rest of the output dropped, and the exit
    status that of a program stopped by SIGPIPE.
    """

    def __init__(self, out: BinaryIO, stop: Stop) -> None:
        self._out, self._stop = out, stop
        self.broken = False

    def write(self, data: bytes) -> int:
        if not self.broken:
            try:
                self._out.write(data)
            except BrokenPipeError:
                self._broke()
        return len(data)

    def flush(self) -> None:
        if not self.broken:
            try:
                self._out.flush()
            except BrokenPipeError:
                self._broke()

    def _broke(self) -> None:
        self.broken = True
        _drop_stdout()
        self._stop.set("cancelled", "stdout closed")


def _drop_stdout() -> None:
    """Point stdout at /dev/null: Python's last flush must not fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


#: Arguments that name files: the operating system takes any bytes there.
_PATH_ARGS = frozenset({"directory", "data_dir", "work_dir"})


def _check_text(args: argparse.Namespace) -> None:
    """Refuse arguments (and NARWHAL_* values) with bytes that are not UTF-8.

    Python hands them over as lone surrogates, which JSON, ZeroMQ and the
    network cannot carry; better one line now than a traceback later.
    """
    for dest, value in vars(args).items():
        if dest in _PATH_ARGS or dest.endswith("_file"):
            continue
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str) and not item.isascii():
                try:
                    item.encode()
                except UnicodeEncodeError:
                    name = dest.replace("_", "-")
                    raise ConfigError(f"{name}: not valid UTF-8: {item!r}") from None


def _command(args: argparse.Namespace, *, daemon: bool) -> int:
    if daemon:
        return _daemon(args)
    if args.command == "exec":
        return _exec(args)
    if args.command == "keys":
        from narwhal.keycommands import run_keys

        return run_keys(args)
    from narwhal.client import run_client

    return run_client(args)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except ConfigError as e:  # a refused secret flag
        print(f"narwhal: {e}", file=sys.stderr)  # noqa: T201 - the CLI's own output
        return 2
    daemon = args.command in ("up", "dispatcher", "runner", "agent")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO if daemon else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactingFilter())
    if not args.verbose:
        # Narwhal logs every broker failure itself, rate-limited; aiormq would
        # add a line (or a traceback) for each reconnect attempt.
        logging.getLogger("aiormq").setLevel(logging.CRITICAL)
    try:
        _check_text(args)
        return _command(args, daemon=daemon)
    except BrokenPipeError:  # stdout's reader went away (| head): quietly, as CLIs do
        _drop_stdout()
        return SIGPIPE_STATUS
    except PipelineError as e:  # narwhal.yml: the build did not succeed, as in a job
        print(f"narwhal: {e}", file=sys.stderr)  # noqa: T201 - the CLI's own output
        return 1
    except (NarwhalError, OSError) as e:
        print(f"narwhal: {redacted(str(e))}", file=sys.stderr)  # noqa: T201 - the CLI's own output
        return 2
    except KeyboardInterrupt:
        return 130


def entrypoint() -> None:
    """Console script entry: ``narwhal``."""
    sys.exit(main())
