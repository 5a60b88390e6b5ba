"""Why a queued job waits, where it stands in the queue, and when it should start.

A scheduling round says why each job it looked at waits (``Explainer.saw``);
every job no round looked at (the round ran out of slots first) is
explained by the placement's filters alone (``Placement.explain``). The
dispatcher looks about once a second (``Dispatcher``'s explain loop), not
every round: one pass over the queue in order with one verdict per kind
of job (label set, needs), and a store write only for the jobs whose text
changed. Not even the pass when neither the queue nor the runners changed
since the last look and no round said anything new.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from narwhal.dispatcher.fleet import Fleet, Key, key_of
from narwhal.dispatcher.mesh import Peer
from narwhal.dispatcher.placement import REASONS, Placement, Waiting
from narwhal.dispatcher.records import JobRecord
from narwhal.dispatcher.signals import Signals

#: Seconds between two looks at the queue.
EXPLAIN_INTERVAL = 1.0


@dataclass(frozen=True, slots=True)
class Pending:
    """Why one queued job waits, where it stands, and when it should start."""

    #: One of ``placement.REASONS``.
    reason: str
    text: str
    #: Its place in the queue's order (1: next).
    position: int
    #: Seconds until it is expected to start, an estimate (``Explainer``); None: not known.
    eta: float | None

    def to_json(self) -> dict[str, Any]:
        return {
            "reason": self.reason,
            "text": self.text,
            "position": self.position,
            "eta": self.eta,
        }


class _Competition:
    """Per pass: the jobs seen so far that compete for the runners each kind of job can use.

    Kinds whose runners (those that could take them once free and healthy)
    overlap compete; the count is kept per set of runners, and a job's
    competitors ahead are the counts of the sets that overlap its own.
    """

    def __init__(self, fleet: Fleet) -> None:
        self._fleet = fleet
        #: Per kind: its set's index and the slots of its runners.
        self._kinds: dict[Key, tuple[int, int]] = {}
        self._sets: dict[frozenset[int], int] = {}
        self._overlaps: list[list[int]] = []
        self._counts: list[int] = []

    def ahead(self, key: Key) -> tuple[int, int]:
        """(jobs seen so far competing with this one, slots that can take it); counts it."""
        kind = self._kinds.get(key)
        if kind is None:
            kind = self._kinds[key] = self._kind(key)
        group, slots = kind
        counts = self._counts
        ahead = sum(counts[g] for g in self._overlaps[group])
        counts[group] += 1
        return ahead, slots

    def _kind(self, key: Key) -> tuple[int, int]:
        capable = frozenset(self._fleet.sort(key).capable)
        slots = sum(self._fleet.runners[i].capacity for i in capable)
        group = self._sets.get(capable)
        if group is None:
            group = self._sets[capable] = len(self._counts)
            self._counts.append(0)
            self._overlaps.append([group] if capable else [])
            for other, h in self._sets.items():
                if h != group and other & capable:
                    self._overlaps[group].append(h)
                    self._overlaps[h].append(group)
        return group, slots


class Explainer:
    """Each queued job's ``Pending``, looked at about once a second.

    A scheduling round's verdict for a job (``saw``) wins; a job no round
    looked at is explained by the placement's filters alone. The pass is
    skipped while nothing it depends on changed: the queue's length and
    last entry, and each runner's state, free slots, labels, report and
    health (and no round said anything since); then only the texts the
    last pass gave that the jobs do not carry yet are given again.

    ``eta`` is an estimate: the jobs ahead of it in the queue's order that
    compete for the same runners, divided by the slots of the runners that
    could take it (once free and healthy), plus one, times the typical
    duration of its repository's jobs (``Signals.typical``):
    ``(ahead // slots + 1) * typical``. It does not know how long the
    running jobs have left, nor what arrives meanwhile. None when no
    connected runner could ever take it, or no duration is known yet.
    """

    def __init__(
        self,
        placement: Placement,
        signals: Signals,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._placement = placement
        self._signals = signals
        self._clock = clock
        self._seen: dict[int, tuple[int, Waiting]] = {}
        self._pending: dict[int, Pending] = {}
        self._mark: tuple[Any, ...] | None = None
        self._changed: list[tuple[int, int, str]] = []

    def saw(self, job: JobRecord, waiting: Waiting) -> None:
        """A scheduling round's verdict for ``job``."""
        self._seen[job.id] = (job.attempt, waiting)

    def look(
        self, queue: Mapping[int, JobRecord], walk: Iterable[JobRecord], peers: Sequence[Peer]
    ) -> list[tuple[int, int, str]]:
        """Explain every queued job (``walk``: the queue in order); ``(job id,
        attempt, text)`` for each whose text is new (for its stored reason)."""
        now = self._clock()
        mark = self._marked(queue, peers, now)
        if mark == self._mark and not self._seen:
            return self._unsaid(queue)
        self._mark = mark
        seen, self._seen = self._seen, {}
        competition = _Competition(Fleet(peers, self._signals.health, now))
        verdicts: dict[Key, Waiting | None] = {}
        typical: dict[str, float | None] = {}
        pending: dict[int, Pending] = {}
        changed = []
        for position, job in enumerate(walk, 1):
            key = key_of(job)
            ahead, slots = competition.ahead(key)
            said = seen.get(job.id)
            waiting = said[1] if said is not None and said[0] == job.attempt else None
            if waiting is None:
                if key not in verdicts:
                    verdicts[key] = self._placement.explain(job, peers)
                waiting = verdicts[key]
                if waiting is None:
                    continue  # a runner can take it: the next round will
            if job.repo not in typical:
                typical[job.repo] = self._signals.typical(job.repo)
            took = typical[job.repo]
            eta = None if took is None or not slots else round((ahead // slots + 1) * took, 1)
            pending[job.id] = Pending(waiting.reason, waiting.text, position, eta)
            if waiting.text != job.reason:
                changed.append((job.id, job.attempt, waiting.text))
        self._pending = pending
        self._changed = changed
        return changed

    def _unsaid(self, queue: Mapping[int, JobRecord]) -> list[tuple[int, int, str]]:
        """The last pass's new texts that did not reach the jobs (the store refused them)."""
        unsaid = []
        for job_id, attempt, text in self._changed:
            job = queue.get(job_id)
            if job is not None and job.attempt == attempt and job.reason != text:
                unsaid.append((job_id, attempt, text))
        self._changed = unsaid
        return unsaid

    def _marked(
        self, queue: Mapping[int, JobRecord], peers: Sequence[Peer], now: float
    ) -> tuple[Any, ...]:
        """What a pass depends on, to compare with the last one's."""
        last = next(reversed(queue.values()), None) if isinstance(queue, dict) else None
        health = self._signals.health
        return (
            len(queue),
            None if last is None else (last.id, last.attempt),
            tuple(
                (
                    id(peer),
                    peer.state,
                    peer.free,
                    tuple(peer.labels.items()),
                    peer.report,
                    health.blocked(peer.runner_id or peer.endpoint, now),
                )
                for peer in peers
            ),
        )

    def pending(self, job_id: int) -> Pending | None:
        return self._pending.get(job_id)

    def counts(self) -> dict[str, int]:
        """Queued jobs by the reason they wait (every reason, 0 included)."""
        counts = dict.fromkeys(REASONS, 0)
        for item in self._pending.values():
            counts[item.reason] = counts.get(item.reason, 0) + 1
        return counts
