"""Commit events: what the agent puts on the queue and the dispatcher takes off it.

This module is the contract between the two: both import it, it imports
neither side (a leaf next to ``narwhal.amqp``, the client both use). One
event is one JSON object (UTF-8) per AMQP message::

    {"v": 2, "id": "github:72d3162e-cc78-11e3-81ab-4c9367dc0958",
     "forge": "github", "delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958",
     "repo": "https://github.com/octo/hello.git", "full_name": "octo/hello",
     "ref": "refs/heads/main", "sha": "6113728f27ae82c7b1a177c8d03f9e96e0adf246",
     "event": "push", "fork_of": null}

``id`` is the event's idempotency key (forge and delivery id): the AMQP
``message_id`` and the job's ``source_key``, so a redelivered message never
makes a second job. ``repo`` is what the runner clones; ``full_name`` is the
forge repository that commit statuses go to (the base repository of a pull
request from a fork). ``fork_of`` is the base repository's clone URL when the
commit is a pull request from another repository (a fork), else null: such a
job gets the base repository's secrets only if that repository allows forks.

Versions: 2 added ``fork_of``. A version 1 event says nothing about forks,
so its pull requests are taken as coming from a fork of their own
repository (no secrets unless it allows forks); its pushes are not forks.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from narwhal.errors import NarwhalError, RepoError
from narwhal.forges import FORGES
from narwhal.repos import check_ref, check_repo, check_sha

VERSION = 2
#: Versions ``decode`` reads (see the module docstring for what 1 lacks).
READABLE_VERSIONS = (1, 2)
#: ``tag`` is a push of a tag; ``when: {event: [...]}`` filters see these names.
EVENTS = ("push", "tag", "pull_request")
#: A genuine event is a few hundred bytes; anything far larger is not one.
MAX_EVENT_BYTES = 16 * 1024
CONTENT_TYPE = "application/json"
MESSAGE_TYPE = "narwhal.commit-event"
#: Header of a dead-lettered message saying why it was refused.
REASON_HEADER = "x-narwhal-reason"

_KEY = re.compile(r"[\x21-\x7e]{1,300}")
_FULL_NAME = re.compile(r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)+")


class EventError(NarwhalError):
    """A commit event is malformed (bad JSON, a missing or invalid field)."""


class Unavailable(NarwhalError):
    """The event could not be handed on (broker down, no confirm in time)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CommitEvent:
    """One commit to build, as a forge webhook announced it."""

    id: str
    forge: str
    delivery: str
    repo: str
    full_name: str
    ref: str
    sha: str
    event: str
    #: The base repository's clone URL for a pull request from a fork, else None.
    fork_of: str | None = None

    def __post_init__(self) -> None:
        _check(self)

    @property
    def commit_key(self) -> tuple[str, str, str]:
        """What makes two events the same work: repository, commit, event kind."""
        return (self.repo, self.sha, self.event)


class Sink(Protocol):
    """Where the agent hands accepted events: RabbitMQ, or the dispatcher in-process."""

    async def send(self, event: CommitEvent) -> None:
        """Return once the event is safely stored; raise ``Unavailable`` otherwise."""


def encode(event: CommitEvent) -> bytes:
    return json.dumps({"v": VERSION, **asdict(event)}, separators=(",", ":")).encode()


def decode(data: bytes) -> CommitEvent:
    """Parse one message body; every failure is an ``EventError`` with the reason."""
    if len(data) > MAX_EVENT_BYTES:
        raise EventError(f"message of {len(data)} bytes is larger than {MAX_EVENT_BYTES}")
    try:
        body = json.loads(data)
    except (ValueError, RecursionError) as e:
        raise EventError(f"not JSON: {e}") from e
    if not isinstance(body, dict):
        raise EventError("expected a JSON object")
    version = body.get("v")
    if type(version) is not int or version not in READABLE_VERSIONS:
        raise EventError(f"unsupported event version {version!r} (expected {VERSION})")
    fields = {name: _string(body, name) for name in _FIELDS}
    if version == 1:
        fork_of = fields["repo"] if fields["event"] == "pull_request" else None
    else:
        fork_of = body.get("fork_of")
        if fork_of is not None and not isinstance(fork_of, str):
            raise EventError(f"fork_of: expected a string or null, got {type(fork_of).__name__}")
    return CommitEvent(**fields, fork_of=fork_of)


_FIELDS = ("id", "forge", "delivery", "repo", "full_name", "ref", "sha", "event")


def _string(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str):
        raise EventError(f"{name}: expected a string, got {type(value).__name__}")
    return value


def _check(event: CommitEvent) -> None:
    if event.forge not in FORGES:
        raise EventError(f"forge: expected one of {', '.join(FORGES)}, got {event.forge!r}")
    if event.event not in EVENTS:
        raise EventError(f"event: expected one of {', '.join(EVENTS)}, got {event.event!r}")
    for name in ("id", "delivery"):
        if not _KEY.fullmatch(getattr(event, name)):
            raise EventError(f"{name}: expected 1-300 printable characters")
    _check_commit(event)
    if not event.ref.startswith("refs/"):
        raise EventError(f"ref: expected a full ref like refs/heads/main, got {event.ref[:80]!r}")
    if len(event.full_name) > 255 or not _FULL_NAME.fullmatch(event.full_name):
        raise EventError(f"full_name: expected OWNER/NAME, got {event.full_name[:80]!r}")


def _check_commit(event: CommitEvent) -> None:
    """The repository, ref and commit, by the rules every door applies (``narwhal.repos``)."""
    try:
        check_sha(event.sha)
        check_ref(event.ref)
        # Whether a local path may be built is the consumer's policy
        # (--allow-local-repos), not part of the event's shape.
        check_repo(event.repo, allow_local=True)
        if event.fork_of is not None:
            check_repo(event.fork_of, allow_local=True)
    except RepoError as e:
        raise EventError(str(e)) from None
    if event.fork_of is not None and event.event != "pull_request":
        raise EventError("fork_of: only a pull request comes from a fork")


def dead_letter_queue(queue: str) -> str:
    """The queue where messages that cannot be parsed are parked, with the reason."""
    return f"{queue}.dead"


#: RabbitMQ queue types the commit queues may be declared as (``--amqp-queue-type``).
QUEUE_TYPES = ("classic", "quorum")


def queue_arguments(queue: str, kind: str = "classic") -> dict[str, Any]:
    """Arguments of the commit queue; both sides declare it, so they must agree.

    A message rejected without requeue (by a future consumer, or by hand)
    lands in the dead-letter queue too, rather than vanishing. ``quorum``
    (a RabbitMQ cluster: the queue replicated by Raft on a majority of
    nodes) is named explicitly; a classic queue is declared without the
    argument, as it always was, so an existing queue still matches.
    """
    arguments: dict[str, Any] = {
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": dead_letter_queue(queue),
    }
    return arguments | type_argument(kind)


def type_argument(kind: str) -> dict[str, Any]:
    """The ``x-queue-type`` argument for ``kind`` (none for a classic queue)."""
    return {"x-queue-type": "quorum"} if kind == "quorum" else {}
