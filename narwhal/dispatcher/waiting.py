"""Why a queued job waits, in its reason: no runner offers its labels, or no slot is free.

Without it a job whose labels no runner offers said only ``submitted``,
forever. The dispatcher looks about once a second (``Dispatcher``'s explain
loop), not every scheduling round: one pass over the queue with one verdict
per label set, and a store write only for the jobs whose reason changed.
Not even the pass when neither the queue nor the runners changed since the
last look (``Explainer``): a queue of 100 000 jobs costs ~35 ms a pass.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from narwhal.dispatcher.mesh import LinkState, Peer
from narwhal.dispatcher.placement import REASONS, Placement, Waiting
from narwhal.dispatcher.records import JobRecord
from narwhal.dispatcher.signals import Signals

#: Seconds between two looks at the queue.
EXPLAIN_INTERVAL = 1.0

NO_RUNNER = "waiting: no runner connected"
NO_SLOT = "waiting for a free slot"
#: Followed by the labels no ready runner offers.
NO_LABEL = "waiting: no runner offers"


def why_waiting(ready: Sequence[Peer], labels: Mapping[str, str]) -> str:
    """The reason a job with ``labels`` waits, or "" if a matching runner has a free slot."""
    if not ready:
        return NO_RUNNER
    serving = [peer for peer in ready if peer.serves(labels)]
    if not serving:
        wanted = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        return f"{NO_LABEL} {wanted}"
    if not any(peer.free for peer in serving):
        return NO_SLOT
    return ""  # the next scheduling round takes it


def changed_reasons(
    queue: Iterable[JobRecord], peers: Iterable[Peer]
) -> list[tuple[int, int, str]]:
    """``(job id, attempt, reason)`` for each queued job whose waiting reason is new."""
    ready = [peer for peer in peers if peer.state == LinkState.READY]
    verdicts: dict[frozenset[tuple[str, str]], str] = {}
    changed = []
    for job in queue:
        key = frozenset(job.labels.items())
        why = verdicts.get(key)
        if why is None:
            why = verdicts[key] = why_waiting(ready, job.labels)
        if why and why != job.reason:
            changed.append((job.id, job.attempt, why))
    return changed


@dataclass(frozen=True, slots=True)
class Pending:
    """Why one queued job waits, where it stands, and when it should start."""

    #: One of ``placement.REASONS``.
    reason: str
    text: str
    #: Its place in the queue's order (1: next).
    position: int
    #: Seconds until it is expected to start, from recent durations; None: not known.
    eta: float | None

    def to_json(self) -> dict[str, Any]:
        return {
            "reason": self.reason,
            "text": self.text,
            "position": self.position,
            "eta": self.eta,
        }


class Explainer:
    """Each queued job's ``Pending``, looked at about once a second.

    A scheduling round's verdict for a job (``saw``) wins; a job no round
    looked at (the round ran out of slots first) is explained by the
    placement's filters alone (``Placement.explain``).
    """

    def __init__(self, placement: Placement, signals: Signals) -> None:
        self._placement = placement
        self._signals = signals
        self._seen: dict[int, Waiting] = {}
        self._pending: dict[int, Pending] = {}

    def saw(self, job: JobRecord, waiting: Waiting) -> None:
        """A scheduling round's verdict for ``job``."""
        self._seen[job.id] = waiting

    def look(
        self, queue: Mapping[int, JobRecord], walk: Iterable[JobRecord], peers: Sequence[Peer]
    ) -> list[tuple[int, int, str]]:
        """Explain every queued job (``walk``: the queue in order); ``(job id,
        attempt, text)`` for each whose text is new (for its stored reason)."""
        pending: dict[int, Pending] = {}
        changed = []
        ready = [peer for peer in peers if peer.state == LinkState.READY]
        for position, job in enumerate(walk, 1):
            waiting = self._seen.get(job.id) or self._placement.explain(job, peers)
            if waiting is None:
                why = why_waiting(ready, job.labels)
                if not why:
                    continue
                waiting = Waiting("full", why)
            pending[job.id] = Pending(waiting.reason, waiting.text, position, None)
            if waiting.text != job.reason:
                changed.append((job.id, job.attempt, waiting.text))
        self._pending = pending
        self._seen = {}
        return changed

    def pending(self, job_id: int) -> Pending | None:
        return self._pending.get(job_id)

    def counts(self) -> dict[str, int]:
        """Queued jobs by the reason they wait (every reason, 0 included)."""
        counts = dict.fromkeys(REASONS, 0)
        for item in self._pending.values():
            counts[item.reason] = counts.get(item.reason, 0) + 1
        return counts
