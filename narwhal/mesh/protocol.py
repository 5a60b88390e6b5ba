"""Wire protocol v3 between the dispatcher (ROUTER) and runners (DEALER).

Every frame is one msgpack array ``[version, kind, {field: value, ...}]``.
The version is checked first so that a peer speaking another protocol gets a
clear error instead of a confusing field mismatch. Every message carries the
job id and attempt where it concerns a job, so that frames arriving late from
an attempt the dispatcher already gave up on can be fenced off.

Conversation, in order::

    dispatcher                           runner
    HELLO(session)              ->                  (first frame on a connection)
                                <-  READY(runner_id, session, capacity, active)
    JOB(job_id, attempt, runner_session, ..., secrets) ->
                                <-  ACCEPT | REJECT
                                <-  CHECKED_OUT(sha, pipeline, variants)
                                <-  STEP_STARTED, LOG*, STEP_FINISHED  (per step)
                                <-  DONE(status, steps)
    ACK([job_id, attempt, seq]*) ->                 (as frames are stored)
    CANCEL(job_id, attempt)     ->                  (any time)
    HEARTBEAT(session)          <->                 (both ways, every interval)
    REFUSED(reason)             ->                  (then the link is dropped; never answered)

The runner-to-dispatcher frames of one job attempt (ACCEPT to DONE) form a
*job stream*: each carries ``seq``, counting from 0. The runner keeps every
frame until the dispatcher ACKs it (cumulatively, like TCP) and resends the
unacknowledged ones after a reconnect or when ACKs stall, so nothing is lost
when the connection or the dispatcher goes away. The number of unacknowledged
frames per job is bounded: that bound is the log flow control, and a step
that prints faster than the dispatcher stores simply waits.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Union

import msgpack

from narwhal.errors import ProtocolError
from narwhal.secret_rules import SECRET_NAME as _SECRET_NAME

#: 2: JOB carries ``secrets`` (a v1 runner's strict decoding refuses the field).
#: 3: DONE may say ``skipped`` and the dispatcher may send REFUSED (a v2
#: dispatcher refuses that status, so it would never store the job's end).
PROTOCOL_VERSION = 3

#: Largest frame either side accepts; also set as the sockets' MAXMSGSIZE.
MAX_FRAME_BYTES = 1 << 20
#: Largest LOG payload a runner puts in one frame.
MAX_LOG_CHUNK = 64 * 1024
#: Longest REFUSED reason either side sends or accepts.
MAX_REFUSAL_CHARS = 500

#: Terminal job statuses a runner may report in DONE.
DONE_STATUSES = frozenset({"success", "failed", "error", "cancelled", "timed_out", "skipped"})
#: Statuses of one step in STEP_FINISHED and DONE.
STEP_STATUSES = frozenset({"success", "failed", "error", "cancelled", "timed_out", "skipped"})


class Message:
    """Base of every wire message; subclasses set ``KIND``."""

    __slots__ = ()
    KIND: ClassVar[str]


@dataclass(frozen=True, slots=True, kw_only=True)
class StepOutcome:
    """How one step ended; carried inside DONE."""

    index: int
    name: str
    status: str
    exit_code: int | None
    duration: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Heartbeat(Message):
    """Liveness signal, both directions; ``session`` names the sender's process."""

    KIND: ClassVar[str] = "heartbeat"
    session: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Hello(Message):
    """First frame on every new connection: the runner answers with READY."""

    KIND: ClassVar[str] = "hello"
    session: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Ready(Message):
    """A runner introduces itself and the slots it offers.

    ``active`` lists ``[job_id, attempt, next_seq]`` for every job the runner
    still runs or holds unacknowledged frames of; ``next_seq`` is the first
    frame of that job stream it will (re)send. A restarted dispatcher
    recovers its jobs from this list.
    """

    KIND: ClassVar[str] = "ready"
    runner_id: str
    session: str
    capacity: int
    labels: dict[str, str]
    version: str
    active: tuple[tuple[int, ...], ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Job(Message):
    """The dispatcher hands a job to a runner."""

    KIND: ClassVar[str] = "job"
    job_id: int
    attempt: int
    #: The runner process the job is meant for: a JOB queued for a process
    #: that has since restarted is refused, never run by accident.
    runner_session: str
    repo: str
    ref: str
    sha: str | None
    event: str
    matrix: dict[str, str] | None = None
    timeout: float | None = None
    #: The repository's secrets (name -> value) this job may have, become env
    #: vars of every step; only inside the authenticated, encrypted mesh, and
    #: out of the repr so that logging a frame never shows them.
    secrets: dict[str, str] = field(default_factory=dict, repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class Accept(Message):
    """The runner took the job and spent one of its slots on it."""

    KIND: ClassVar[str] = "accept"
    job_id: int
    attempt: int
    seq: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Reject(Message):
    """The runner refuses the job (no slot, label mismatch, shutting down)."""

    KIND: ClassVar[str] = "reject"
    job_id: int
    attempt: int
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckedOut(Message):
    """The commit is checked out and narwhal.yml parsed.

    ``variants`` lists every matrix combination; the sending job runs
    ``variants[0]`` and the dispatcher creates one job for each of the rest.
    An empty ``pipeline``: the commit is checked out but its narwhal.yml
    could not be read (the job ends in error next); its sha still counts.
    """

    KIND: ClassVar[str] = "checked_out"
    job_id: int
    attempt: int
    seq: int
    sha: str
    pipeline: str
    variants: tuple[dict[str, str], ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Log(Message):
    """A chunk of a job's output, in order within the job stream."""

    KIND: ClassVar[str] = "log"
    job_id: int
    attempt: int
    seq: int
    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class StepStarted(Message):
    """A step began."""

    KIND: ClassVar[str] = "step_started"
    job_id: int
    attempt: int
    seq: int
    index: int
    name: str


@dataclass(frozen=True, slots=True, kw_only=True)
class StepFinished(Message):
    """A step ended; ``exit_code`` is None when it never ran or was killed."""

    KIND: ClassVar[str] = "step_finished"
    job_id: int
    attempt: int
    seq: int
    index: int
    name: str
    status: str
    exit_code: int | None
    duration: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Done(Message):
    """The job ended on the runner; its slot is free again."""

    KIND: ClassVar[str] = "done"
    job_id: int
    attempt: int
    seq: int
    status: str
    reason: str
    duration: float
    steps: tuple[StepOutcome, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Ack(Message):
    """Stored: for each ``[job_id, attempt, seq]``, every frame of that job stream up to ``seq``.

    One ACK covers every stream of a runner that a batch of frames touched,
    so acknowledging costs one frame per batch, not one per job.
    """

    KIND: ClassVar[str] = "ack"
    streams: tuple[tuple[int, ...], ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Cancel(Message):
    """The dispatcher asks the runner to stop a job (SIGTERM, grace, kill)."""

    KIND: ClassVar[str] = "cancel"
    job_id: int
    attempt: int
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Refused(Message):
    """The dispatcher refuses this runner (say, its id is in use) and drops the link.

    Sent once per refusal, just before the link goes: the runner logs the
    reason, which it could not otherwise tell from a dispatcher gone silent.
    Never answered, so two confused peers cannot feed each other.
    """

    KIND: ClassVar[str] = "refused"
    reason: str


MESSAGES: tuple[type[Message], ...] = (
    Hello,
    Heartbeat,
    Ready,
    Job,
    Accept,
    Reject,
    CheckedOut,
    Log,
    StepStarted,
    StepFinished,
    Done,
    Ack,
    Cancel,
    Refused,
)

#: Runner-to-dispatcher frames that belong to a job stream (carry ``seq``).
StreamMessage = Accept | CheckedOut | Log | StepStarted | StepFinished | Done
STREAM_MESSAGES: tuple[type[Message], ...] = (
    Accept,
    CheckedOut,
    Log,
    StepStarted,
    StepFinished,
    Done,
)


class _Invalid(Exception):
    """A value failed its check; ``path`` grows as the error unwinds.

    Paths are only built on failure: the hot path (valid frames) formats no
    strings at all.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        self.path: list[str] = []

    def at(self, part: str) -> _Invalid:
        self.path.append(part)
        return self


Checker = Callable[[Any], Any]

#: Integers are stored as SQLite INTEGER: signed 64 bits.
_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1


def _scalar(kind: type) -> Checker:
    name = kind.__name__

    def check(value: Any) -> Any:
        # type() not isinstance(): bool is an int subclass, and a flag is never a count.
        if type(value) is kind:
            if kind is int and not _INT_MIN <= typing.cast(int, value) <= _INT_MAX:
                raise _Invalid("integer out of range")
            return value
        if kind is float and type(value) is int:
            return float(value)
        raise _Invalid(f"expected {name}, got {type(value).__name__}")

    return check


def _optional(inner: Checker) -> Checker:
    def check(value: Any) -> Any:
        return None if value is None else inner(value)

    return check


def _sequence(inner: Checker) -> Checker:
    def check(value: Any) -> Any:
        if not isinstance(value, list | tuple):
            raise _Invalid(f"expected array, got {type(value).__name__}")
        out = []
        for i, item in enumerate(value):
            try:
                out.append(inner(item))
            except _Invalid as e:
                raise e.at(f"[{i}]") from None
        return tuple(out)

    return check


def _mapping(key: Checker, val: Checker) -> Checker:
    def check(value: Any) -> Any:
        if not isinstance(value, dict):
            raise _Invalid(f"expected map, got {type(value).__name__}")
        out = {}
        for k, v in value.items():
            try:
                out[key(k)] = val(v)
            except _Invalid as e:
                raise e.at(f".{k}") from None
        return out

    return check


def _record(cls: type) -> Checker:
    def check(value: Any) -> Any:
        if not isinstance(value, dict):
            raise _Invalid(f"expected map, got {type(value).__name__}")
        return _build(cls, value)

    return check


def _checker(hint: Any) -> Checker:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (Union, types.UnionType):
        (inner,) = [a for a in args if a is not type(None)]
        return _optional(_checker(inner))
    if origin is tuple:
        return _sequence(_checker(args[0]))
    if origin is dict:
        return _mapping(_checker(args[0]), _checker(args[1]))
    if dataclasses.is_dataclass(hint):
        return _record(typing.cast(type, hint))
    return _scalar(hint)


def _fields(cls: type) -> dict[str, tuple[Checker, bool]]:
    hints = typing.get_type_hints(cls)
    return {f.name: (_checker(hints[f.name]), _required(f)) for f in dataclasses.fields(cls)}


def _required(f: dataclasses.Field[Any]) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


_SPECS: dict[type, dict[str, tuple[Checker, bool]]] = {
    cls: _fields(cls) for cls in (*MESSAGES, StepOutcome)
}
_BY_KIND: dict[str, type[Message]] = {cls.KIND: cls for cls in MESSAGES}
#: Field names per class, in order, for encoding without dataclass introspection.
_NAMES: dict[type, tuple[str, ...]] = {cls: tuple(spec) for cls, spec in _SPECS.items()}


def _build(cls: type, body: Mapping[Any, Any]) -> Any:
    spec = _SPECS[cls]
    for key in body:
        if key not in spec:
            raise _Invalid(f"unknown field {key!r}")
    values = {}
    for name, (check, required) in spec.items():
        if name in body:
            try:
                values[name] = check(body[name])
            except _Invalid as e:
                raise e.at(f".{name}") from None
        elif required:
            raise _Invalid(f"missing field {name!r}")
    return cls(**values)


def _plain(value: Any) -> Any:
    """A field value msgpack can pack: nested records (StepOutcome) become maps."""
    if isinstance(value, tuple) and value and type(value[0]) in _NAMES:
        return [{n: getattr(item, n) for n in _NAMES[type(item)]} for item in value]
    return value


def encode(message: Message) -> bytes:
    """Serialize a message to one frame."""
    body = {name: _plain(getattr(message, name)) for name in _NAMES[type(message)]}
    frame: bytes = msgpack.packb([PROTOCOL_VERSION, message.KIND, body], use_bin_type=True)
    return frame


def decode(frame: bytes) -> Message:
    """Parse one frame; anything malformed raises ProtocolError."""
    if len(frame) > MAX_FRAME_BYTES:
        raise ProtocolError(f"frame of {len(frame)} bytes exceeds {MAX_FRAME_BYTES}")
    try:
        parts = msgpack.unpackb(frame, raw=False, strict_map_key=False)
    except Exception as e:  # msgpack raises several unrelated types
        raise ProtocolError(f"not a msgpack frame: {e}") from e
    if not isinstance(parts, list) or len(parts) != 3:
        raise ProtocolError("frame is not [version, kind, body]")
    version, kind, body = parts
    if version != PROTOCOL_VERSION:
        raise ProtocolError(
            f"protocol version {version!r} not supported (this side speaks {PROTOCOL_VERSION})"
        )
    cls = _BY_KIND.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ProtocolError(f"unknown message kind {kind!r}")
    if not isinstance(body, dict):
        raise ProtocolError(f"{kind}: body is not a map")
    try:
        message: Message = _build(cls, body)
    except _Invalid as e:
        path = "".join(reversed(e.path))
        raise ProtocolError(f"{kind}{path}: {e.message}") from None
    _check_values(message)
    return message


def _check_values(message: Message) -> None:
    """Semantic checks the type hints cannot express."""
    if isinstance(message, Ready):
        if message.capacity < 0:
            raise ProtocolError("ready.capacity: must not be negative")
        if any(len(entry) != 3 for entry in message.active):
            raise ProtocolError("ready.active: expected [job_id, attempt, next_seq] entries")
    if isinstance(message, Ack) and any(len(e) != 3 or e[2] < 0 for e in message.streams):
        raise ProtocolError("ack.streams: expected [job_id, attempt, seq] entries")
    if getattr(message, "seq", 0) < 0:
        raise ProtocolError(f"{message.KIND}.seq: must not be negative")
    if isinstance(message, Done) and message.status not in DONE_STATUSES:
        raise ProtocolError(f"done.status: unknown status {message.status!r}")
    if isinstance(message, StepFinished) and message.status not in STEP_STATUSES:
        raise ProtocolError(f"step_finished.status: unknown status {message.status!r}")
    _check_sizes(message)


def _check_sizes(message: Message) -> None:
    """Payloads with bounds of their own (the frame's size bounds the rest)."""
    if isinstance(message, Log) and len(message.data) > MAX_LOG_CHUNK:
        raise ProtocolError(f"log.data: chunk of {len(message.data)} bytes is too large")
    if isinstance(message, Job):
        _check_secrets(message.secrets)
    if isinstance(message, Refused) and len(message.reason) > MAX_REFUSAL_CHARS:
        raise ProtocolError(f"refused.reason: longer than {MAX_REFUSAL_CHARS} characters")


def _check_secrets(secrets: Mapping[str, str]) -> None:
    """Names a step's environment can hold; the message never shows a value."""
    for name, value in secrets.items():
        if not _SECRET_NAME.fullmatch(name):
            raise ProtocolError(f"job.secrets: {name[:40]!r} is not a variable name")
        if "\x00" in value:
            raise ProtocolError(f"job.secrets.{name}: contains a NUL byte")


__all__ = [
    "MAX_FRAME_BYTES",
    "MAX_LOG_CHUNK",
    "MESSAGES",
    "PROTOCOL_VERSION",
    "STREAM_MESSAGES",
    "Accept",
    "Ack",
    "Cancel",
    "CheckedOut",
    "Done",
    "Heartbeat",
    "Hello",
    "Job",
    "Log",
    "Message",
    "Ready",
    "Refused",
    "Reject",
    "StepFinished",
    "StepOutcome",
    "StepStarted",
    "StreamMessage",
    "decode",
    "encode",
]
