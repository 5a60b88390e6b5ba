"""Why a queued job waits, in its reason: no runner offers its labels, or no slot is free.

Without it a job whose labels no runner offers said only ``submitted``,
forever. The dispatcher looks about once a second (``Dispatcher``'s explain
loop), not every scheduling round: one pass over the queue with one verdict
per label set, and a store write only for the jobs whose reason changed.
Not even the pass when neither the queue nor the runners changed since the
last look (``Explainer``): a queue of 100 000 jobs costs ~35 ms a pass.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence

from narwhal.dispatcher.mesh import LinkState, Peer
from narwhal.dispatcher.records import JobRecord

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


class Explainer:
    """``changed_reasons``, skipped while nothing it depends on has changed."""

    def __init__(self) -> None:
        self._seen: Hashable = None

    def look(
        self, queue: dict[int, JobRecord], peers: Iterable[Peer]
    ) -> list[tuple[int, int, str]]:
        peers = list(peers)
        # Jobs join the queue at its end (new or requeued, then with a new
        # attempt): its length and last entry tell whether it changed.
        last = queue[next(reversed(queue))] if queue else None
        seen = (
            len(queue),
            (last.id, last.attempt) if last is not None else None,
            tuple((k.endpoint, k.state, k.free, tuple(k.labels.items())) for k in peers),
        )
        if seen == self._seen:
            return []
        self._seen = seen
        return changed_reasons(queue.values(), peers)
