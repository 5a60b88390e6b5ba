"""Which runner takes a job: the placement policy, behind a protocol of two methods.

The dispatcher asks ``Placement.round`` once per scheduling round, with the
runners the mesh offers, then ``Round.take`` once per queued job until the
round has no slot left. A policy sees the whole job (its repository, labels,
matrix, attempt), not only its labels, so affinity ("the runner that built
this repository last"), spread or pack policies are one class each here,
with no change to the pool or the dispatcher. A round counts only the slots
it handed out; the dispatcher reserves each one on the mesh.

``MostFree`` is the default and the only policy today.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from narwhal.config import PLACEMENTS
from narwhal.dispatcher.mesh import Peer
from narwhal.dispatcher.records import JobRecord
from narwhal.dispatcher.signals import Signals
from narwhal.errors import ConfigError

#: Why a job waits: the ``reason`` of a ``Waiting`` (the label of the pending
#: jobs metric), the first that applies to every runner in this order.
REASONS = (
    "no_runner",  # no runner is connected and ready
    "label",  # no runner offers one of its labels
    "platform",  # no runner offers its os= or arch=
    "resources",  # no runner has the CPUs or memory its resources: ask for
    "disk",  # every runner that could take it is short of disk
    "quarantined",  # the runners that could take it are quarantined
    "full",  # the runners that could take it have no free slot
    "held",  # held for a busy runner with its repository warm (bounded)
)
#: The policies ``--placement`` names (the first the default): ``config``'s.
POLICIES = PLACEMENTS


@dataclass(frozen=True, slots=True)
class Placed:
    """The job goes to ``peer``; ``text`` says why, in words (recorded as the
    assignment's reason): ``placed on runner-b: mirror warm, 3 commits behind;
    2 others cold``."""

    peer: Peer
    text: str


@dataclass(frozen=True, slots=True)
class Waiting:
    """The job waits this round: ``reason`` one of ``REASONS``, ``text`` in words,
    runner by runner: ``waiting: 0 of 3 runners can take it: 2 full (4/4, 2/2
    slots), 1 lacks label gpu=yes``."""

    reason: str
    text: str


Verdict = Placed | Waiting


class Round(Protocol):
    """The free slots of one scheduling round, and which runner takes each job."""

    def __bool__(self) -> bool:
        """Whether a slot is left this round (if not, the rest of the queue is not looked at)."""
        ...

    def take(self, job: JobRecord) -> Verdict:
        """Place ``job`` (count the slot taken) or say why it waits."""
        ...

    def retry_at(self) -> float | None:
        """When (``time.monotonic``) a job this round held for a busy warm runner
        stops waiting for it: the dispatcher schedules again then. None: no such job."""
        ...


class Placement(Protocol):
    """A placement policy: one ``Round`` per scheduling round."""

    def round(self, peers: Sequence[Peer]) -> Round:
        """A round over ``peers`` (every link, in connection order; not only ready ones)."""
        ...

    def explain(self, job: JobRecord, peers: Sequence[Peer]) -> Waiting | None:
        """Why ``job`` waits, for a job no round looked at (filters only, no slot
        taken); None if a runner could take it now."""
        ...


class MostFree:
    """A job goes to the matching runner with the most free slots (ties: the first connected)."""

    def round(self, peers: Sequence[Peer]) -> MostFreeRound:
        return MostFreeRound(peers)

    def explain(self, job: JobRecord, peers: Sequence[Peer]) -> Waiting | None:
        return None


class MostFreeRound:
    """One round of ``MostFree``.

    Runners are ranked once per round in a heap per label set, so a round
    costs O(runners) plus O(log runners) per job, not a scan of every runner
    per job (which made 500 runners three times slower than 50).
    """

    def __init__(self, peers: Sequence[Peer]) -> None:
        #: Ready runners with free slots, in connection order, and the free
        #: slots each has left this round (by the same index).
        self._peers = [peer for peer in peers if peer.free]
        self._free = [peer.free for peer in self._peers]
        self._left = sum(self._free)
        #: Per label set: a heap of (-free slots, index), possibly stale.
        self._ranked: dict[frozenset[tuple[str, str]], list[tuple[int, int]]] = {}

    def __bool__(self) -> bool:
        return self._left > 0

    def retry_at(self) -> float | None:
        return None

    def take(self, job: JobRecord) -> Verdict:
        peer = self._take(job)
        if peer is None:
            return Waiting("full", "waiting for a free slot")
        return Placed(peer, f"placed on {peer.runner_id}: most free slots")

    def _take(self, job: JobRecord) -> Peer | None:
        labels = job.labels
        key = frozenset(labels.items())
        heap = self._ranked.get(key)
        if heap is None:
            heap = [(-self._free[i], i) for i, k in enumerate(self._peers) if k.serves(labels)]
            heapq.heapify(heap)
            self._ranked[key] = heap
        while heap:
            ranked, i = heap[0]
            free = self._free[i]
            if free != -ranked:  # taken from through another label set's heap
                if free:
                    heapq.heapreplace(heap, (-free, i))
                else:
                    heapq.heappop(heap)
                continue
            self._free[i] = free - 1
            self._left -= 1
            if free > 1:
                heapq.heapreplace(heap, (1 - free, i))
            else:
                heapq.heappop(heap)
            return self._peers[i]
        return None


def policy(name: str, signals: Signals) -> Placement:
    """The policy ``--placement`` names (``POLICIES``), weighing ``signals``."""
    if name not in POLICIES:
        raise ConfigError(f"placement must be one of {', '.join(POLICIES)}, got {name!r}")
    return MostFree()
