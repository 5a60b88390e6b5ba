"""Runner and queue events for the ``Feed``: joins and losses as they happen,
load and queue depth by comparison, about twice a second.

A scheduling round reserves and releases slots thousands of times a second
at full load; an event for each would cost more than the change is worth to
anyone watching. So the mesh's callbacks report joins and losses at once,
and ``look`` compares each runner's load (state, free slots, jobs held) and
the queue (depth, running count, oldest job and its reason) with what it
last reported, and publishes only what differs.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from narwhal.dispatcher.feed import Feed, QueueDepth, RunnerChanged, RunnerLeft
from narwhal.dispatcher.jobs import JobTable
from narwhal.dispatcher.mesh import Peer

#: Seconds between two looks at the runners' load and the queue.
GAUGE_INTERVAL = 0.5


def _load(peer: Peer) -> tuple[Any, ...]:
    return (peer.state, peer.runner_id, peer.capacity, peer.free, len(peer.held))


class Gauges:
    """What the feed last heard of each runner and of the queue."""

    def __init__(self, feed: Feed, jobs: JobTable) -> None:
        self._feed = feed
        self._jobs = jobs
        self._runners: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = {}
        self._queue: tuple[Any, ...] = ()

    def joined(self, peer: Peer) -> None:
        view = peer.to_json()
        self._runners[peer.endpoint] = (_load(peer), view)
        self._feed.publish(RunnerChanged(view, joined=True))

    def left(self, peer: Peer, reason: str) -> None:
        self._runners.pop(peer.endpoint, None)
        self._feed.publish(RunnerLeft(peer.to_json(), reason))

    def look(self, peers: Iterable[Peer]) -> None:
        """Publish the runners whose load changed, those gone, and the queue if it changed."""
        seen = set()
        for peer in peers:
            seen.add(peer.endpoint)
            load = _load(peer)
            known = self._runners.get(peer.endpoint)
            if known is None or known[0] != load:
                view = peer.to_json()
                self._runners[peer.endpoint] = (load, view)
                self._feed.publish(RunnerChanged(view, joined=False))
        for endpoint in [e for e in self._runners if e not in seen]:
            _, view = self._runners.pop(endpoint)
            self._feed.publish(RunnerLeft(view, "no longer connected"))
        self._look_at_queue()

    def _look_at_queue(self) -> None:
        queue, active = self._jobs.queue, self._jobs.active
        oldest = next(iter(queue.values()), None)
        shape = (len(queue), len(active), oldest)
        if shape != self._queue:
            self._queue = shape
            self._feed.publish(QueueDepth(len(queue), len(active), oldest))
