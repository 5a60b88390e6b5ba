"""A job stream: the frames of one job attempt, kept until the dispatcher ACKs them.

This is both the runner's reliability and its log flow control. Every frame
of a job (ACCEPT to DONE) gets the next sequence number and stays in the
stream until an ACK covers it, so a dispatcher that restarts or a connection
that drops loses nothing: the runner resends what is unacknowledged. The
number and size of unacknowledged frames are bounded; ``put`` waits for
room, so a step that prints faster than the dispatcher stores is slowed down
at its pipe instead of growing memory on either side.

This is one of the parts that work well: one small class, no I/O of its own
(it is handed a ``Sender``), tested alone; the wire rules it follows are in
``narwhal.mesh.protocol``'s docstring.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

from narwhal.mesh import protocol as p

#: Sends one encoded frame now; False when it could not go out (no
#: dispatcher, queue full). The frame stays in the stream either way.
Sender = Callable[[bytes], bool]


class JobStream:
    """Unacknowledged frames of one (job, attempt), with a bounded window."""

    def __init__(
        self,
        job_id: int,
        attempt: int,
        *,
        send: Sender,
        max_frames: int = 256,
        max_bytes: int = 4 << 20,
    ) -> None:
        self.job_id = job_id
        self.attempt = attempt
        self._send = send
        self._max_frames = max_frames
        self._max_bytes = max_bytes
        self._next = 0
        self._unacked: deque[tuple[int, bytes]] = deque()
        self._bytes = 0
        self._room = asyncio.Event()
        self._room.set()
        self._finished = False
        self.closed = asyncio.Event()
        self.last_progress = time.monotonic()

    @property
    def next_unacked(self) -> int:
        """The first sequence number the dispatcher has not acknowledged."""
        return self._unacked[0][0] if self._unacked else self._next

    @property
    def pending(self) -> int:
        return len(self._unacked)

    def _has_room(self) -> bool:
        return len(self._unacked) < self._max_frames and self._bytes < self._max_bytes

    async def put(self, build: Callable[[int], p.Message]) -> None:
        """Wait for room in the window, then number, keep and send a frame."""
        while not self._has_room():
            self._room.clear()
            await self._room.wait()
        seq = self._next
        self._next += 1
        message = build(seq)
        frame = p.encode(message)
        if not self._unacked:
            # Nothing was outstanding, so the clock for a stalled ACK starts now.
            self.last_progress = time.monotonic()
        self._unacked.append((seq, frame))
        self._bytes += len(frame)
        self._finished = self._finished or isinstance(message, p.Done)
        self._send(frame)

    def ack(self, seq: int) -> None:
        """Forget every frame up to ``seq``."""
        while self._unacked and self._unacked[0][0] <= seq:
            _, frame = self._unacked.popleft()
            self._bytes -= len(frame)
        self.last_progress = time.monotonic()
        if self._has_room():
            self._room.set()
        if self._finished and not self._unacked:
            self.closed.set()

    def resend(self) -> int:
        """Send every unacknowledged frame again, in order; return how many went out."""
        sent = 0
        for _, frame in self._unacked:
            if not self._send(frame):
                break
            sent += 1
        self.last_progress = time.monotonic()
        return sent
