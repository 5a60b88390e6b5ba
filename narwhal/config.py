"""Frozen configuration objects for every daemon.

Flags and ``NARWHAL_*`` environment variables are parsed into these in one
place, ``narwhal.cli``; everything else receives them through constructors so
tests can shorten intervals without patching globals.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_HTTP_PORT = 8470
DEFAULT_RUNNER_PORT = 8471
DEFAULT_AGENT_PORT = 8472
DEFAULT_AMQP_QUEUE = "narwhal.commits"
#: GitHub refuses webhook payloads above 25 MB, so nothing genuine is larger.
DEFAULT_MAX_WEBHOOK_BODY = 25 * 1024 * 1024


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
class DispatcherConfig:
    """Everything ``narwhal dispatcher`` (and ``narwhal up``) needs."""

    data_dir: Path
    http_host: str = "127.0.0.1"
    http_port: int = DEFAULT_HTTP_PORT
    runners: tuple[str, ...] = ()
    api_token: str | None = None
    #: Attempts a job gets before a lost runner ends it in ``error``.
    max_attempts: int = 3
    mesh: MeshConfig = field(default_factory=MeshConfig)

    @property
    def db_path(self) -> Path:
        return self.data_dir / "narwhal.db"


@dataclass(frozen=True, slots=True, kw_only=True)
class RunnerConfig:
    """Everything ``narwhal runner`` needs."""

    runner_id: str
    listen: str = f"tcp://127.0.0.1:{DEFAULT_RUNNER_PORT}"
    capacity: int = 1
    labels: dict[str, str] = field(default_factory=dict)
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
    mesh: MeshConfig = field(default_factory=MeshConfig)


def default_data_dir() -> Path:
    """The per-user data directory (XDG), e.g. ~/.local/share/narwhal."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "narwhal"


def default_work_dir() -> Path:
    """Where runners put job workspaces, e.g. ~/.cache/narwhal/work."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "narwhal" / "work"
