"""Frozen configuration objects for every daemon.

Flags and ``NARWHAL_*`` environment variables are parsed into these in one
place, ``narwhal.settings``; everything else receives them through constructors so
tests can shorten intervals without patching globals.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from narwhal.forges import FORGES, ForgeName

if TYPE_CHECKING:
    from narwhal.storeurl import StoreUrl

DEFAULT_HTTP_PORT = 8470
DEFAULT_RUNNER_PORT = 8471
DEFAULT_AGENT_PORT = 8472
#: The dashboard (``narwhal backend``, and ``narwhal up``'s).
DEFAULT_BACKEND_PORT = 8473
#: The metrics feed's PUB socket (its snapshot ROUTER takes the next port).
DEFAULT_METRICS_PORT = 8474
DEFAULT_AMQP_QUEUE = "narwhal.commits"
#: What ``--executor`` takes: ``auto`` is settled to docker (when a Docker
#: engine answers) or local when the runner starts (``daemons.executors``).
EXECUTORS = ("auto", "local", "docker")
#: GitHub refuses webhook payloads above 25 MB, so nothing genuine is larger.
DEFAULT_MAX_WEBHOOK_BODY = 25 * 1024 * 1024


#: The placement policies (``--placement``; the first is the default), the
#: one list ``dispatcher.placement`` and the flags share.
PLACEMENTS = ("affinity", "spread", "pack")


@dataclass(frozen=True, slots=True, kw_only=True)
class MeshConfig:
    """Heartbeat and socket settings shared by both ends of the mesh."""

    heartbeat_interval: float = 1.0
    #: Missed intervals after which the peer is declared dead.
    liveness: int = 3
    linger_ms: int = 1000

    @property
    def dead_after(self) -> float:
        return self.heartbeat_interval * self.liveness


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerCurve:
    """The dispatcher's CurveZMQ side: its server key pair and the trusted runner keys.

    Every dispatcher of one installation uses the same key pair (runners pin
    its public key); ``runners_dir`` is the allow-list (``narwhal.mesh.trust``).
    """

    public_key: bytes
    secret_key: bytes = field(repr=False)
    runners_dir: Path
    #: The metrics feed's allow-list: public keys of the backends that may
    #: subscribe (``narwhal keys trust --subscriber``). None: nobody.
    subscribers_dir: Path | None = None
    #: Seconds between looks at ``runners_dir`` for trusted or revoked keys.
    poll_interval: float = 1.0


@dataclass(frozen=True, slots=True, kw_only=True)
class RunnerCurve:
    """A runner's CurveZMQ side: its own key pair and the dispatcher key it pins."""

    public_key: bytes
    secret_key: bytes = field(repr=False)
    server_key: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class DiscoveryConfig:
    """mDNS discovery: runners announce themselves, the dispatcher browses.

    Off unless asked for: the CLI turns it on for ``narwhal dispatcher`` and
    ``narwhal runner`` (``--discovery mdns``, their default) and picks the
    interfaces (docs/discovery.md).
    """

    enabled: bool = False
    #: IPv4 addresses of the interfaces mDNS uses; empty: every interface.
    interfaces: tuple[str, ...] = ()
    #: Seconds the dispatcher waits for an announced runner's details.
    request_timeout: float = 3.0
    #: Announced runners the dispatcher tracks at once; more are ignored.
    max_services: int = 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class AmqpConfig:
    """Where commit events travel between the agent and the dispatcher (RabbitMQ)."""

    url: str
    queue: str = DEFAULT_AMQP_QUEUE
    #: ``classic`` (one broker) or ``quorum`` (a RabbitMQ cluster); both
    #: sides must agree, and an existing queue keeps the type it was made with.
    queue_type: str = "classic"
    #: Unacknowledged messages the dispatcher takes at once.
    prefetch: int = 32
    #: Seconds the agent waits for the broker to confirm a message.
    confirm_timeout: float = 5.0
    connect_timeout: float = 5.0
    #: Longest wait between reconnect attempts (the back-off doubles up to it).
    reconnect_max: float = 5.0


@dataclass(frozen=True, slots=True, kw_only=True)
class WebhookConfig:
    """Webhook secrets; a forge whose secret is unset has no endpoint."""

    github_secret: str | None = None
    gitea_secret: str | None = None
    gitlab_secret: str | None = None
    max_body: int = DEFAULT_MAX_WEBHOOK_BODY
    #: Delivery ids remembered to answer a forge's redelivery without a new message.
    remember_deliveries: int = 10_000
    #: Seconds a body digest is remembered: the same signed body again within
    #: it is a duplicate whatever its delivery id (a replay).
    remember_bodies_for: float = 3600.0
    #: Refuse local paths at the door; None leaves it to the dispatcher that
    #: consumes the events (the standalone agent does not know its policy).
    allow_local_repos: bool | None = None

    def secret(self, forge: str) -> str | None:
        if forge not in FORGES:
            return None
        value: str | None = getattr(self, f"{forge}_secret")
        return value

    def forges(self) -> tuple[ForgeName, ...]:
        """The forges whose endpoint is served: those with a secret."""
        return tuple(forge for forge in FORGES if self.secret(forge))


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentConfig:
    """Everything ``narwhal agent`` needs."""

    http_host: str = "127.0.0.1"
    http_port: int = DEFAULT_AGENT_PORT
    amqp: AmqpConfig
    webhooks: WebhookConfig


@dataclass(frozen=True, slots=True, kw_only=True)
class ForgeApi:
    """A forge's REST API that commit statuses are posted to."""

    forge: ForgeName
    url: str  # e.g. https://api.github.com, https://gitea.example/api/v1
    token: str


@dataclass(frozen=True, slots=True, kw_only=True)
class StatusConfig:
    """Commit status reporting; no forge APIs configured means no reports."""

    forges: tuple[ForgeApi, ...] = ()
    #: Base of the job links in statuses (default: the API's own URL).
    public_url: str | None = None
    timeout: float = 10.0
    #: Tries per status before it is given up (a newer state replaces it anyway).
    attempts: int = 5
    backoff: float = 0.5
    backoff_max: float = 30.0
    #: Reports waiting to be sent; beyond that the oldest is dropped.
    max_pending: int = 10_000
    #: Concurrent senders (reports for one job always go through the same one).
    workers: int = 4

    def api(self, forge: str) -> ForgeApi | None:
        return next((api for api in self.forges if api.forge == forge), None)


@dataclass(frozen=True, slots=True, kw_only=True)
class LogLimit:
    """How much log to keep: ended jobs' logs older than ``days``, and past
    ``size`` bytes stored (oldest first), are deleted. None: no such limit."""

    days: float | None = None
    size: int | None = None

    @property
    def bounded(self) -> bool:
        return self.days is not None or self.size is not None


@dataclass(frozen=True, slots=True, kw_only=True)
class RetentionConfig:
    """The log retention policy (``dispatcher.retention``, ``narwhal gc``)."""

    keep: LogLimit = field(default_factory=LogLimit)
    #: ``(repository pattern, limit)``: a repository matching a pattern
    #: (``fnmatch``, the first that matches) has that limit and a size budget
    #: of its own instead of the installation's.
    repos: tuple[tuple[str, LogLimit], ...] = ()
    #: Seconds between the leader's gc runs (the first a minute after start).
    interval: float = 3600.0

    @property
    def bounded(self) -> bool:
        return self.keep.bounded or any(limit.bounded for _, limit in self.repos)


@dataclass(frozen=True, slots=True, kw_only=True)
class DispatcherConfig:
    """Everything ``narwhal dispatcher`` (and ``narwhal up``) needs."""

    data_dir: Path
    http_host: str = "127.0.0.1"
    http_port: int = DEFAULT_HTTP_PORT
    runners: tuple[str, ...] = ()
    #: An admin API token besides the stored ones (``NARWHAL_API_TOKEN``).
    api_token: str | None = None
    #: Reads (jobs, logs, runners) without a token.
    public_read: bool = False
    #: Attempts a job gets before a lost runner ends it in ``error``.
    max_attempts: int = 3
    #: Which runner takes a job (``PLACEMENTS``): affinity (warm
    #: mirrors first, within a share of each burst), spread or pack.
    placement: str = "affinity"
    #: Seconds a runner whose jobs keep failing on its side is first kept
    #: from work (doubled on each failed probe job, up to 15 minutes).
    quarantine: float = 60.0
    #: The most slots a runner's READY may claim; more are clamped to this.
    max_runner_capacity: int = 256
    mesh: MeshConfig = field(default_factory=MeshConfig)
    #: Consume commit events from RabbitMQ (and, in ``up``, publish webhooks to it).
    amqp: AmqpConfig | None = None
    #: ``narwhal up`` only: serve the agent's webhook endpoints in-process.
    webhooks: WebhookConfig | None = None
    status: StatusConfig = field(default_factory=StatusConfig)
    #: Connect to the runners mDNS finds (off unless enabled).
    discovery: DiscoveryConfig = field(default_factory=DiscoveryConfig)
    #: CurveZMQ on the mesh. None: unauthenticated (``--insecure``; the CLI
    #: sets it otherwise, in-process tests may leave it out).
    curve: ServerCurve | None = None
    #: Accept jobs for ``file://`` URLs and absolute paths (``--allow-local-repos``).
    allow_local_repos: bool = False
    #: The metrics feed for backends: ``tcp://HOST:PORT`` binds its PUB socket
    #: there and its snapshot ROUTER on PORT + 1 (``mesh.feed``). None: off.
    metrics: str | None = None
    #: Prometheus ``/metrics``: also label job counters by repository
    #: (``--metrics-per-repo``; off by default, for cardinality).
    metrics_per_repo: bool = False
    #: How long ended jobs' logs are kept (``--log-keep-*``); keep all by default.
    retention: RetentionConfig = field(default_factory=RetentionConfig)

    #: The job store (``--db``). None: the data dir's SQLite file
    #: (``store.open.store_url``; config is a leaf module and names the
    #: type only for the checker).
    db: StoreUrl | None = None

    @property
    def db_path(self) -> Path:
        """The data dir's SQLite file (the default store)."""
        return self.data_dir / "narwhal.db"


@dataclass(frozen=True, slots=True, kw_only=True)
class RunnerConfig:
    """Everything ``narwhal runner`` needs."""

    runner_id: str
    listen: str = f"tcp://127.0.0.1:{DEFAULT_RUNNER_PORT}"
    capacity: int = 1
    labels: dict[str, str] = field(default_factory=dict)
    #: One of ``EXECUTORS``; a running runner's is never ``auto``.
    executor: str = "local"
    work_dir: Path = field(default_factory=lambda: default_work_dir())
    #: Seconds between SIGTERM and SIGKILL when a step is cancelled or times out.
    cancel_grace: float = 10.0
    #: Pipeline time limit when narwhal.yml sets none.
    default_timeout: float = 3600.0
    #: On shutdown, how long running jobs may finish before they are cancelled.
    drain_timeout: float = 0.0
    #: Unacknowledged frames (and bytes) per job before its output waits:
    #: the log flow-control window, and the buffer kept while the
    #: dispatcher is away.
    stream_frames: int = 256
    stream_bytes: int = 4 << 20
    #: Seconds between samples of a running step's CPU and memory, and
    #: between the USAGE frames that carry them.
    usage_interval: float = 1.0
    usage_send_every: float = 5.0
    mesh: MeshConfig = field(default_factory=MeshConfig)
    #: Docker executor: the engine (None: DOCKER_HOST or the local socket).
    docker_host: str | None = None
    #: Image for steps whose narwhal.yml names none.
    docker_image: str = "debian:bookworm-slim"
    #: Network of step containers: ``bridge`` (Docker's default) or ``none``.
    #: A job with services gets a network of its own, internal with ``none``.
    docker_network: str = "bridge"
    #: ``missing``: pull an image that is not on the engine; ``never``: error.
    docker_pull: str = "missing"
    docker_pull_timeout: float = 600.0
    #: Most a container may have: also the limit when narwhal.yml asks none.
    #: None is no limit.
    max_memory: int | None = None
    max_cpus: float | None = None
    max_pids: int | None = 4096
    #: Environment variables every step gets, masked in every log line.
    secrets: dict[str, str] = field(default_factory=dict, repr=False)
    #: Announce this runner over mDNS (off unless enabled; never in ``up``).
    discovery: DiscoveryConfig = field(default_factory=DiscoveryConfig)
    #: CurveZMQ on the mesh. None: unauthenticated (``--insecure``; the CLI
    #: sets it otherwise, in-process tests may leave it out).
    curve: RunnerCurve | None = None
    #: Clone ``file://`` URLs and absolute paths (``--allow-local-repos``).
    allow_local_repos: bool = False
    #: Bytes the mirror cache may hold before the least recently used mirrors
    #: are evicted (``--mirror-cache-size``). None: a quarter of the work
    #: folder's free disk when the runner starts, at least 256 MiB.
    mirror_cache_size: int | None = None
    #: Seconds between looks at the container engine (whether it answers,
    #: its images) for the state the runner reports; also after each job.
    engine_refresh: float = 30.0


@dataclass(frozen=True, slots=True, kw_only=True)
class SubscriberCurve:
    """A backend's CurveZMQ side on the metrics feed: its key pair and the
    dispatcher key it pins (the same server key runners pin)."""

    public_key: bytes
    secret_key: bytes = field(repr=False)
    server_key: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class BackendConfig:
    """Everything ``narwhal backend`` (the dashboard) needs."""

    http_host: str = "127.0.0.1"
    http_port: int = DEFAULT_BACKEND_PORT
    #: The dispatcher's metrics feed (``DispatcherConfig.metrics``).
    metrics: str = f"tcp://127.0.0.1:{DEFAULT_METRICS_PORT}"
    #: The feeds of the other dispatchers that share its database: only the
    #: leader publishes, so the backend follows whichever does (docs/ha.md).
    other_feeds: tuple[str, ...] = ()
    #: The dispatcher's REST API, read for history and used for cancel/resubmit.
    api: str = f"http://127.0.0.1:{DEFAULT_HTTP_PORT}"
    #: A read token for the API (history, logs). Browsers bring their own
    #: token for what changes anything (cancel, resubmit).
    api_token: str | None = field(default=None, repr=False)
    #: Reads of the dashboard without signing in (``--public-read``).
    public_read: bool = False
    #: CurveZMQ on the feed. None: unauthenticated (``--insecure``).
    curve: SubscriberCurve | None = None
    #: Seconds without any feed message (beats come every second) before
    #: the backend takes a new snapshot.
    feed_timeout: float = 3.0
    #: Messages waiting for one browser's websocket before it is closed (a
    #: browser that does not read must not hold memory or slow the others).
    socket_queue: int = 1000


def default_data_dir() -> Path:
    """The per-user data directory (XDG), e.g. ~/.local/share/narwhal."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "narwhal"


def default_work_dir() -> Path:
    """Where runners put job workspaces, e.g. ~/.cache/narwhal/work."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "narwhal" / "work"
