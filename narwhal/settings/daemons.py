"""The config object of each daemon: dispatcher (and ``up``), runner, agent.

``runner_config`` leaves ``--executor auto`` as it is: which executor that
is gets settled when the runner starts (``narwhal.daemons.executors``), as
it means asking the Docker engine. What reading flags still touches is the
disk: the files flags name (secrets, keys), and at first start the key
pairs (``keys``) and the runner id (``runner.identity``), all under the
directories the flags give.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from narwhal.config import (
    DEFAULT_AGENT_PORT,
    DEFAULT_HTTP_PORT,
    DEFAULT_METRICS_PORT,
    PLACEMENTS,
    AgentConfig,
    AmqpConfig,
    DiscoveryConfig,
    DispatcherConfig,
    ForgeApi,
    MeshConfig,
    RunnerConfig,
    StatusConfig,
    WebhookConfig,
)
from narwhal.errors import ConfigError
from narwhal.events import QUEUE_TYPES
from narwhal.forges import FORGE_APIS, FORGES
from narwhal.redact import redacted
from narwhal.runner.identity import default_runner_id
from narwhal.secret_rules import check_name, check_value
from narwhal.settings.discovery import dispatcher_discovery, runner_discovery
from narwhal.settings.keys import keys_dir, runner_curve, server_curve
from narwhal.settings.retention import retention_config
from narwhal.settings.values import (
    allow_local_repos,
    byte_size,
    directory,
    feed_endpoint,
    host_port,
    http_url,
    memory_size,
    non_negative,
    optional_limit,
    parse_labels,
    positive,
    secret,
)
from narwhal.storeurl import parse_store_url


def _mesh(args: argparse.Namespace) -> MeshConfig:
    return MeshConfig(
        heartbeat_interval=positive(float, "--heartbeat-interval", args.heartbeat_interval),
        liveness=int(positive(int, "--liveness", args.liveness)),
    )


def dispatcher_config(args: argparse.Namespace) -> DispatcherConfig:
    host, port = host_port(args.http, DEFAULT_HTTP_PORT)
    return DispatcherConfig(
        data_dir=directory(args.data_dir),
        db=parse_store_url(args.db) if getattr(args, "db", "") else None,
        http_host=host,
        http_port=port,
        runners=tuple(getattr(args, "runner", None) or ()),
        api_token=secret(args, "api-token"),
        public_read=bool(args.public_read),
        metrics_per_repo=bool(args.metrics_per_repo),
        max_attempts=int(positive(int, "--max-attempts", args.max_attempts)),
        placement=placement(args.placement),
        quarantine=float(positive(float, "--quarantine", args.quarantine)),
        max_runner_capacity=int(positive(int, "--max-runner-capacity", args.max_runner_capacity)),
        mesh=_mesh(args),
        amqp=amqp_config(args),
        webhooks=webhook_config(args) if args.command == "up" else None,
        status=status_config(args),
        discovery=dispatcher_discovery(args, host),
        curve=None if args.insecure else server_curve(keys_dir(args)),
        allow_local_repos=allow_local_repos(args),
        metrics=metrics_endpoint(args),
        retention=retention_config(args),
    )


def placement(name: str) -> str:
    """``--placement`` (also from NARWHAL_PLACEMENT, which argparse's choices do not check)."""
    if name not in PLACEMENTS:
        raise ConfigError(f"--placement must be one of {', '.join(PLACEMENTS)}, got {name!r}")
    return name


def metrics_endpoint(args: argparse.Namespace) -> str | None:
    """``--metrics``: off by default for ``dispatcher``, on loopback for ``up``."""
    if args.metrics is not None:
        return feed_endpoint("--metrics", args.metrics)
    return f"tcp://127.0.0.1:{DEFAULT_METRICS_PORT}" if args.command == "up" else None


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
    if args.amqp_queue_type not in QUEUE_TYPES:  # NARWHAL_AMQP_QUEUE_TYPE skips argparse's check
        raise ConfigError(
            f"--amqp-queue-type: expected one of {', '.join(QUEUE_TYPES)},"
            f" got {args.amqp_queue_type!r}"
        )
    return AmqpConfig(
        url=url,
        queue=args.amqp_queue,
        queue_type=args.amqp_queue_type,
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


def status_config(args: argparse.Namespace) -> StatusConfig:
    forges = []
    for forge in FORGES:
        token = secret(args, f"{forge}-token")
        url = getattr(args, f"{forge}_api") or FORGE_APIS.get(forge)
        if token and not url:
            raise ConfigError(f"a {forge} token needs --{forge}-api (e.g. https://HOST/api/v1)")
        if token and url:
            forges.append(ForgeApi(forge=forge, url=http_url(f"--{forge}-api", url), token=token))
    public = http_url("--public-url", args.public_url) if args.public_url else None
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
    work_dir = directory(args.work_dir)
    runner_id = args.id or default_id or default_runner_id(work_dir, endpoint.rpartition(":")[2])
    conf = RunnerConfig(
        runner_id=runner_id,
        listen=endpoint,
        capacity=int(positive(int, "--capacity", args.capacity)),
        labels=parse_labels(args.labels),
        work_dir=work_dir,
        cancel_grace=positive(float, "--cancel-grace", args.cancel_grace),
        drain_timeout=non_negative("--drain-timeout", args.drain_timeout),
        mirror_cache_size=cache_size(args.mirror_cache_size),
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
        # auto stays auto: the engine is asked when the runner starts.
        executor=args.executor,
        discovery=discovery,
        curve=runner_curve(args, conf.runner_id, conf.work_dir) if alone else None,
    )


def cache_size(text: str | None) -> int | None:
    """``--mirror-cache-size``: bytes, or 500M / 2G / 1.5GiB (1024-based); unset: None."""
    if text is None or not text.strip() or text.strip().lower() == "auto":
        return None
    return byte_size("--mirror-cache-size", text)


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
        "max_memory": memory_size(args.max_memory) if args.max_memory else None,
        "max_cpus": optional_limit(float, "--max-cpus", args.max_cpus),
        "max_pids": optional_limit(int, "--max-pids", args.max_pids),
        "secrets": secrets_of(args.secret or [], args.secrets_file),
    }


def secrets_of(names: Sequence[str], secrets_file: str | None) -> dict[str, str]:
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
