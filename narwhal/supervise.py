"""Background loops that never die silently.

Each daemon runs a few loops for its whole life: the dispatcher's receive,
liveness, monitor, schedule, checkpoint and orphan-expiry loops, the
runner's receive and heartbeat loops, discovery's reconcile loop, the
status reporter's workers. A task made with ``asyncio.create_task`` whose
coroutine raises just ends: asyncio reports it, if ever, when the task is
garbage-collected, and the daemon goes on without the loop (a dead liveness
loop means no heartbeats and lost runners never noticed).

``supervise(name, loop)`` runs ``loop()``; if it raises anything but
``CancelledError``, the exception is logged with its traceback and the loop
starts again after a short back-off. ``CancelledError`` always propagates:
it is how shutdown stops a loop. A loop that returns is done (one-shot
tasks such as orphan expiry return once their work is over).

Repeated crashes: keep restarting, with the back-off doubling from
``BACKOFF`` up to ``MAX_BACKOFF`` while the loop keeps failing (it resets
once a run lasted ``STEADY`` seconds). Exiting non-zero for a supervisor to
restart the process was the alternative; it was not chosen because:

- a crash that repeats is most likely set off by what a peer keeps sending
  (a frame, an announcement, a forge's answer); exiting would let any peer
  that can reach the mesh stop every job of the installation, a restart
  would not help (the peer sends it again), and while the loop waits out
  its back-off the daemon's other work (the API, other runners, running
  steps) goes on;
- ``narwhal up`` usually runs with no supervisor at all: an exit would
  stop the CI until someone notices;
- nothing is lost by waiting: every loop's work is idempotent or kept
  until done (frames are resent until acknowledged, jobs requeued from the
  store).

Each crash is logged at ERROR with its traceback, at most once per back-off
(so at most every ``MAX_BACKOFF`` seconds per loop when it fails each time).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

#: Seconds before the first restart of a crashed loop.
BACKOFF = 0.1
#: The longest wait between restarts of a loop that keeps crashing.
MAX_BACKOFF = 5.0
#: A run at least this long resets the back-off (the crash was not a loop).
STEADY = 30.0


async def supervise(
    name: str,
    loop: Callable[[], Awaitable[None]],
    *,
    backoff: float = BACKOFF,
    max_backoff: float = MAX_BACKOFF,
) -> None:
    """Run ``loop()``; restart it after an unexpected exception, logged with its traceback."""
    delay = backoff
    while True:
        started = time.monotonic()
        try:
            await loop()
        except Exception:  # CancelledError is a BaseException: it propagates
            if time.monotonic() - started >= STEADY:
                delay = backoff
            log.exception("%s crashed; restarting it in %.1f s", name, delay)
        else:
            return
        await asyncio.sleep(delay)
        delay = min(delay * 2, max_backoff)


def spawn(
    tasks: set[asyncio.Task[None]], name: str, loop: Callable[[], Awaitable[None]]
) -> asyncio.Task[None]:
    """Start ``supervise(name, loop)`` as a task kept in ``tasks`` until it ends."""
    task = asyncio.create_task(supervise(name, loop), name=name)
    tasks.add(task)
    task.add_done_callback(tasks.discard)
    return task
