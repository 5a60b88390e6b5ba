"""The ``narwhal`` command: daemons (up, dispatcher, runner, agent) and client commands.

This is the one place where flags and ``NARWHAL_*`` environment variables are
parsed into config objects, where logging is configured, and where signals
and exit codes are handled. Exit codes: 0 success, 1 a job or pipeline did
not succeed, 2 a usage, config or connection error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import os
import re
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zmq.asyncio

from narwhal import __version__
from narwhal.config import (
    DEFAULT_AGENT_PORT,
    DEFAULT_AMQP_QUEUE,
    DEFAULT_HTTP_PORT,
    DEFAULT_RUNNER_PORT,
    AgentConfig,
    AmqpConfig,
    DiscoveryConfig,
    DispatcherConfig,
    ForgeApi,
    MeshConfig,
    RunnerConfig,
    StatusConfig,
    WebhookConfig,
    default_data_dir,
    default_work_dir,
)
from narwhal.errors import ConfigError, NarwhalError

if TYPE_CHECKING:
    from narwhal.mesh.discovery import Announcer

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
        amqp=amqp_config(args),
        webhooks=webhook_config(args) if args.command == "up" else None,
        status=status_config(args),
        discovery=dispatcher_discovery(args, host),
    )


# mDNS discovery (docs/discovery.md)


def _mdns_interfaces(args: argparse.Namespace) -> tuple[str, ...]:
    given = args.mdns_interface or (_env("MDNS_INTERFACE") or "").split(",")
    interfaces = []
    for text in filter(None, (item.strip() for item in given)):
        try:
            interfaces.append(str(ipaddress.IPv4Address(text)))
        except ValueError:
            raise ConfigError(f"--mdns-interface: expected an IPv4 address, got {text!r}") from None
    return tuple(interfaces)


def _discovery_on(args: argparse.Namespace) -> bool:
    if args.discovery not in ("mdns", "none"):
        raise ConfigError(f"--discovery: expected mdns or none, got {args.discovery!r}")
    return bool(args.discovery == "mdns")


def dispatcher_discovery(args: argparse.Namespace, http_host: str) -> DiscoveryConfig:
    """Browse on loopback when the API is loopback-only, else on every interface."""
    if not _discovery_on(args):
        return DiscoveryConfig()
    default = ("127.0.0.1",) if _loopback(http_host) else ()
    return DiscoveryConfig(enabled=True, interfaces=_mdns_interfaces(args) or default)


def runner_discovery(args: argparse.Namespace, listen: str) -> DiscoveryConfig:
    """Announce on the interface of the ``--listen`` address (every one for 0.0.0.0)."""
    if not _discovery_on(args):
        return DiscoveryConfig()
    scheme, _, rest = listen.partition("://")
    if scheme != "tcp":
        log.warning("not announcing on mDNS: --listen %s is not a tcp:// address", listen)
        return DiscoveryConfig()
    interfaces = _mdns_interfaces(args)
    host = rest.rpartition(":")[0]
    if host.startswith("["):
        log.warning("not announcing on mDNS: it is IPv4 only, and --listen %s is IPv6", listen)
        return DiscoveryConfig()
    if not interfaces and host not in ("0.0.0.0", "*"):
        interfaces = ("127.0.0.1",) if _loopback(host) else (_interface_of(host),)
    return DiscoveryConfig(enabled=True, interfaces=interfaces)


def _interface_of(host: str) -> str:
    """The IPv4 address of a ``--listen`` host: an address, or an interface name like eth0."""
    with contextlib.suppress(ValueError):
        return str(ipaddress.IPv4Address(host))
    from narwhal.mesh.discovery import interface_address

    found = interface_address(host)
    if found is None:
        raise ConfigError(
            f"--listen {host}: cannot tell which interface to announce on; set --mdns-interface IP"
        )
    return found


# agent, AMQP, webhooks, commit statuses

_FORGES = ("github", "gitea", "gitlab")
_FORGE_APIS = {"github": "https://api.github.com", "gitlab": "https://gitlab.com/api/v4"}


def _secret(args: argparse.Namespace, flag: str) -> str | None:
    """``--X``, ``--X-file``, ``NARWHAL_X`` or ``NARWHAL_X_FILE``, the first set."""
    dest = flag.replace("-", "_")
    value, path = getattr(args, dest, None), getattr(args, f"{dest}_file", None)
    if value and path:
        raise ConfigError(f"--{flag} and --{flag}-file: give only one")
    value = value or (None if path else _env(dest.upper()))
    path = path or (None if value else _env(f"{dest.upper()}_FILE"))
    if path:
        try:
            value = Path(path).expanduser().read_text().strip()
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"--{flag}-file {path}: cannot read it: {e}") from None
        if not value:
            raise ConfigError(f"--{flag}-file {path}: the file is empty")
    return value or None


def _http_url(flag: str, url: str) -> str:
    if not url.startswith(("http://", "https://")) or len(url) < 10:
        raise ConfigError(f"{flag}: expected an http(s):// URL, got {url!r}")
    return url.rstrip("/")


def amqp_config(args: argparse.Namespace) -> AmqpConfig | None:
    if not args.amqp:
        return None
    if not args.amqp.startswith(("amqp://", "amqps://")):
        raise ConfigError(
            f"--amqp: expected amqp://USER:PASSWORD@HOST:PORT/VHOST, got {args.amqp!r}"
        )
    return AmqpConfig(
        url=args.amqp,
        queue=args.amqp_queue,
        prefetch=int(_positive(int, "--amqp-prefetch", args.amqp_prefetch)),
        confirm_timeout=_positive(float, "--amqp-confirm-timeout", args.amqp_confirm_timeout),
        reconnect_max=_positive(float, "--amqp-reconnect", args.amqp_reconnect),
    )


def webhook_config(args: argparse.Namespace) -> WebhookConfig | None:
    github, gitea, gitlab = (_secret(args, f"{forge}-secret") for forge in _FORGES)
    if not (github or gitea or gitlab):
        return None
    return WebhookConfig(github_secret=github, gitea_secret=gitea, gitlab_secret=gitlab)


def status_config(args: argparse.Namespace) -> StatusConfig:
    forges = []
    for forge in _FORGES:
        token = _secret(args, f"{forge}-token")
        url = getattr(args, f"{forge}_api") or _FORGE_APIS.get(forge)
        if token and not url:
            raise ConfigError(f"--{forge}-token needs --{forge}-api (e.g. https://HOST/api/v1)")
        if token and url:
            forges.append(ForgeApi(forge=forge, url=_http_url(f"--{forge}-api", url), token=token))
    public = _http_url("--public-url", args.public_url) if args.public_url else None
    return StatusConfig(forges=tuple(forges), public_url=public)


def agent_config(args: argparse.Namespace) -> AgentConfig:
    host, port = host_port(args.http, DEFAULT_AGENT_PORT)
    amqp = amqp_config(args)
    if amqp is None:
        raise ConfigError("narwhal agent needs --amqp URL (or NARWHAL_AMQP)")
    webhooks = webhook_config(args)
    if webhooks is None:
        raise ConfigError("set at least one webhook secret: --github-secret, --gitea-secret ...")
    return AgentConfig(http_host=host, http_port=port, amqp=amqp, webhooks=webhooks)


def runner_config(
    args: argparse.Namespace, *, listen: str | None = None, default_id: str | None = None
) -> RunnerConfig:
    endpoint = listen or args.listen
    default_id = default_id or f"{socket.gethostname()}-{endpoint.rpartition(':')[2]}"
    conf = RunnerConfig(
        runner_id=args.id or default_id,
        listen=endpoint,
        capacity=int(_positive(int, "--capacity", args.capacity)),
        labels=parse_labels(args.labels),
        work_dir=Path(args.work_dir).expanduser(),
        cancel_grace=_positive(float, "--cancel-grace", args.cancel_grace),
        drain_timeout=_non_negative("--drain-timeout", args.drain_timeout),
        mesh=_mesh(args),
        **_docker_options(args),
    )
    # ``up`` embeds its runner in-process: it never announces itself.
    discovery = runner_discovery(args, endpoint) if args.command == "runner" else DiscoveryConfig()
    return dataclasses.replace(
        conf, executor=_pick_executor(args.executor, conf.docker_host), discovery=discovery
    )


def _docker_options(args: argparse.Namespace) -> dict[str, Any]:
    """RunnerConfig fields of the Docker executor, limits and secrets."""
    if args.network not in ("bridge", "none"):
        raise ConfigError(f"--network: expected bridge or none, got {args.network!r}")
    if args.pull not in ("missing", "never"):
        raise ConfigError(f"--pull: expected missing or never, got {args.pull!r}")
    return {
        "docker_host": args.docker_host or None,
        "docker_image": args.image,
        "docker_network": args.network,
        "docker_pull": args.pull,
        "docker_pull_timeout": _positive(float, "--pull-timeout", args.pull_timeout),
        "max_memory": _memory_size(args.max_memory) if args.max_memory else None,
        "max_cpus": _optional_limit(float, "--max-cpus", args.max_cpus),
        "max_pids": _optional_limit(int, "--max-pids", args.max_pids),
        "secrets": _secrets(args.secret or [], args.secrets_file),
    }


def _optional_limit(kind: type[int] | type[float], name: str, value: str | None) -> Any:
    """A positive limit, or None for none (unset, or 0)."""
    if not value or value.strip() in ("0", "0.0"):
        return None
    return kind(_positive(kind, name, value))


def _pick_executor(choice: str, docker_host: str | None) -> str:
    """``auto`` is docker when an engine answers, else local; the choice is logged."""
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


_SIZE = re.compile(r"([0-9]{1,15})([kmg]?)b?", re.IGNORECASE)


def _memory_size(text: str) -> int:
    match = _SIZE.fullmatch(text.strip())
    if match is None or int(match.group(1)) == 0:
        raise ConfigError(f"--max-memory: expected a size like 512m or 2g, got {text!r}")
    return int(match.group(1)) << {"": 0, "k": 10, "m": 20, "g": 30}[match.group(2).lower()]


_SECRET_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: Masking a secret of a character or two would garble every log.
MIN_SECRET = 4


def _secrets(names: Sequence[str], secrets_file: str | None) -> dict[str, str]:
    """``--secret NAME`` (the value from the environment) and ``--secrets-file`` lines."""
    found: dict[str, str] = {}
    if secrets_file:
        found.update(_secrets_file(Path(secrets_file).expanduser()))
    for name in names:
        if name not in os.environ:
            raise ConfigError(f"--secret {name}: no environment variable {name}")
        found[name] = os.environ[name]
    for name, value in found.items():
        if not _SECRET_NAME.fullmatch(name):
            raise ConfigError(f"secret {name!r}: expected a variable name like API_TOKEN")
        if len(value) < MIN_SECRET:
            raise ConfigError(f"secret {name}: shorter than {MIN_SECRET} characters")
    return found


def _secrets_file(path: Path) -> dict[str, str]:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"--secrets-file {path}: {e}") from None
    found = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, value = line.partition("=")
        if not sep:
            raise ConfigError(f"{path}:{number}: expected NAME=VALUE")
        found[name.strip()] = value
    return found


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
    _amqp_flags(p)
    _status_flags(p)


def _discovery_flags(p: argparse.ArgumentParser, *, default: str, what: str) -> None:
    p.add_argument(
        "--discovery",
        default=_env("DISCOVERY", default),
        help=f"mdns: {what}; none: off (default {default}; NARWHAL_DISCOVERY)",
    )
    p.add_argument(
        "--mdns-interface",
        action="append",
        metavar="IP",
        help="address of an interface mDNS uses (repeatable; default: see docs/discovery.md; "
        "NARWHAL_MDNS_INTERFACE, comma-separated)",
    )


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
    p.add_argument(
        "--executor",
        default=_env("EXECUTOR", "auto"),
        choices=["auto", "local", "docker"],
        help="auto: docker when a Docker engine answers, else local (NARWHAL_EXECUTOR)",
    )
    _docker_flags(p)
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


def _docker_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--docker-host",
        default=_env("DOCKER_HOST"),
        help="Docker engine URL (default: DOCKER_HOST or the local socket)",
    )
    p.add_argument(
        "--image",
        default=_env("IMAGE", "debian:bookworm-slim"),
        help="image of steps whose narwhal.yml names none (NARWHAL_IMAGE)",
    )
    p.add_argument(
        "--network",
        default=_env("NETWORK", "bridge"),
        help="network of step containers: bridge or none (NARWHAL_NETWORK)",
    )
    p.add_argument(
        "--pull",
        default=_env("PULL", "missing"),
        help="missing: pull images the engine lacks; never: such jobs end in error",
    )
    p.add_argument("--pull-timeout", default=_env("PULL_TIMEOUT", "600"), help="seconds")
    p.add_argument("--max-memory", default=_env("MAX_MEMORY"), help="per container, e.g. 2g")
    p.add_argument("--max-cpus", default=_env("MAX_CPUS"), help="per container, e.g. 1.5")
    p.add_argument(
        "--max-pids", default=_env("MAX_PIDS", "4096"), help="processes per container; 0: no limit"
    )
    p.add_argument(
        "--secret",
        action="append",
        metavar="NAME",
        help="pass environment variable NAME to every step, masked in logs (repeatable)",
    )
    p.add_argument(
        "--secrets-file",
        default=_env("SECRETS_FILE"),
        help="file of NAME=VALUE lines, secrets like --secret (NARWHAL_SECRETS_FILE)",
    )


def _amqp_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--amqp", default=_env("AMQP"), metavar="URL", help="RabbitMQ (NARWHAL_AMQP)")
    p.add_argument(
        "--amqp-queue",
        default=_env("AMQP_QUEUE", DEFAULT_AMQP_QUEUE),
        help="queue of commit events; NAME.dead holds refused ones (NARWHAL_AMQP_QUEUE)",
    )
    p.add_argument(
        "--amqp-prefetch",
        default=_env("AMQP_PREFETCH", "32"),
        help="commit events taken before acking (NARWHAL_AMQP_PREFETCH)",
    )
    p.add_argument(
        "--amqp-confirm-timeout",
        default=_env("AMQP_CONFIRM_TIMEOUT", "5"),
        help="seconds to wait for the broker's confirm before answering 503",
    )
    p.add_argument(
        "--amqp-reconnect",
        default=_env("AMQP_RECONNECT", "5"),
        help="longest wait in seconds between reconnect attempts",
    )


def _secret_flags(p: argparse.ArgumentParser, kind: str, text: str) -> None:
    for forge in _FORGES:
        name = f"{forge.upper()}_{kind.upper()}"
        shown = text.replace("FORGE", forge)
        p.add_argument(f"--{forge}-{kind}", help=f"{forge} {shown} (NARWHAL_{name})")
        p.add_argument(f"--{forge}-{kind}-file", help=f"read it from a file (NARWHAL_{name}_FILE)")


def _status_flags(p: argparse.ArgumentParser) -> None:
    _secret_flags(p, "token", "API token for commit statuses")
    for forge in _FORGES:
        default = _FORGE_APIS.get(forge, "none")
        p.add_argument(
            f"--{forge}-api",
            default=_env(f"{forge.upper()}_API"),
            help=f"{forge} API base URL (default {default}; NARWHAL_{forge.upper()}_API)",
        )
    p.add_argument(
        "--public-url",
        default=_env("PUBLIC_URL"),
        help="base of job links in commit statuses (default: the API URL; NARWHAL_PUBLIC_URL)",
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
    _discovery_flags(up, default="none", what="also use runners announced on the LAN")
    _runner_flags(up, listen=False)
    _secret_flags(up, "secret", "webhook secret; serves /webhooks/FORGE")

    dispatcher = sub.add_parser("dispatcher", help="run the dispatcher and its REST API")
    _dispatcher_flags(dispatcher)
    _discovery_flags(dispatcher, default="mdns", what="connect to runners announced on the LAN")
    dispatcher.add_argument(
        "--runner",
        action="append",
        metavar="URL",
        help="runner endpoint tcp://HOST:PORT (repeatable)",
    )

    agent = sub.add_parser("agent", help="receive forge webhooks, queue commits on RabbitMQ")
    agent.add_argument(
        "--http",
        default=_env("AGENT_HTTP", f"127.0.0.1:{DEFAULT_AGENT_PORT}"),
        help="webhook address HOST:PORT; port 0 picks a free one (NARWHAL_AGENT_HTTP)",
    )
    _amqp_flags(agent)
    _secret_flags(agent, "secret", "webhook secret; serves /webhooks/FORGE")

    runner = sub.add_parser("runner", help="run a runner that the dispatcher connects to")
    _runner_flags(runner)
    _mesh_flags(runner)
    _discovery_flags(runner, default="mdns", what="announce this runner on the LAN")

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
    exe.add_argument(
        "--executor",
        default="local",
        choices=["auto", "local", "docker"],
        help="local (default) runs the steps here; docker runs each in a container",
    )
    exe.add_argument("--cancel-grace", default="10")
    _docker_flags(exe)
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
        announcer = await _announce_runner(conf, runner.endpoint)
        try:
            shown = f" + mDNS as {announcer.announcement.instance!r}" if announcer else ""
            _announce(f"narwhal runner {conf.runner_id} listening on {runner.endpoint}{shown}")
            await stop.wait()
        finally:
            # Goodbye only after the last job reports are in (a goodbye makes
            # the dispatcher drop the link and requeue what it still holds),
            # and before the socket closes.
            await runner.drain()
            if announcer is not None:
                await announcer.aclose()


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


def _daemon(args: argparse.Namespace) -> int:
    if args.command == "agent":
        asyncio.run(_run_agent(agent_config(args)))
        return 0
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
    directory = Path(args.directory)
    if not directory.is_dir():
        raise ConfigError(f"{directory}: not a directory")
    conf = RunnerConfig(
        runner_id="exec",
        cancel_grace=_positive(float, "--cancel-grace", args.cancel_grace),
        **_docker_options(args),
    )
    conf = dataclasses.replace(conf, executor=_pick_executor(args.executor, conf.docker_host))
    return asyncio.run(_exec_directory(directory, args, conf))


async def _exec_directory(directory: Path, args: argparse.Namespace, conf: RunnerConfig) -> int:
    from narwhal.runner.docker import DockerExecutor
    from narwhal.runner.executor import Executor, LocalExecutor
    from narwhal.runner.local_exec import exec_directory
    from narwhal.runner.masking import SecretsExecutor, masked_writer

    async with contextlib.AsyncExitStack() as stack:
        executor: Executor = LocalExecutor(grace=conf.cancel_grace)
        if conf.executor == "docker":
            docker = await stack.enter_async_context(DockerExecutor(conf))
            await asyncio.to_thread(docker.remove_leftovers)
            executor = docker
        out = stack.enter_context(masked_writer(sys.stdout.buffer, conf.secrets.values()))
        status = await exec_directory(
            directory,
            executor=SecretsExecutor(executor, conf.secrets),
            branch=args.branch,
            event=args.event,
            out=out,
            err=sys.stderr,
        )
    return status


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    daemon = args.command in ("up", "dispatcher", "runner", "agent")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO if daemon else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        # Narwhal logs every broker failure itself, rate-limited; aiormq would
        # add a line (or a traceback) for each reconnect attempt.
        logging.getLogger("aiormq").setLevel(logging.CRITICAL)
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
