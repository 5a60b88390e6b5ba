"""Followed logs: one stream from the dispatcher per job, shared by every browser following it.

A follower opens the dispatcher's ``GET /api/jobs/{id}/logs?follow=1``,
cuts what comes into whole lines (``lines.LineSplitter``) and sends them
in batches (``log`` messages, at most every ``BATCH_DELAY`` seconds, up to
``BATCH_LINES`` a message) to the sockets that follow the job. It keeps the
current attempt's lines (the last ``KEEP_BYTES`` of them), so a browser
that starts following later gets them all at once, in a message with
``reset`` set. It stops when the last browser stops following.

A new attempt is learnt from the feed (``Followers.job_changed``: the
job's view with a higher ``attempt``), not from the ``--- attempt N`` line
the dispatcher's stream puts before it, which a step could print as well:
the follower then opens the stream again, at the new attempt, and its
lines replace the old ones (``reset``). A stream that breaks (the
dispatcher restarted) is opened again after a back-off, and what it replays
replaces what was shown; a stream that ends while the job has not ended
(the dispatcher is shutting down) too.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any

from narwhal.backend.hub import Hub, Peer, encode
from narwhal.backend.lines import LineSplitter
from narwhal.backend.states import ENDED
from narwhal.backend.upstream import ApiError, Upstream

log = logging.getLogger(__name__)

BATCH_DELAY = 0.05
BATCH_LINES = 1000
#: Bytes of lines a follower keeps for browsers that join late.
KEEP_BYTES = 8 << 20
#: Seconds of silence after which a stream is opened again (a dead connection shows no error).
IDLE_REOPEN = 300.0
#: Jobs followed at once, by all browsers together.
MAX_FOLLOWED = 200
#: Refusals that another try would only repeat.
_FINAL = frozenset({400, 401, 403, 404})


class LogFollower:
    """The shared stream of one job's log (module docstring)."""

    def __init__(self, job_id: int, upstream: Upstream, token: str | None, hub: Hub) -> None:
        self.job_id = job_id
        self.upstream = upstream
        self.token = token
        self.hub = hub
        self.peers: set[Peer] = set()
        self.attempt = 0
        self.ended = False
        #: The job cannot be followed (no such job, no permission): a new follow tries again.
        self.failed = False
        self._kept: deque[str] = deque()
        self._kept_bytes = 0
        self._cut = 0
        self._pending: list[str] = []
        self._reset = False
        self._timer: asyncio.TimerHandle | None = None

    # browsers

    def add(self, peer: Peer) -> None:
        """A browser starts following: everything kept so far, as a reset.

        (Before the first stream has started, the reset it starts with is enough.)
        """
        self.flush()
        self.peers.add(peer)
        if not self.attempt:
            return
        kept = list(self._kept)
        if self._cut:
            kept.insert(
                0, f"[{self._cut} earlier lines are not shown: /api/jobs/{self.job_id}/log]"
            )
        batches = [kept[i : i + BATCH_LINES] for i in range(0, len(kept), BATCH_LINES)] or [[]]
        for n, batch in enumerate(batches):
            self.hub.send(peer, self._message(batch, reset=n == 0))

    def remove(self, peer: Peer) -> None:
        self.peers.discard(peer)

    # the stream

    async def run(self) -> None:
        """Follow until the job has ended (then keep the lines for late joiners)."""
        try:
            await self._run()
        except Exception:  # a bug here must not pass unseen, nor leave browsers waiting
            log.exception("job %d: the log follower failed", self.job_id)
            self._fail("the log could not be followed")

    async def _run(self) -> None:
        backoff = 1.0
        while True:
            try:
                if await self._follow_once():
                    self.ended = True
                    return
                backoff = 1.0
            except ApiError as e:
                if e.status in _FINAL:
                    self._fail(e.message)
                    return
                log.info("job %d: log stream: %s; again in %g s", self.job_id, e.message, backoff)
                backoff = min(backoff * 2, 10.0)
            await asyncio.sleep(backoff)

    async def _follow_once(self) -> bool:
        """One stream, from the start of the current attempt; True if the job has ended."""
        job = await self.upstream.get(f"/api/jobs/{self.job_id}", self.token)
        self._start(_attempt(job))
        splitter = LineSplitter()
        path = f"/api/jobs/{self.job_id}/logs"
        async with self.upstream.stream(
            path, self.token, {"follow": "1"}, timeout=IDLE_REOPEN
        ) as response:
            async for chunk in response.aiter_bytes():
                for line in splitter.feed(chunk):
                    self._line(line)
        for line in splitter.flush():
            self._line(line)
        self.flush()
        job = await self.upstream.get(f"/api/jobs/{self.job_id}", self.token)
        return isinstance(job, dict) and job.get("state") in ENDED

    def _start(self, attempt: int) -> None:
        """Lines from here on replace what was shown (a new attempt, a stream opened again)."""
        self.flush()
        self.attempt = attempt
        self._kept.clear()
        self._kept_bytes = self._cut = 0
        self._reset = True
        self._schedule()

    def _line(self, line: str) -> None:
        self._keep(line)
        self._pending.append(line)
        if len(self._pending) >= BATCH_LINES:
            self.flush()
        else:
            self._schedule()

    def _keep(self, line: str) -> None:
        self._kept.append(line)
        self._kept_bytes += len(line) + 1
        while self._kept_bytes > KEEP_BYTES and self._kept:
            self._kept_bytes -= len(self._kept.popleft()) + 1
            self._cut += 1

    def _schedule(self) -> None:
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(BATCH_DELAY, self.flush)

    def flush(self) -> None:
        """Send the lines waiting (and a reset, even without lines) to every follower."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._pending and not self._reset:
            return
        text = self._message(self._pending, reset=self._reset)
        self._pending, self._reset = [], False
        for peer in list(self.peers):
            self.hub.send(peer, text)

    def _message(self, lines: list[str], *, reset: bool) -> str:
        message = {"type": "log", "job_id": self.job_id, "attempt": self.attempt}
        return encode(message | {"lines": lines, "reset": reset})

    def _fail(self, why: str) -> None:
        self.ended = self.failed = True
        text = encode({"type": "error", "error": f"job {self.job_id}: {why}"})
        for peer in list(self.peers):
            self.hub.send(peer, text)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _attempt(job: Any) -> int:
    attempt = job.get("attempt") if isinstance(job, dict) else None
    if type(attempt) is not int or attempt < 0:
        raise ApiError(502, "the dispatcher's job has no attempt number")
    return attempt


class Followers:
    """Job id -> its follower; each socket follows one job at most."""

    def __init__(self, upstream: Upstream, hub: Hub, token: str | None) -> None:
        self.upstream = upstream
        self.hub = hub
        #: The backend's own read token; None: a follower reads with its first browser's.
        self.token = token
        self._followers: dict[int, LogFollower] = {}
        self._tasks: dict[int, asyncio.Task[None]] = {}
        #: Tasks cancelled and not yet ended (closing their stream).
        self._ending: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._followers)

    def follow(self, peer: Peer, job_id: int, token: str | None) -> str | None:
        """Start ``peer`` following ``job_id`` (and stop what it followed); an error or None."""
        self.unfollow(peer)
        follower = self._followers.get(job_id)
        if follower is not None and follower.failed:
            self._stop(job_id)
            follower = None
        if follower is None:
            if len(self._followers) >= MAX_FOLLOWED:
                return f"too many logs followed at once ({MAX_FOLLOWED}); try again later"
            follower = LogFollower(job_id, self.upstream, self.token or token, self.hub)
            self._followers[job_id] = follower
            self._start(follower)
        follower.add(peer)
        peer.following = job_id
        return None

    def job_changed(self, job_id: int, attempt: int) -> None:
        """The feed's view of a job: a new attempt of a followed job opens its stream again."""
        follower = self._followers.get(job_id)
        # attempt 0: the follower has not asked yet which attempt it streams.
        if follower is None or follower.ended or not 0 < follower.attempt < attempt:
            return
        self._cancel(self._tasks.pop(job_id))
        self._start(follower)

    def _cancel(self, task: asyncio.Task[None]) -> None:
        task.cancel()
        self._ending.add(task)
        task.add_done_callback(self._ending.discard)

    def _start(self, follower: LogFollower) -> None:
        task = asyncio.create_task(follower.run(), name=f"log-{follower.job_id}")
        self._tasks[follower.job_id] = task

    def unfollow(self, peer: Peer) -> None:
        job_id, peer.following = peer.following, None
        follower = self._followers.get(job_id) if job_id is not None else None
        if follower is None:
            return
        follower.remove(peer)
        if not follower.peers:
            self._stop(job_id)  # type: ignore[arg-type]

    def _stop(self, job_id: int) -> None:
        self._followers.pop(job_id).stop()
        self._cancel(self._tasks.pop(job_id))

    def followed(self) -> list[int]:
        return list(self._followers)

    async def aclose(self) -> None:
        for job_id in list(self._followers):
            self._stop(job_id)
        await asyncio.gather(*self._ending, return_exceptions=True)
