"""Wire protocol v5 between the dispatcher (ROUTER) and runners (DEALER).

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

``PROTOCOL_VERSION`` is 5. 2: JOB carries ``secrets`` (a v1 runner's strict
decoding refuses the field). 3: DONE may say ``skipped`` and the dispatcher
may send REFUSED (a v2 dispatcher refuses that status, so it would never
store the job's end). 4: runners send USAGE in job streams (a v3 dispatcher
would count it a bad frame and, the stream's ``seq`` then having a gap it
waits for, never store the rest of the job). 5: READY and HEARTBEAT may
carry the runner's ``state`` (``RunnerState``), CHECKED_OUT says what the
checkout cost and what the pipeline asks for, DONE says whose ``fault`` an
error was (a v4 dispatcher refuses the fields). Runners also announce it
on mDNS (``protocol=5``).

Conversation, in order (D: dispatcher, R: runner)::

    dispatcher                             runner
    HELLO(session)                ->                 first frame on a connection
                          <-  READY(runner_id, session, capacity, labels, version, active, state)
    JOB(job_id, attempt, runner_session, repo, ref, sha, event, matrix, timeout, secrets) ->
                                  <-  ACCEPT | REJECT
                          <-  CHECKED_OUT(sha, pipeline, variants, checkout, cold, fetched, needs)
                                  <-  STEP_STARTED, (LOG | USAGE)*, STEP_FINISHED   per step
                                  <-  DONE(status, reason, duration, steps, fault)
    ACK([job_id, attempt, seq]*)  ->                 once the frames are stored
    CANCEL(job_id, attempt, reason) ->               any time
    HEARTBEAT(session, state)     <->                both ways, every interval
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
  ``state`` (None: not reported) is the runner's ``RunnerState``: CPUs and
  load, memory, free disk in its work folder, OS and architecture, whether
  its container engine answers, the images it holds and the repositories
  warm in its mirror cache (at most ``MAX_IMAGES`` and ``MAX_MIRRORS``, the
  most recently used first), which placement weighs.
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
  commit is known but its narwhal.yml could not be read, the job ends in error
  next; ``checkout``, the seconds the checkout took; ``cold``, True when the
  mirror cache had no copy of the repository and cloned it; ``fetched``, the
  bytes the mirror grew by; ``needs``, what the pipeline asks of a runner,
  ``Needs``: its ``priority`` and the largest ``cpus`` and ``memory`` of its
  ``resources:``, None: nothing read); STEP_STARTED (``index``, ``name``); LOG
  (``data``, at most ``MAX_LOG_CHUNK`` bytes, masked); USAGE (``index``, the
  running step's; ``samples``, at most ``MAX_USAGE_SAMPLES`` ``[seconds since
  the step started, CPU cores in use over the interval before, memory bytes in
  use]`` triples, finite and never negative, memory a whole number, each frame
  the samples taken since the one before; ``memory_limit``, the step's limit
  in bytes, None: none; sent every few seconds while the step runs and once at
  its end, before STEP_FINISHED); STEP_FINISHED (``index``, ``name``,
  ``status`` in ``STEP_STATUSES``, ``exit_code``, None when the step never ran
  or was killed, ``duration``); DONE, the last frame (``status``, ``reason``,
  ``duration``, ``steps``: a ``StepOutcome`` per step). Each carries
  ``job_id``, ``attempt`` and ``seq``.
- DONE ``status`` is one of ``DONE_STATUSES``: ``success``; ``failed`` (a step
  failed and does not ``allow_failure``); ``error`` (checkout, narwhal.yml,
  the executor or the runner itself failed: ``reason`` says which);
  ``cancelled`` (CANCEL, or the runner shutting down); ``timed_out`` (a step's
  or the pipeline's timeout); ``skipped`` (the pipeline's ``when`` does not
  match the branch or event; every step is ``skipped``). A DONE frees the slot.
  ``fault`` (one of ``FAULTS``) says, for an ``error``, whether the runner's
  side failed: ``checkout`` (git, the mirror cache), ``engine`` (the
  container engine or executor), ``runner`` (the runner itself); "" for
  every other end, and for an error of the job's own making (its
  narwhal.yml). Placement quarantines a runner whose jobs keep ending in a
  fault of its side.
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
  interval. A runner's may carry ``state``, a new ``RunnerState``, when it
  changed enough to matter since the one sent last (load and memory are
  rounded before comparing, so a steady runner sends none); the
  dispatcher's never does. Any frame counts as a sign of life; a peer silent for the dead
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
PROTOCOL_VERSION = 5

#: Largest frame either side accepts; also set as the sockets' MAXMSGSIZE.
MAX_FRAME_BYTES = 1 << 20
#: Largest LOG payload a runner puts in one frame.
MAX_LOG_CHUNK = 64 * 1024
#: Longest REFUSED reason either side sends or accepts.
MAX_REFUSAL_CHARS = 500
#: Most samples one USAGE frame carries (also what a runner keeps per step).
MAX_USAGE_SAMPLES = 600
#: Most images and mirror cache entries one ``RunnerState`` lists.
MAX_IMAGES = 256
MAX_MIRRORS = 256
#: Job priorities (API and narwhal.yml) lie within these bounds.
MIN_PRIORITY, MAX_PRIORITY = -1000, 1000
#: What ``Done.fault`` may say.
FAULTS = frozenset({"", "checkout", "engine", "runner"})
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
class WarmRepo:
    """One repository in a runner's mirror cache."""

    repo: str
    #: The commit fetched into it last ("" if not known).
    sha: str
    #: When a job last used it (wall clock, seconds).
    used_at: float
    #: Bytes it takes on disk.
    size: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RunnerState:
    """What a runner reports of itself, for placement and the operator.

    Carried in READY and, when it changed, in HEARTBEAT. Every figure is a
    claim of the runner's: placement weighs it, and a false one costs only
    that runner's share of the work.
    """

    cpus: int
    #: The one-minute load average.
    load: float
    memory_total: int
    memory_available: int
    #: Bytes free in the runner's work folder.
    disk_free: int
    #: ``platform.system().lower()``: linux, darwin, windows.
    os: str
    #: Normalised as container engines name it: amd64, arm64, ...
    arch: str
    #: Whether the container engine answers (False for the local executor).
    docker: bool
    #: Images present in the engine (``repo:tag``), at most ``MAX_IMAGES``.
    images: tuple[str, ...] = ()
    #: The mirror cache, most recently used first, at most ``MAX_MIRRORS``.
    mirrors: tuple[WarmRepo, ...] = ()
    #: Bytes the mirror cache holds, and its bound.
    mirror_bytes: int = 0
    mirror_limit: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Needs:
    """What a pipeline asks of the runner that takes it (from its narwhal.yml)."""

    priority: int = 0
    #: The largest ``resources: cpus`` and ``memory`` (bytes) of its steps.
    cpus: float | None = None
    memory: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Heartbeat(Message):
    """Liveness signal, both directions; ``session`` names the sender's process.

    A runner's carries its ``state`` when that changed (None: unchanged).
    """

    KIND: ClassVar[str] = "heartbeat"
    session: str
    state: RunnerState | None = None


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
    state: RunnerState | None = None


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
    #: Seconds the checkout took; whether the mirror cloned the repository
    #: afresh; the bytes the mirror grew by.
    checkout: float = 0.0
    cold: bool = False
    fetched: int = 0
    #: What the pipeline asks of a runner (None: its narwhal.yml was not read).
    needs: Needs | None = None


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
    #: For an ``error``: the runner's side that failed (``FAULTS``), else "".
    fault: str = ""


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


_SCHEMA = Schema((*MESSAGES, StepOutcome, WarmRepo, RunnerState, Needs))
_BY_KIND: dict[str, type[Message]] = {cls.KIND: cls for cls in MESSAGES}
#: Field names per class, in order, for encoding without dataclass introspection.
_NAMES = _SCHEMA.names


def _plain(value: Any) -> Any:
    """A field value msgpack can pack: nested records (StepOutcome, RunnerState) become maps."""
    if type(value) in _NAMES:
        return {n: _plain(getattr(value, n)) for n in _NAMES[type(value)]}
    if isinstance(value, tuple) and value and type(value[0]) in _NAMES:
        return [_plain(item) for item in value]
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
    if isinstance(message, Done):
        if message.status not in DONE_STATUSES:
            raise ProtocolError(f"done.status: unknown status {message.status!r}")
        if message.fault not in FAULTS:
            raise ProtocolError(f"done.fault: unknown fault {message.fault!r}")
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
    state = getattr(message, "state", None)
    if isinstance(message, Ready | Heartbeat) and state is not None:
        _check_state(state)
    if isinstance(message, CheckedOut):
        _check_checkout(message)


def _check_state(state: RunnerState) -> None:
    """A runner's report: bounded lists, figures that are not negative."""
    if len(state.images) > MAX_IMAGES or len(state.mirrors) > MAX_MIRRORS:
        raise ProtocolError(f"state: more than {MAX_IMAGES} images or {MAX_MIRRORS} mirrors")
    counts = (state.cpus, state.memory_total, state.memory_available, state.disk_free)
    sizes = (state.mirror_bytes, state.mirror_limit)
    if min(*counts, *sizes) < 0 or not 0 <= state.load < _SAMPLE_MAX:
        raise ProtocolError("state: counts and load must be finite and not negative")
    if any(m.size < 0 or not 0 <= m.used_at < _SAMPLE_MAX for m in state.mirrors):
        raise ProtocolError("state.mirrors: sizes and times must not be negative")


def _check_checkout(message: CheckedOut) -> None:
    if not 0 <= message.checkout < _SAMPLE_MAX or message.fetched < 0:
        raise ProtocolError("checked_out: checkout time and bytes must not be negative")
    needs = message.needs
    if needs is None:
        return
    if not MIN_PRIORITY <= needs.priority <= MAX_PRIORITY:
        raise ProtocolError(f"checked_out.needs.priority: outside {MIN_PRIORITY}..{MAX_PRIORITY}")
    if (needs.cpus is not None and not 0 < needs.cpus < _SAMPLE_MAX) or (
        needs.memory is not None and needs.memory <= 0
    ):
        raise ProtocolError("checked_out.needs: cpus and memory must be positive")


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
    "FAULTS",
    "MAX_FRAME_BYTES",
    "MAX_IMAGES",
    "MAX_LOG_CHUNK",
    "MAX_MIRRORS",
    "MAX_PRIORITY",
    "MIN_PRIORITY",
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
    "Needs",
    "Ready",
    "Refused",
    "Reject",
    "RunnerState",
    "StepFinished",
    "StepOutcome",
    "StepStarted",
    "StreamMessage",
    "Usage",
    "WarmRepo",
    "decode",
    "encode",
]
