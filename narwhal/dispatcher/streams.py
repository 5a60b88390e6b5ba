"""Job streams in order, and their acknowledgements after the frames were stored.

Each job attempt's frames carry a ``seq``; the pool takes them in order per
stream: a duplicate (already handled) is acknowledged again, a gap (frames
lost on the way) is waited out until the runner resends from its first
unacknowledged frame. ``Inbox`` gathers one receive batch: the frames taken
and the ACKs owed for them, sent only once the batch was stored, or
forgotten (each stream rewound to its first frame of the batch) if it could
not be, so the runner resends.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from narwhal.dispatcher.links import Link, Stream
from narwhal.dispatcher.mesh import Key
from narwhal.mesh import protocol as p


class Inbox:
    """The in-order frames of the current batch and the ACKs owed for them."""

    def __init__(self) -> None:
        #: Frames for the dispatcher to store together, in arrival order.
        self.frames: list[tuple[Link, p.Message]] = []
        #: The highest ``seq`` to acknowledge, per (alias, job id, attempt).
        self._acks: dict[tuple[bytes, int, int], int] = {}
        #: Frames that came after a gap (counted for ``MeshStats``).
        self.resent_gaps = 0

    def in_order(self, link: Link, stream: Stream, message: p.StreamMessage) -> bool:
        """Whether ``message`` is ``stream``'s next frame (then it is acknowledged)."""
        job_id, attempt, seq = message.job_id, message.attempt, message.seq
        if seq != stream.expected:
            self.resent_gaps += seq > stream.expected
            if stream.expected > 0:
                self.ack(link, job_id, attempt, stream.expected - 1)
            return False
        stream.expected += 1
        stream.request = None  # the JOB arrived
        self.ack(link, job_id, attempt, seq)
        return True

    def take(self) -> list[tuple[Link, p.Message]]:
        frames, self.frames = self.frames, []
        return frames

    def ack(self, link: Link, job_id: int, attempt: int, seq: int) -> None:
        key = (link.alias, job_id, attempt)
        self._acks[key] = max(seq, self._acks.get(key, -1))

    def rewind(self, frames: list[tuple[Link, p.Message]]) -> None:
        """Rewind each stream to its first frame of a failed batch, unacknowledged."""
        for link, message in frames:
            job_id, attempt = message.job_id, message.attempt  # type: ignore[attr-defined]
            self._acks.pop((link.alias, job_id, attempt), None)
            seq = getattr(message, "seq", None)
            stream = link.streams.get((job_id, attempt))
            if seq is not None and stream is not None:
                stream.expected = min(stream.expected, seq)

    def flush(self, links: Mapping[bytes, Link], send: Callable[[Link, p.Message], bool]) -> None:
        """Send the ACKs owed, one frame per link (links gone meanwhile get none)."""
        acks, self._acks = self._acks, {}
        per_link: dict[bytes, list[tuple[int, int, int]]] = {}
        for (alias, job_id, attempt), seq in acks.items():
            per_link.setdefault(alias, []).append((job_id, attempt, seq))
        for alias, streams in per_link.items():
            link = links.get(alias)
            if link is not None:
                send(link, p.Ack(streams=tuple(streams)))


def open_stream(
    link: Link, key: Key, *, expected: int, live: bool, request: bytes | None = None
) -> Stream:
    """Track a job stream on ``link``; ``request``: its JOB frame, about to be sent."""
    stream = Stream(expected=expected, live=live, request=request)
    if request is not None:
        stream.sent_at = time.monotonic()
    link.streams[key] = stream
    return stream


def unanswered(link: Link, now: float, after: float) -> list[bytes]:
    """JOB frames with no answer for ``after`` seconds, to send again (marked sent now).

    A frame can be lost when a connection drops; the runner's first frame
    of the stream shows the JOB arrived.
    """
    late = []
    for stream in link.streams.values():
        if stream.request is not None and stream.expected == 0 and now - stream.sent_at > after:
            stream.sent_at = now
            late.append(stream.request)
    return late
