"""Parsed command-line arguments and ``NARWHAL_*`` variables, turned into config objects.

The one place where flag values are checked and converted (the parser that
defines the flags is ``narwhal.cli``); every other module gets frozen config
objects. Bad values raise ``ConfigError`` with a one-line message naming the
flag.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import ipaddress
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from narwhal.config import (
    DEFAULT_AGENT_PORT,
    DEFAULT_HTTP_PORT,
    AgentConfig,
    AmqpConfig,
    DiscoveryConfig,
    DispatcherConfig,
    ForgeApi,
    MeshConfig,
    RunnerConfig,
    RunnerCurve,
    ServerCurve,
    StatusConfig,
    WebhookConfig,
)
from narwhal.errors import ConfigError
from narwhal.forges import FORGE_APIS, FORGES
from narwhal.redact import redacted
from narwhal.runner.identity import default_runner_id
from narwhal.secret_rules import check_name, check_value

log = logging.getLogger("narwhal")


def env(name: str, default: str | None = None) -> str | None:
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


def positive(kind: type[int] | type[float], name: str, value: str) -> float:
    try:
        number = kind(value)
    except ValueError:
        raise ConfigError(f"{name}: expected a number, got {value!r}") from None
    if number <= 0:
        raise ConfigError(f"{name}: must be positive, got {value!r}")
    return number


def _non_negative(name: str, value: str) -> float:
    return 0.0 if value in ("0", "0.0") else positive(float, name, value)


def _mesh(args: argparse.Namespace) -> MeshConfig:
    return MeshConfig(
        heartbeat_interval=positive(float, "--heartbeat-interval", args.heartbeat_interval),
        liveness=int(positive(int, "--liveness", args.liveness)),
    )


def _directory(text: str) -> Path:
    """A directory flag as an absolute path: git and the steps run elsewhere than here."""
    return Path(text).expanduser().absolute()


def dispatcher_config(args: argparse.Namespace) -> DispatcherConfig:
    host, port = host_port(args.http, DEFAULT_HTTP_PORT)
    return DispatcherConfig(
        data_dir=_directory(args.data_dir),
        http_host=host,
        http_port=port,
        runners=tuple(getattr(args, "runner", None) or ()),
        api_token=secret(args, "api-token"),
        public_read=bool(args.public_read),
        max_attempts=int(positive(int, "--max-attempts", args.max_attempts)),
        max_runner_capacity=int(positive(int, "--max-runner-capacity", args.max_runner_capacity)),
        mesh=_mesh(args),
        amqp=amqp_config(args),
        webhooks=webhook_config(args) if args.command == "up" else None,
        status=status_config(args),
        discovery=dispatcher_discovery(args, host),
        curve=None if args.insecure else server_curve(_keys_dir(args)),
        allow_local_repos=allow_local_repos(args),
    )


# CurveZMQ keys (docs/ARCHITECTURE.md, mesh)

SERVER_KEY = "server"
EMBEDDED_RUNNER_KEY = "local-runner"


def _keys_dir(args: argparse.Namespace) -> Path:
    given = args.keys_dir or env("KEYS_DIR")
    return _directory(given) if given else _directory(args.data_dir) / "keys"


def server_curve(keys_dir: Path) -> ServerCurve:
    """The dispatcher's key pair (made at first start) and its trusted runners' directory."""
    from narwhal.mesh.keys import load_or_create

    pair, created = load_or_create(keys_dir, SERVER_KEY)
    runners = keys_dir / "runners"
    try:
        runners.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--keys-dir {keys_dir}: {e}") from None
    if created:
        log.info(
            "made the dispatcher's CURVE key pair in %s: give runners %s (--dispatcher-key)",
            keys_dir,
            keys_dir / f"{SERVER_KEY}.key",
        )
    return ServerCurve(public_key=pair.public, secret_key=pair.secret, runners_dir=runners)


def embedded_runner(dconf: DispatcherConfig, rconf: RunnerConfig) -> RunnerConfig:
    """``narwhal up``'s own runner: a key pair of its own, trusted as its id without asking."""
    if dconf.curve is None:
        return rconf
    from narwhal.mesh.keys import load_or_create
    from narwhal.mesh.trust import revoke, scan, trust

    keys_dir = dconf.curve.runners_dir.parent
    pair, _ = load_or_create(keys_dir, EMBEDDED_RUNNER_KEY)
    listing = scan(dconf.curve.runners_dir)
    for entry in listing.entries if listing is not None else ():
        if entry.key == pair.public and entry.runner_id != rconf.runner_id:
            revoke(dconf.curve.runners_dir, entry.runner_id)  # our own key, under an old --id
    trust(dconf.curve.runners_dir, pair.public, rconf.runner_id)
    curve = RunnerCurve(
        public_key=pair.public, secret_key=pair.secret, server_key=dconf.curve.public_key
    )
    return dataclasses.replace(rconf, curve=curve)


def runner_curve(args: argparse.Namespace, runner_id: str, work_dir: Path) -> RunnerCurve | None:
    """``--key`` (made at first start) and ``--dispatcher-key``; None with ``--insecure``."""
    from narwhal.mesh.keys import load_or_create, read_public, read_secret, secret_path_of

    if args.insecure:
        return None
    server_file = args.dispatcher_key or env("DISPATCHER_KEY")
    if not server_file:
        raise ConfigError(
            "narwhal runner needs --dispatcher-key FILE (the dispatcher's server.key, "
            "in its <data-dir>/keys/), or --insecure"
        )
    server = read_public(Path(server_file).expanduser()).key
    key_file = args.key or env("KEY")
    if key_file:
        pair = read_secret(secret_path_of(Path(key_file).expanduser()))
        public_file = Path(key_file).expanduser()
    else:
        name = re.sub(r"[^A-Za-z0-9._-]", "_", runner_id)[:100] or "runner"
        pair, _ = load_or_create(work_dir / "keys", name)
        public_file = work_dir / "keys" / f"{name}.key"
    log.info(
        "runner %s: CURVE public key %s; on the dispatcher run: narwhal keys trust %s --id %s",
        runner_id,
        pair.public.decode(),
        public_file.with_suffix(".key"),
        runner_id,
    )
    return RunnerCurve(public_key=pair.public, secret_key=pair.secret, server_key=server)


# mDNS discovery (docs/discovery.md)


def _mdns_interfaces(args: argparse.Namespace) -> tuple[str, ...]:
    given = args.mdns_interface or (env("MDNS_INTERFACE") or "").split(",")
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


#: Environment variables that hold a secret's value; a daemon removes them
#: from its environment once read, so its children (steps) do not inherit them.
SECRET_VARIABLES = (
    "NARWHAL_API_TOKEN",
    "NARWHAL_AMQP",
    *(f"NARWHAL_{forge.upper()}_{kind}" for forge in FORGES for kind in ("SECRET", "TOKEN")),
)


def secret(args: argparse.Namespace, flag: str) -> str | None:
    """``--X-file``, ``NARWHAL_X`` or ``NARWHAL_X_FILE``, the first set.

    Never a value on the command line: every local user can read a
    process's argv (``ps``, ``/proc/PID/cmdline``).
    """
    dest = flag.replace("-", "_")
    path = getattr(args, f"{dest}_file", None)
    value = None if path else env(dest.upper())
    path = path or (None if value else env(f"{dest.upper()}_FILE"))
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


def _has_password(url: str) -> bool:
    try:
        return urlsplit(url).password is not None
    except ValueError:  # not a URL at all: amqp_config says so
        return False


def amqp_config(args: argparse.Namespace) -> AmqpConfig | None:
    url = args.amqp
    if url and _has_password(url):
        raise ConfigError(
            "--amqp URL holds a password, which other users can read on a command line:"
            " use --amqp-file PATH or NARWHAL_AMQP"
        )
    url = url or secret(args, "amqp")
    if not url:
        return None
    if not url.startswith(("amqp://", "amqps://")):
        raise ConfigError(
            f"--amqp: expected amqp://USER:PASSWORD@HOST:PORT/VHOST, got {redacted(url)!r}"
        )
    return AmqpConfig(
        url=url,
        queue=args.amqp_queue,
        prefetch=int(positive(int, "--amqp-prefetch", args.amqp_prefetch)),
        confirm_timeout=positive(float, "--amqp-confirm-timeout", args.amqp_confirm_timeout),
        reconnect_max=positive(float, "--amqp-reconnect", args.amqp_reconnect),
    )


def webhook_config(args: argparse.Namespace) -> WebhookConfig | None:
    github, gitea, gitlab = (secret(args, f"{forge}-secret") for forge in FORGES)
    if not (github or gitea or gitlab):
        return None
    local = allow_local_repos(args) if args.command == "up" else None
    return WebhookConfig(
        github_secret=github, gitea_secret=gitea, gitlab_secret=gitlab, allow_local_repos=local
    )


def allow_local_repos(args: argparse.Namespace) -> bool:
    """``--allow-local-repos``, else NARWHAL_ALLOW_LOCAL_REPOS, else on for ``up`` only."""
    if args.allow_local_repos is not None:
        return bool(args.allow_local_repos)
    text = (env("ALLOW_LOCAL_REPOS") or "").strip().lower()
    if not text:
        return bool(args.command == "up")
    if text not in ("1", "true", "yes", "0", "false", "no"):
        raise ConfigError(f"NARWHAL_ALLOW_LOCAL_REPOS: expected 1 or 0, got {text!r}")
    return text in ("1", "true", "yes")


def status_config(args: argparse.Namespace) -> StatusConfig:
    forges = []
    for forge in FORGES:
        token = secret(args, f"{forge}-token")
        url = getattr(args, f"{forge}_api") or FORGE_APIS.get(forge)
        if token and not url:
            raise ConfigError(f"a {forge} token needs --{forge}-api (e.g. https://HOST/api/v1)")
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
        raise ConfigError(
            "set at least one webhook secret: --github-secret-file, NARWHAL_GITHUB_SECRET ..."
        )
    return AgentConfig(http_host=host, http_port=port, amqp=amqp, webhooks=webhooks)


def runner_config(
    args: argparse.Namespace, *, listen: str | None = None, default_id: str | None = None
) -> RunnerConfig:
    endpoint = listen or args.listen
    work_dir = _directory(args.work_dir)
    runner_id = args.id or default_id or default_runner_id(work_dir, endpoint.rpartition(":")[2])
    conf = RunnerConfig(
        runner_id=runner_id,
        listen=endpoint,
        capacity=int(positive(int, "--capacity", args.capacity)),
        labels=parse_labels(args.labels),
        work_dir=work_dir,
        cancel_grace=positive(float, "--cancel-grace", args.cancel_grace),
        drain_timeout=_non_negative("--drain-timeout", args.drain_timeout),
        mesh=_mesh(args),
        allow_local_repos=allow_local_repos(args),
        **docker_options(args),
    )
    # ``up`` embeds its runner in-process: it never announces itself, and
    # ``embedded_runner`` gives it its key.
    alone = args.command == "runner"
    discovery = runner_discovery(args, endpoint) if alone else DiscoveryConfig()
    return dataclasses.replace(
        conf,
        executor=pick_executor(args.executor, conf.docker_host),
        discovery=discovery,
        curve=runner_curve(args, conf.runner_id, conf.work_dir) if alone else None,
    )


def docker_options(args: argparse.Namespace) -> dict[str, Any]:
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
        "docker_pull_timeout": positive(float, "--pull-timeout", args.pull_timeout),
        "max_memory": _memory_size(args.max_memory) if args.max_memory else None,
        "max_cpus": _optional_limit(float, "--max-cpus", args.max_cpus),
        "max_pids": _optional_limit(int, "--max-pids", args.max_pids),
        "secrets": _secrets(args.secret or [], args.secrets_file),
    }


def _optional_limit(kind: type[int] | type[float], name: str, value: str | None) -> Any:
    """A positive limit, or None for none (unset, or 0)."""
    if not value or value.strip() in ("0", "0.0"):
        return None
    return kind(positive(kind, name, value))


def pick_executor(choice: str, docker_host: str | None) -> str:
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
        check_value(check_name(name), value)
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
