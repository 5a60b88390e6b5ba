"""Wire protocol v4 between the dispatcher (ROUTER) and runners (DEALER).

This docstring is the protocol's one description; docs/ARCHITECTURE.md
links here. The codec below is one of the parts of Narwhal that work well:
one frozen dataclass per frame, one ``encode``/``decode`` pair, msgpack
only, every field checked against its annotation (``mesh/schema.py``) and
everything malformed a ``ProtocolError``. Keep that shape when adding a
message: add the dataclass here, list it in ``MESSAGES``, bump
``PROTOCOL_VERSION`` when an older peer would refuse it. The module is
longer than the ~400 lines aimed at elsewhere on purpose: this description
and every wire message stay in one place (splitting the messages would
scatter the protocol); the generic field checking lives in ``schema``.

Framing. Every frame is one msgpack array ``[version, kind, {field: value}]``
of at most ``MAX_FRAME_BYTES`` (also the sockets' MAXMSGSIZE). ``decode``
checks, in order: the size, the msgpack, the shape, the version (a peer
speaking another protocol gets a clear error instead of a field mismatch),
the kind, then every field: unknown and missing fields are refused, ints are
signed 64-bit, bools are never counts. Semantic checks follow (below, per
frame). The receiver counts and logs a frame that fails (at most once per
peer per interval) and never answers it, so two confused peers cannot feed
each other.

``PROTOCOL_VERSION`` is 4. 2: JOB carries ``secrets`` (a v1 runner's strict
decoding refuses the field). 3: DONE may say ``skipped`` and the dispatcher
may send REFUSED (a v2 dispatcher refuses that status, so it would never
store the job's end). 4: runners send USAGE in job streams (a v3 dispatcher
would count it a bad frame and, the stream's ``seq`` then having a gap it
waits for, never store the rest of the job). Runners also announce it on
mDNS (``protocol=4``).

Conversation, in order (D: dispatcher, R: runner)::

    dispatcher                             runner
    HELLO(session)                ->                 first frame on a connection
                                  <-  READY(runner_id, session, capacity, labels, version, active)
    JOB(job_id, attempt, runner_session, repo, ref, sha, event, matrix, timeout, secrets) ->
                                  <-  ACCEPT | REJECT
                                  <-  CHECKED_OUT(sha, pipeline, variants)
                                  <-  STEP_STARTED, (LOG | USAGE)*, STEP_FINISHED   per step
                                  <-  DONE(status, reason, duration, steps)
    ACK([job_id, attempt, seq]*)  ->                 once the frames are stored
    CANCEL(job_id, attempt, reason) ->               any time
    HEARTBEAT(session)            <->                both ways, every interval
    REFUSED(reason)               ->                 then the link is dropped; never answered

The frames:

- HELLO (D->R) ``session``: the dispatcher process's id. Sent first on every
  new connection, and again when a runner's HEARTBEAT comes on a link that
  is not ready or names another runner session. The runner answers READY,
  then resends every unacknowledged frame of every job stream.
- READY (R->D) ``runner_id``; ``session``, the runner process's id (new at
  each start); ``capacity``, its slots (never negative; the dispatcher clamps
  it to its own maximum); ``labels``; ``version``, the Narwhal version;
  ``active``, one ``[job_id, attempt, next_seq]`` for every job attempt the
  runner still runs or holds unacknowledged frames of, ``next_seq`` being the
  first frame of that job stream it will (re)send (every earlier one was
  acknowledged). A restarted dispatcher recovers its jobs from this list;
  entries for attempts the runner does not hold are ignored (bad frames), and
  an attempt that is over is tracked until its DONE and gets CANCEL.
- JOB (D->R) ``job_id``, ``attempt``; ``runner_session``, the READY session it
  is meant for (a JOB queued for a runner process since restarted is
  refused, never run by accident); ``repo``, ``ref``, ``sha`` (None: the
  ref's tip), ``event``; ``matrix``, the combination to run (None: the
  first, and report them all); ``timeout`` (None: the runner's default);
  ``secrets``, name -> value, env vars of every step (names must be variable
  names, values hold no NUL; only inside the authenticated, encrypted mesh,
  never in a repr). The dispatcher sends a JOB again when the runner has not
  answered within the dead interval; a runner ignores a JOB for an attempt
  it already has.
- REJECT (R->D) ``job_id``, ``attempt``, ``reason``: the runner will not run it
  (meant for an earlier session, no free slot, shutting down). Not part of
  a job stream: no ``seq``.
- The job stream (R->D): ACCEPT (``seq`` 0: a slot is spent on it);
  CHECKED_OUT (``sha`` checked out, ``pipeline`` its name, ``variants`` every
  matrix combination when JOB had no ``matrix``; an empty ``pipeline``: the
  commit is known but its narwhal.yml could not be read, the job ends in
  error next); STEP_STARTED (``index``, ``name``); LOG (``data``, at most
  ``MAX_LOG_CHUNK`` bytes, masked); USAGE (``index``, the running step's;
  ``samples``, at most ``MAX_USAGE_SAMPLES`` ``[seconds since the step
  started, CPU cores in use over the interval before, memory bytes in use]``
  triples, finite and never negative, memory a whole number, each frame the
  samples taken since the one before; ``memory_limit``, the step's limit in
  bytes, None: none; sent every few seconds while the step runs and once
  at its end, before STEP_FINISHED); STEP_FINISHED (``index``, ``name``,
  ``status`` in ``STEP_STATUSES``, ``exit_code``, None when the step never ran
  or was killed, ``duration``); DONE, the last frame (``status``, ``reason``,
  ``duration``, ``steps``: a ``StepOutcome`` per step). Each carries ``job_id``,
  ``attempt`` and ``seq``.
- DONE ``status`` is one of ``DONE_STATUSES``: ``success``; ``failed`` (a step
  failed and does not ``allow_failure``); ``error`` (checkout, narwhal.yml,
  the executor or the runner itself failed: ``reason`` says which);
  ``cancelled`` (CANCEL, or the runner shutting down); ``timed_out`` (a step's
  or the pipeline's timeout); ``skipped`` (the pipeline's ``when`` does not
  match the branch or event; every step is ``skipped``). A DONE frees the slot.
- ACK (D->R) ``streams``: ``[job_id, attempt, seq]`` triples, each meaning
  "every frame of that job stream up to ``seq`` is stored" (cumulative, like
  TCP). Sent after the frames are durable, one ACK per batch of frames,
  covering every stream the batch touched. The dispatcher handles a
  stream's frames strictly in ``seq`` order: a duplicate is acknowledged
  again, a gap waits for the resend. ACKs for unknown attempts are ignored.
- CANCEL (D->R) ``job_id``, ``attempt``, ``reason``: stop the job (SIGTERM, a
  grace period, SIGKILL); its DONE follows as usual. Unknown attempts are
  ignored.
- HEARTBEAT (D<->R) ``session``: the sender's process id, every heartbeat
  interval. Any frame counts as a sign of life; a peer silent for the dead
  interval is lost. A runner that hears a dispatcher session it does not
  know greets it as after a HELLO.
- REFUSED (D->R) ``reason`` (at most ``MAX_REFUSAL_CHARS``): sent once, just
  before the dispatcher drops a runner it refuses after a completed
  handshake (its id already connected, its key bound to another id or
  revoked), so that the runner logs why instead of "dispatcher silent".
  Never answered. A failed CURVE handshake has no channel to say it on.

Job streams. Every job frame carries ``job_id`` and ``attempt``, so frames
arriving late from an attempt the dispatcher gave up on are fenced off. The
runner-to-dispatcher frames of one attempt (ACCEPT to DONE) form a *job
stream*, numbered by ``seq`` from 0. The runner keeps every frame until an
ACK covers it and resends the unacknowledged ones after each HELLO and when
ACKs stall for the dead interval, so nothing is lost when the connection
or the dispatcher goes away; the attempt is forgotten once its DONE is
acknowledged. The number and bytes of unacknowledged frames per job are
bounded: that bound is the log flow control, and a step that prints faster
than the dispatcher stores simply waits.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import msgpack

from narwhal.errors import ProtocolError
from narwhal.mesh.schema import Invalid, Schema
from narwhal.secret_rules import SECRET_NAME as _SECRET_NAME

#: The history of the versions: the module docstring.
PROTOCOL_VERSION = 4

#: Largest frame either side accepts; also set as the sockets' MAXMSGSIZE.
MAX_FRAME_BYTES = 1 << 20
#: Largest LOG payload a runner puts in one frame.
MAX_LOG_CHUNK = 64 * 1024
#: Longest REFUSED reason either side sends or accepts.
MAX_REFUSAL_CHARS = 500
#: Most samples one USAGE frame carries (also what a runner keeps per step).
MAX_USAGE_SAMPLES = 600
#: Every value of a sample is below this (memory bytes fit a signed 64-bit
#: integer as a float does, and infinity is refused).
_SAMPLE_MAX = float(2**62)

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
class Usage(Message):
    """CPU and memory of the running step ``index``, sampled by the runner.

    ``samples``: ``[seconds since the step started, CPU cores in use over
    the interval before, memory bytes]`` each, the ones taken since the
    previous USAGE; ``memory_limit``: the step's limit in bytes (None: none).
    """

    KIND: ClassVar[str] = "usage"
    job_id: int
    attempt: int
    seq: int
    index: int
    samples: tuple[tuple[float, ...], ...]
    memory_limit: int | None = None


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
    Usage,
    StepFinished,
    Done,
    Ack,
    Cancel,
    Refused,
)

#: Runner-to-dispatcher frames that belong to a job stream (carry ``seq``).
StreamMessage = Accept | CheckedOut | Log | StepStarted | Usage | StepFinished | Done
STREAM_MESSAGES: tuple[type[Message], ...] = (
    Accept,
    CheckedOut,
    Log,
    StepStarted,
    Usage,
    StepFinished,
    Done,
)


_SCHEMA = Schema((*MESSAGES, StepOutcome))
_BY_KIND: dict[str, type[Message]] = {cls.KIND: cls for cls in MESSAGES}
#: Field names per class, in order, for encoding without dataclass introspection.
_NAMES = _SCHEMA.names


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
        message: Message = _SCHEMA.build(cls, body)
    except Invalid as e:
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
    if isinstance(message, Usage):
        _check_usage(message)


def _check_usage(message: Usage) -> None:
    """Samples the store and a graph can take as they are: bounded, finite, not negative."""
    if message.index < 0:
        raise ProtocolError("usage.index: must not be negative")
    if len(message.samples) > MAX_USAGE_SAMPLES:
        raise ProtocolError(f"usage.samples: more than {MAX_USAGE_SAMPLES} samples")
    if message.memory_limit is not None and message.memory_limit <= 0:
        raise ProtocolError("usage.memory_limit: must be positive")
    for i, sample in enumerate(message.samples):
        if len(sample) != 3:
            raise ProtocolError(f"usage.samples[{i}]: expected [seconds, cpu, memory]")
        if not all(0 <= value < _SAMPLE_MAX for value in sample):  # NaN fails this too
            raise ProtocolError(f"usage.samples[{i}]: values must be finite and not negative")
        if not sample[2].is_integer():
            raise ProtocolError(f"usage.samples[{i}]: memory must be a whole number of bytes")


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
    "MAX_USAGE_SAMPLES",
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
    "Usage",
    "decode",
    "encode",
]
