"""The flags of ``narwhal``'s commands, shared between the commands that take them.

Every default that is a config field's default is read from the config
class (``settings.default_of``): the frozen config dataclasses are the one
home of each default, and the CLI never restates one.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

from narwhal.config import (
    DEFAULT_BACKEND_PORT,
    DEFAULT_METRICS_PORT,
    EXECUTORS,
    PLACEMENTS,
    AgentConfig,
    AmqpConfig,
    BackendConfig,
    DispatcherConfig,
    MeshConfig,
    RetentionConfig,
    RunnerConfig,
    default_data_dir,
)
from narwhal.errors import ConfigError
from narwhal.events import QUEUE_TYPES
from narwhal.forges import FORGE_APIS, FORGES
from narwhal.settings import default_of, env


def address_of(config: type[AgentConfig] | type[DispatcherConfig] | type[BackendConfig]) -> str:
    """The default ``HOST:PORT`` of a daemon's HTTP side."""
    return f"{default_of(config, 'http_host')}:{default_of(config, 'http_port')}"


class Refused(argparse.Action):
    """A secret's value flag that is gone: every local user can read argv."""

    def __init__(self, option_strings: Sequence[str], dest: str, *, instead: str) -> None:
        super().__init__(option_strings, dest, nargs="?", help=argparse.SUPPRESS)
        self.instead = instead

    def __call__(self, parser: object, *_: object) -> None:
        flag = self.option_strings[0]
        raise ConfigError(
            f"{flag} VALUE is refused (other users can read a command line): use {self.instead}"
        )


def secret_file_flag(p: argparse.ArgumentParser, flag: str, text: str) -> None:
    """``--X-file PATH`` (or ``NARWHAL_X``, ``NARWHAL_X_FILE``); ``--X VALUE`` refused."""
    name = flag.upper().replace("-", "_")
    p.add_argument(f"--{flag}-file", metavar="PATH", help=f"{text} (NARWHAL_{name}[_FILE])")
    instead = f"--{flag}-file PATH or NARWHAL_{name}"
    p.add_argument(f"--{flag}", action=Refused, instead=instead)


def mesh_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--heartbeat-interval",
        default=env("HEARTBEAT_INTERVAL", default_of(MeshConfig, "heartbeat_interval")),
        help="seconds between heartbeats (NARWHAL_HEARTBEAT_INTERVAL)",
    )
    p.add_argument(
        "--liveness",
        default=env("LIVENESS", default_of(MeshConfig, "liveness")),
        help="missed heartbeats before a peer is dead (NARWHAL_LIVENESS)",
    )


def dispatcher_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--http",
        default=env("HTTP", address_of(DispatcherConfig)),
        help="REST API address HOST:PORT; port 0 picks a free one (NARWHAL_HTTP)",
    )
    p.add_argument(
        "--data-dir",
        default=env("DATA_DIR", str(default_data_dir())),
        help="where the job store lives (NARWHAL_DATA_DIR)",
    )
    p.add_argument(
        "--db",
        default=env("DB", ""),
        help="the job store: sqlite:///PATH or postgresql://USER@HOST:PORT/DATABASE"
        " (NARWHAL_DB; default: narwhal.db in the data dir)",
    )
    secret_file_flag(p, "api-token", "one more admin API token, read from a file")
    p.add_argument(
        "--public-read",
        action="store_true",
        default=env("PUBLIC_READ", "") in ("1", "true", "yes"),
        help="jobs, logs and runners readable without a token (NARWHAL_PUBLIC_READ=1)",
    )
    p.add_argument(
        "--metrics-per-repo",
        action="store_true",
        default=env("METRICS_PER_REPO", "") in ("1", "true", "yes"),
        help="label GET /metrics job counts by repository too: one series per repository "
        "(NARWHAL_METRICS_PER_REPO=1)",
    )
    p.add_argument(
        "--max-attempts",
        default=env("MAX_ATTEMPTS", default_of(DispatcherConfig, "max_attempts")),
        help="attempts before a job whose runner was lost ends in error",
    )
    p.add_argument(
        "--placement",
        choices=PLACEMENTS,
        default=env("PLACEMENT", default_of(DispatcherConfig, "placement")),
        help="which runner takes a job: affinity (the one with the repository warm in its "
        "mirror cache, within a share of each burst; the default), spread (the least "
        "loaded) or pack (the fullest that fits) (NARWHAL_PLACEMENT)",
    )
    p.add_argument(
        "--quarantine",
        metavar="SECONDS",
        default=env("QUARANTINE", default_of(DispatcherConfig, "quarantine")),
        help="how long a runner whose jobs keep failing on its side (checkout, engine) is "
        "first kept from work, doubled on each failed probe job (NARWHAL_QUARANTINE)",
    )
    p.add_argument(
        "--max-runner-capacity",
        default=env("MAX_RUNNER_CAPACITY", default_of(DispatcherConfig, "max_runner_capacity")),
        help="most slots a runner may claim; more are clamped (NARWHAL_MAX_RUNNER_CAPACITY)",
    )
    mesh_flags(p)
    retention_flags(p)
    p.add_argument(
        "--metrics",
        metavar="tcp://HOST:PORT",
        default=env("METRICS"),
        help="the metrics feed for backends: PUB on PORT, snapshots on PORT + 1; none: off "
        f"(default: off; up: tcp://127.0.0.1:{DEFAULT_METRICS_PORT}; NARWHAL_METRICS)",
    )
    p.add_argument(
        "--keys-dir",
        default=None,
        help="CURVE keys: server.key(_secret), runners/ and subscribers/ (default DATA_DIR/keys; "
        "NARWHAL_KEYS_DIR)",
    )
    insecure_flag(p)
    amqp_flags(p)
    status_flags(p)


def retention_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--log-keep-days",
        metavar="DAYS",
        default=env("LOG_KEEP_DAYS"),
        help="delete ended jobs' logs older than this; the jobs stay (NARWHAL_LOG_KEEP_DAYS)",
    )
    p.add_argument(
        "--log-keep-size",
        metavar="SIZE",
        default=env("LOG_KEEP_SIZE"),
        help="past this much stored log (500M, 20G), delete the oldest jobs' logs first"
        " (NARWHAL_LOG_KEEP_SIZE)",
    )
    p.add_argument(
        "--log-keep",
        metavar="PATTERN=DAYS[,SIZE]",
        action="append",
        help="repositories matching PATTERN keep their logs this long, within a size of"
        " their own (repeatable; the first match wins)",
    )
    p.add_argument(
        "--gc-interval",
        metavar="SECONDS",
        default=env("GC_INTERVAL", default_of(RetentionConfig, "interval")),
        help="seconds between log retention runs (NARWHAL_GC_INTERVAL)",
    )


def insecure_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--insecure",
        action="store_true",
        default=env("INSECURE", "") == "1",
        help="no CurveZMQ on the mesh: anyone who reaches it can pose as a peer "
        "(NARWHAL_INSECURE=1)",
    )


def runner_key_flags(p: argparse.ArgumentParser) -> None:
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
    insecure_flag(p)


def discovery_flags(p: argparse.ArgumentParser, *, default: str, what: str) -> None:
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


def local_repos_flag(p: argparse.ArgumentParser, *, default: str) -> None:
    p.add_argument(
        "--allow-local-repos",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"build file:// URLs and absolute paths (default {default}; "
        "NARWHAL_ALLOW_LOCAL_REPOS=1/0)",
    )


def runner_flags(p: argparse.ArgumentParser, *, listen: bool = True) -> None:
    if listen:
        p.add_argument(
            "--listen",
            default=env("LISTEN", default_of(RunnerConfig, "listen")),
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
        choices=EXECUTORS,
        help="auto: docker when a Docker engine answers, else local (NARWHAL_EXECUTOR)",
    )
    docker_flags(p)
    p.add_argument(
        "--work-dir",
        default=env("WORK_DIR", default_of(RunnerConfig, "work_dir")),
        help="where job workspaces are made (NARWHAL_WORK_DIR)",
    )
    p.add_argument(
        "--cancel-grace",
        default=env("CANCEL_GRACE", default_of(RunnerConfig, "cancel_grace")),
        help="seconds between SIGTERM and SIGKILL on cancel or timeout",
    )
    p.add_argument(
        "--drain-timeout",
        default=env("DRAIN_TIMEOUT", default_of(RunnerConfig, "drain_timeout")),
        help="on shutdown, seconds running jobs may finish before they are cancelled",
    )
    p.add_argument(
        "--mirror-cache-size",
        metavar="SIZE",
        default=env("MIRROR_CACHE_SIZE"),
        help="bytes the mirror cache may hold (500M, 2G, 1.5GiB; 1024-based), the least "
        "recently used mirrors evicted past it (default a quarter of the work folder's "
        "free disk, at least 256 MiB; NARWHAL_MIRROR_CACHE_SIZE)",
    )


def docker_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--docker-host",
        default=env("DOCKER_HOST"),
        help="Docker engine URL (default: DOCKER_HOST or the local socket)",
    )
    p.add_argument(
        "--image",
        default=env("IMAGE", default_of(RunnerConfig, "docker_image")),
        help="image of steps whose narwhal.yml names none (NARWHAL_IMAGE)",
    )
    p.add_argument(
        "--network",
        default=env("NETWORK", default_of(RunnerConfig, "docker_network")),
        help="network of step containers: bridge or none (NARWHAL_NETWORK)",
    )
    p.add_argument(
        "--pull",
        default=env("PULL", default_of(RunnerConfig, "docker_pull")),
        help="missing: pull images the engine lacks; never: such jobs end in error",
    )
    p.add_argument(
        "--pull-timeout",
        default=env("PULL_TIMEOUT", default_of(RunnerConfig, "docker_pull_timeout")),
        help="seconds",
    )
    p.add_argument("--max-memory", default=env("MAX_MEMORY"), help="per container, e.g. 2g")
    p.add_argument("--max-cpus", default=env("MAX_CPUS"), help="per container, e.g. 1.5")
    p.add_argument(
        "--max-pids",
        default=env("MAX_PIDS", default_of(RunnerConfig, "max_pids")),
        help="processes per container; 0: no limit",
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


def amqp_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--amqp",
        metavar="URL",
        help="RabbitMQ, without a password (it goes in --amqp-file or NARWHAL_AMQP)",
    )
    p.add_argument("--amqp-file", metavar="PATH", help="RabbitMQ URL (NARWHAL_AMQP[_FILE])")
    p.add_argument(
        "--amqp-queue",
        default=env("AMQP_QUEUE", default_of(AmqpConfig, "queue")),
        help="queue of commit events; NAME.dead holds refused ones (NARWHAL_AMQP_QUEUE)",
    )
    p.add_argument(
        "--amqp-queue-type",
        choices=QUEUE_TYPES,
        default=env("AMQP_QUEUE_TYPE", default_of(AmqpConfig, "queue_type")),
        help="classic, or quorum for a RabbitMQ cluster (NARWHAL_AMQP_QUEUE_TYPE)",
    )
    p.add_argument(
        "--amqp-prefetch",
        default=env("AMQP_PREFETCH", default_of(AmqpConfig, "prefetch")),
        help="commit events taken before acking (NARWHAL_AMQP_PREFETCH)",
    )
    p.add_argument(
        "--amqp-confirm-timeout",
        default=env("AMQP_CONFIRM_TIMEOUT", default_of(AmqpConfig, "confirm_timeout")),
        help="seconds to wait for the broker's confirm before answering 503",
    )
    p.add_argument(
        "--amqp-reconnect",
        default=env("AMQP_RECONNECT", default_of(AmqpConfig, "reconnect_max")),
        help="longest wait in seconds between reconnect attempts",
    )


def secret_flags(p: argparse.ArgumentParser, kind: str, text: str) -> None:
    for forge in FORGES:
        secret_file_flag(p, f"{forge}-{kind}", f"{forge} {text.replace('FORGE', forge)}")


def status_flags(p: argparse.ArgumentParser) -> None:
    secret_flags(p, "token", "API token for commit statuses")
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


def client_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--server",
        default=env("SERVER", f"http://{address_of(DispatcherConfig)}"),
        help="dispatcher API URL (NARWHAL_SERVER)",
    )
    secret_file_flag(p, "api-token", "API token (default: DATA-DIR/admin.token for a local server)")
    p.add_argument(
        "--data-dir",
        default=env("DATA_DIR", str(default_data_dir())),
        help="the local dispatcher's data dir, whose admin.token is used (NARWHAL_DATA_DIR)",
    )


def backend_flags(p: argparse.ArgumentParser) -> None:
    """``narwhal backend``: the dashboard, from a dispatcher's feed and API."""
    p.add_argument(
        "--http",
        default=env("BACKEND_HTTP", address_of(BackendConfig)),
        help="dashboard address HOST:PORT; port 0 picks a free one (NARWHAL_BACKEND_HTTP)",
    )
    p.add_argument(
        "--metrics",
        metavar="tcp://HOST:PORT",
        default=env("METRICS", default_of(BackendConfig, "metrics")),
        help="the dispatcher's metrics feed (its --metrics; NARWHAL_METRICS); with several"
        " dispatchers on one database, each one's, comma-separated: the leader's is followed",
    )
    p.add_argument(
        "--api",
        metavar="URL",
        default=env("API", default_of(BackendConfig, "api")),
        help="the dispatcher's REST API, for history, logs, cancel and resubmit (NARWHAL_API)",
    )
    secret_file_flag(p, "api-token", "a read token of the API, for public-read viewers and logs")
    p.add_argument(
        "--public-read",
        action="store_true",
        default=env("PUBLIC_READ", "") in ("1", "true", "yes"),
        help="the dashboard is readable without signing in (NARWHAL_PUBLIC_READ=1)",
    )
    p.add_argument(
        "--feed-timeout",
        default=env("FEED_TIMEOUT", default_of(BackendConfig, "feed_timeout")),
        help="seconds of silence on the feed before a new snapshot (NARWHAL_FEED_TIMEOUT)",
    )
    p.add_argument(
        "--key",
        metavar="FILE",
        help="this backend's key pair on the feed (NAME.key, beside NAME.key_secret; NARWHAL_KEY)",
    )
    p.add_argument(
        "--dispatcher-key",
        metavar="FILE",
        help="the dispatcher's public key, its server.key (NARWHAL_DISPATCHER_KEY)",
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        default=env("INSECURE", "") == "1",
        help="no CurveZMQ on the feed (NARWHAL_INSECURE=1)",
    )


def dashboard_flag(p: argparse.ArgumentParser) -> None:
    """``narwhal up --dashboard``."""
    p.add_argument(
        "--dashboard",
        metavar="HOST:PORT",
        default=env("DASHBOARD"),
        help=f"where up serves the dashboard (default 127.0.0.1:{DEFAULT_BACKEND_PORT}, any free "
        "port when --http's is 0); none: no dashboard (NARWHAL_DASHBOARD)",
    )
