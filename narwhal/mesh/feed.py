"""Wire protocol v1 of the metrics feed: dispatcher (PUB + snapshot ROUTER) to backends (SUB).

The ZeroMQ guide's Clone pattern, for a state that is a handful of maps
(runners, live jobs, the queue, counters):

- ``--metrics tcp://HOST:PORT`` binds a PUB socket there and a ROUTER for
  snapshots on ``PORT + 1`` (``snapshot_endpoint``).
- Every PUB message is two frames: the topic (``TOPICS``), then one msgpack
  array ``[FEED_VERSION, epoch, seq, [item, ...]]``. ``epoch`` names the
  publisher's life (new at each start), ``seq`` counts its messages from 1,
  across all topics, without gaps. Items are the maps of the topic's record
  below; a message holds the changes of one flush (about 50 ms), one item
  per job, step or runner at most (its latest view); log notices of one job
  are merged (the last ``seq``, the sizes summed), usage samples of one step
  joined. A flush with many changes (a burst of thousands of jobs) sends
  them in several messages of at most ``MAX_ITEMS`` items each, and a
  publisher may spread a very large burst over a few flushes, so that no
  flush holds its event loop for long. Of a burst of new jobs still
  queued, a flush shows only the newest 100 (the queue's depth and its
  oldest job are in ``queue``; every job is shown once it moves).
- A subscriber joining late connects its SUB first (buffering what comes),
  then asks the ROUTER for a snapshot: request ``[b"snapshot"]``, reply
  ``[b"snapshot", msgpack([FEED_VERSION, epoch, seq, state])]`` where
  ``state`` is a ``Snapshot`` map and ``seq`` the last message published
  before it was taken. It drops buffered messages up to that ``seq`` and
  applies the rest in order. A message whose ``seq`` is not the last one
  plus 1, or whose ``epoch`` differs, is a gap (the PUB dropped messages at
  its high-water mark, or the dispatcher restarted): the subscriber counts
  the missed messages and takes a new snapshot.
- ``beat`` messages (no items) go out every second when nothing else did, so
  a subscriber also learns of a gap or a restart while the dispatcher is idle.
- The publisher publishes what it holds before it answers a snapshot
  request, so a snapshot is exactly the state after message ``seq``. A
  ``stats`` message also goes out when a new minute starts.
- Requests other than ``[b"snapshot"]`` are counted and get no answer.

A PUB socket drops at its high-water mark without telling the sender, so a
stuck subscriber costs the dispatcher nothing; the drops are counted where
they are seen, by the subscriber (its gaps). With CurveZMQ the PUB and the
ROUTER are CURVE servers with the dispatcher's key, and only subscriber keys
in ``KEYS_DIR/subscribers/`` get in.

Everything decoded is checked like the runner protocol (``schema``): a
malformed message is a ``ProtocolError``, which the subscriber counts and
answers with a new snapshot.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import msgpack

from narwhal.errors import ProtocolError
from narwhal.mesh.feedcheck import builders
from narwhal.mesh.schema import Invalid, Schema

FEED_VERSION = 1
#: Largest message a subscriber accepts (a snapshot of a big installation).
MAX_FEED_BYTES = 32 << 20
#: A snapshot holds at most this many queued and this many ended jobs.
SNAPSHOT_QUEUED = 50
SNAPSHOT_ENDED = 50
SNAPSHOT_REQUEST = b"snapshot"
#: Items in one PUB message at most; a flush with more sends several.
MAX_ITEMS = 1000
#: A job in any other state has ended (``JobView.state``).
LIVE_STATES = frozenset({"queued", "assigned", "running"})


@dataclass(frozen=True, slots=True, kw_only=True)
class JobView:
    """A job as the dashboard shows it (``repo`` and ``reason`` redacted)."""

    TOPIC: ClassVar[bytes] = b"job"
    id: int
    repo: str
    ref: str
    sha: str | None
    event: str
    state: str
    reason: str
    attempt: int
    runner_id: str | None
    parent_id: int | None
    matrix: dict[str, str] | None
    labels: dict[str, str]
    pipeline: str | None
    cancel_requested: bool
    created_at: float
    updated_at: float
    started_at: float | None
    finished_at: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class StepView:
    """A step started (``status`` "running") or finished."""

    TOPIC: ClassVar[bytes] = b"step"
    job_id: int
    attempt: int
    index: int
    name: str
    status: str
    exit_code: int | None
    duration: float | None
    at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class LogView:
    """A job's log grew (``size`` bytes in chunk ``seq``); the text is the REST API's."""

    TOPIC: ClassVar[bytes] = b"log"
    job_id: int
    attempt: int
    seq: int
    size: int


@dataclass(frozen=True, slots=True, kw_only=True)
class UsageView:
    """Resource samples of a running step: ``[seconds, cpu cores, memory bytes]``."""

    TOPIC: ClassVar[bytes] = b"usage"
    job_id: int
    attempt: int
    index: int
    samples: tuple[tuple[float, ...], ...]
    memory_limit: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class RunnerView:
    """A runner (``state`` "gone" once it left, with ``reason``)."""

    TOPIC: ClassVar[bytes] = b"runner"
    id: str | None
    endpoint: str
    source: str
    state: str
    capacity: int
    free: int
    labels: dict[str, str]
    version: str | None
    jobs: tuple[int, ...]
    last_seen: float | None
    reason: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueView:
    """The queue: jobs waiting and running, and the oldest waiting (with its reason)."""

    TOPIC: ClassVar[bytes] = b"queue"
    queued: int
    active: int
    oldest: JobView | None


@dataclass(frozen=True, slots=True, kw_only=True)
class StatsView:
    """Counters since the publisher started.

    ``jobs_total``: jobs ended, by state. ``minutes``: the last 60 minutes,
    oldest first, as ``[minute start (unix seconds), ended, succeeded]``.
    """

    TOPIC: ClassVar[bytes] = b"stats"
    started_at: float
    jobs_total: dict[str, int]
    minutes: tuple[tuple[int, ...], ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Snapshot:
    """The whole state a subscriber starts from."""

    runners: tuple[RunnerView, ...]
    #: Active jobs, the oldest ``SNAPSHOT_QUEUED`` queued and the last ``SNAPSHOT_ENDED`` ended.
    jobs: tuple[JobView, ...]
    queue: QueueView
    stats: StatsView
    steps: tuple[StepView, ...] = field(default=())


Item = JobView | StepView | LogView | UsageView | RunnerView | QueueView | StatsView
ITEMS: tuple[type[Any], ...] = (
    JobView,
    StepView,
    LogView,
    UsageView,
    RunnerView,
    QueueView,
    StatsView,
)
#: Topic frame -> record class; ``beat`` carries no items.
TOPICS: dict[bytes, type[Any] | None] = {cls.TOPIC: cls for cls in ITEMS} | {b"beat": None}

_SCHEMA = Schema((*ITEMS, Snapshot))
#: The flat records' fast builders (``feedcheck``); the schema stays the judge.
_FAST = builders(ITEMS)


@dataclass(frozen=True, slots=True, kw_only=True)
class Update:
    """One decoded PUB message."""

    topic: bytes
    epoch: str
    seq: int
    items: tuple[Any, ...]


def snapshot_endpoint(endpoint: str) -> str:
    """``tcp://HOST:PORT`` -> the snapshot ROUTER's ``tcp://HOST:PORT+1``."""
    head, sep, port = endpoint.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65535:
        raise ValueError(f"{endpoint}: expected tcp://HOST:PORT")
    return f"{head}:{int(port) + 1}"


def _plain(item: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in _SCHEMA.names[type(item)]:
        value = getattr(item, name)
        if type(value) in _SCHEMA.names:
            value = _plain(value)
        elif isinstance(value, tuple) and value and type(value[0]) in _SCHEMA.names:
            value = [_plain(v) for v in value]
        out[name] = value
    return out


def to_map(item: Any) -> dict[str, Any]:
    """A record (``JobView`` ...) as its wire map: JSON-able, nested records as maps."""
    return _plain(item)


def encode_update(topic: bytes, epoch: str, seq: int, items: Sequence[Any]) -> list[bytes]:
    """The two frames of one PUB message."""
    return encode_maps(topic, epoch, seq, [_plain(i) for i in items])


def encode_maps(
    topic: bytes, epoch: str, seq: int, items: Sequence[Mapping[str, Any]]
) -> list[bytes]:
    """Like ``encode_update``, for items already given as the records' maps.

    The publisher's hot path: it keeps views as maps and builds no record
    objects per change (``decode_update`` checks every field on the other side).
    """
    return [topic, msgpack.packb([FEED_VERSION, epoch, seq, items], use_bin_type=True)]


def fields_of(cls: type[Any]) -> tuple[str, ...]:
    """The wire fields of a record class (``JobView`` ...), in order."""
    return _SCHEMA.names[cls]


def decode_update(frames: Sequence[bytes]) -> Update:
    """One PUB message; anything malformed raises ``ProtocolError``."""
    if len(frames) != 2:
        raise ProtocolError(f"feed message of {len(frames)} frames, expected 2")
    topic = bytes(frames[0])
    if topic not in TOPICS:
        raise ProtocolError(f"unknown feed topic {topic[:40]!r}")
    epoch, seq, items = _header(frames[1])
    cls = TOPICS[topic]
    if not isinstance(items, list):
        raise ProtocolError(f"{topic.decode()}: items must be a list")
    if cls is None:
        if items:
            raise ProtocolError(f"{topic.decode()}: carries no items")
        return Update(topic=topic, epoch=epoch, seq=seq, items=())
    return Update(topic=topic, epoch=epoch, seq=seq, items=tuple(_build(cls, i) for i in items))


def encode_snapshot(epoch: str, seq: int, state: Snapshot) -> list[bytes]:
    """The reply to a snapshot request: ``state`` is the state after message ``seq``."""
    body = msgpack.packb([FEED_VERSION, epoch, seq, _plain(state)], use_bin_type=True)
    return [SNAPSHOT_REQUEST, body]


def decode_snapshot(frames: Sequence[bytes]) -> tuple[str, int, Snapshot]:
    """A snapshot reply as ``(epoch, seq, state)``; anything malformed raises ``ProtocolError``."""
    if len(frames) != 2 or bytes(frames[0]) != SNAPSHOT_REQUEST:
        raise ProtocolError("not a snapshot reply")
    epoch, seq, state = _header(frames[1])
    return epoch, seq, _build(Snapshot, state)


def _header(body: bytes) -> tuple[str, int, Any]:
    if len(body) > MAX_FEED_BYTES:
        raise ProtocolError(f"feed message of {len(body)} bytes exceeds {MAX_FEED_BYTES}")
    try:
        parts = msgpack.unpackb(body, raw=False, strict_map_key=False)
    except Exception as e:  # msgpack raises several unrelated types
        raise ProtocolError(f"not a msgpack feed message: {e}") from e
    if not isinstance(parts, list) or len(parts) != 4:
        raise ProtocolError("feed message is not [version, epoch, seq, body]")
    version, epoch, seq, rest = parts
    if version != FEED_VERSION:
        raise ProtocolError(
            f"feed version {version!r} not supported (this side speaks {FEED_VERSION})"
        )
    if not isinstance(epoch, str) or not 0 < len(epoch) <= 64:
        raise ProtocolError("feed epoch: expected a short string")
    if type(seq) is not int or seq < 0:
        raise ProtocolError("feed seq: expected a non-negative integer")
    return epoch, seq, rest


def _build(cls: type[Any], value: Any) -> Any:
    fast = _FAST.get(cls)
    if fast is not None and type(value) is dict:
        built = fast(value)
        if built is not None:
            return built
    if not isinstance(value, Mapping):
        raise ProtocolError(f"{cls.__name__}: expected a map")
    try:
        return _SCHEMA.build(cls, value)
    except Invalid as e:
        raise ProtocolError(f"{cls.__name__}{''.join(reversed(e.path))}: {e.message}") from None
