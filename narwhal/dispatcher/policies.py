"""What the placement policies share (slots, memory, rankings, explain), and the two
that weigh load alone: ``spread`` and ``pack`` (``placement`` describes them all).

A round ranks the runners that can take a kind of job (label set, needs) in
a heap by the policy's score, built once per set of runners and memory
need; taking a slot bumps the runner's version. Where a slot taken only
makes a runner's score worse (spread, affinity) a stale entry is scored
anew when it comes to the top (it was better than the truth, so the top,
once fresh, is the best runner now); where it makes it better (pack) the
runner is pushed anew into each heap it is in. A job costs O(log runners).
"""

from __future__ import annotations

import heapq
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

from narwhal.dispatcher.fleet import (
    FULL,
    NO_RUNNER_TEXT,
    QUARANTINED,
    REASONS,
    RESOURCES,
    Failure,
    Fleet,
    Key,
    Known,
    Placed,
    Sorting,
    Verdict,
    Waiting,
    key_of,
)
from narwhal.dispatcher.mesh import Peer
from narwhal.dispatcher.records import JobRecord
from narwhal.dispatcher.signals import Signals

NO_RUNNER = Waiting(REASONS[0], NO_RUNNER_TEXT)


def explained(fleet: Fleet, key: Key) -> Waiting | None:
    """Why a job of ``key`` waits by the filters alone; None: a runner can take it now."""
    if not fleet.runners:
        return NO_RUNNER
    sorting = fleet.sort(key)
    if any(fleet.runners[i].free for i in sorting.passing):
        return None
    reason, text = fleet.why(sorting, key, [Failure(FULL, i, has=0) for i in sorting.passing])
    return Waiting(reason, text)


class Policy:
    """What every policy shares: the signals, the random ties, the clock, explain."""

    def __init__(
        self,
        signals: Signals | None = None,
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.signals = signals or Signals()
        self.rng = rng or random.Random()
        self.clock = clock
        #: What rounds read from runners' reports (``fleet.Known``).
        self.known: Known = {}
        #: The last explain pass: its ``peers``, their fleet, verdicts per kind.
        self._explained: tuple[Sequence[Peer], Fleet, dict[Key, Waiting | None]] | None = None

    def round(self, peers: Sequence[Peer]) -> BaseRound:
        """A round over ``peers`` (``placement.Placement``)."""
        raise NotImplementedError

    def explain(self, job: JobRecord, peers: Sequence[Peer]) -> Waiting | None:
        """One pass is the calls with one ``peers`` sequence (``Mesh.peers()`` gives
        a new one each time): verdicts are kept per (label set, needs) within it."""
        last = self._explained
        if last is None or last[0] is not peers:
            now = self.clock()
            last = self._explained = (peers, Fleet(peers, self.signals.health, now), {})
        _, fleet, verdicts = last
        key = key_of(job)
        if key not in verdicts:
            verdicts[key] = explained(fleet, key)
        return verdicts[key]


class Ranking:
    """Runners in a heap by a score, kept exact as slots are taken: an entry
    carries its runner's version, and a runner taken from is pushed anew."""

    __slots__ = ("heap", "score")

    def __init__(self, score: Callable[[int], tuple[float, ...]]) -> None:
        self.score = score
        self.heap: list[tuple[float, ...]] = []


@dataclass(slots=True)
class Kind:
    """One kind of job (label set, needs) in one round."""

    key: Key
    sorting: Sorting
    #: The policy's ranking of its runners (made when first needed).
    ranking: Ranking | None = None
    #: Once no runner can take it, the verdict for the rest of the round.
    final: Waiting | None = None


class BaseRound:
    """One round's slots, memory and rankings; the policies say how to choose."""

    #: A slot taken makes a runner's score better (its rankings are pushed anew).
    _eager: ClassVar[bool] = False

    def __init__(self, policy: Policy, peers: Sequence[Peer]) -> None:
        self._policy = policy
        self._now = policy.clock()
        self._fleet = Fleet(peers, policy.signals.health, self._now, policy.known)
        runners = self._fleet.runners
        #: Slots each runner has left this round (0 if a filter of its own excludes it).
        self._free = [0 if r.judge(i, (), None, None) else r.free for i, r in enumerate(runners)]
        self._left = sum(self._free)
        self._memory = [r.memory for r in runners]
        #: Jobs under way on each runner, this round's included, and on all.
        self._running = [len(r.peer.held) for r in runners]
        self._total = sum(self._running)
        self._version = [0] * len(runners)
        self._tie = [policy.rng.random() for _ in runners]
        self._rankings: list[list[Ranking]] = [[] for _ in runners]
        #: Rankings shared by kinds with the same runners and memory need.
        self._shared: dict[tuple[tuple[int, ...], int | None], Ranking] = {}
        #: Runners that turned to probation's one job this round.
        self._probing: set[int] = set()
        self._kinds: dict[Key, Kind] = {}

    def __bool__(self) -> bool:
        return self._left > 0

    def retry_at(self) -> float | None:
        return None

    def take(self, job: JobRecord) -> Verdict:
        if not self._fleet.runners:
            return NO_RUNNER
        key = key_of(job)
        kind = self._kinds.get(key)
        if kind is None:
            sorting = self._fleet.sort(key)
            kind = self._kinds[key] = Kind(key, sorting)
        if kind.final is not None:
            return kind.final
        return self._choose(job, kind)

    def _choose(self, job: JobRecord, kind: Kind) -> Verdict:
        """The policy's choice among ``kind``'s runners (``_place`` it) or why it waits."""
        raise NotImplementedError

    def _score(self, i: int) -> tuple[float, ...]:
        """Runner ``i``'s rank for the policy (lowest first), as the round stands."""
        raise NotImplementedError

    def _rank(self, members: Sequence[int], score: Callable[[int], tuple[float, ...]]) -> Ranking:
        ranking = Ranking(score)
        version, free = self._version, self._free
        ranking.heap = [(*score(i), version[i], i) for i in members if free[i]]
        heapq.heapify(ranking.heap)
        if self._eager:
            for i in members:
                self._rankings[i].append(ranking)
        return ranking

    def _ranked(self, kind: Kind) -> Ranking:
        """The policy's ranking of ``kind``'s runners (one per set of runners and memory need)."""
        if kind.ranking is None:
            key = (tuple(kind.sorting.passing), kind.key[2])
            ranking = self._shared.get(key)
            if ranking is None:
                ranking = self._shared[key] = self._rank(kind.sorting.passing, self._score)
            kind.ranking = ranking
        return kind.ranking

    def _top(self, ranking: Ranking, memory: int | None) -> int | None:
        """The best runner of ``ranking`` that can take a job needing ``memory`` now."""
        heap, version, free, left = ranking.heap, self._version, self._free, self._memory
        while heap:
            entry = heap[0]
            i = int(entry[-1])
            memory_left = left[i]
            if not free[i]:
                heapq.heappop(heap)
            elif entry[-2] != version[i]:
                if self._eager:  # pushed anew when taken from
                    heapq.heappop(heap)
                else:
                    heapq.heapreplace(heap, (*ranking.score(i), version[i], i))
            elif memory and memory_left is not None and memory_left < memory:
                # For good: memory only goes within a round, and a ranking is one need's.
                heapq.heappop(heap)
            else:
                return i
        return None

    def _place(self, i: int, job: JobRecord) -> None:
        """Count ``job``'s slot (and memory) on runner ``i`` taken."""
        runner = self._fleet.runners[i]
        self._free[i] -= 1
        self._left -= 1
        left = self._memory[i]
        if job.memory and left is not None:
            self._memory[i] = left - job.memory
        self._running[i] += 1
        self._total += 1
        self._version[i] += 1
        health = self._policy.signals.health
        health.took(runner.name, self._now)
        if health.blocked(runner.name, self._now) is not None:  # its probe: nothing more
            self._left -= self._free[i]
            self._free[i] = 0
            self._probing.add(i)
        if self._free[i] and self._eager:
            for ranking in self._rankings[i]:
                heapq.heappush(ranking.heap, (*ranking.score(i), self._version[i], i))

    def _exhausted(self, job: JobRecord, kind: Kind) -> Waiting:
        """No runner can take this kind of job for the rest of the round: why."""
        more = []
        health = self._policy.signals.health
        for i in kind.sorting.passing:
            runner = self._fleet.runners[i]
            left = self._memory[i]
            if i in self._probing:
                why = health.blocked(runner.name, self._now) or "on probation"
                more.append(Failure(QUARANTINED, i, why))
            elif not self._free[i]:
                more.append(Failure(FULL, i, has=0))
            elif job.memory and left is not None:
                more.append(Failure(RESOURCES, i, "memory", left, job.memory))
        reason, text = self._fleet.why(kind.sorting, kind.key, more)
        kind.final = Waiting(reason, text)
        return kind.final

    def _slots(self, i: int) -> str:
        """``1/4 slots, load 0.3`` (slots taken before this job; load per CPU)."""
        runner = self._fleet.runners[i]
        used = f"{runner.capacity - self._free[i]}/{runner.capacity} slots"
        return used if runner.peer.report is None else f"{used}, load {runner.load:.1f}"

    def _placed(self, job: JobRecord, i: int, words: str) -> Placed:
        runner = self._fleet.runners[i]
        self._place(i, job)
        return Placed(runner.peer, f"placed on {runner.name}: {words}")


class Spread(Policy):
    """The runner with the most free-slot fraction, then the least load per CPU."""

    name: ClassVar[str] = "spread"

    def round(self, peers: Sequence[Peer]) -> BaseRound:
        return _SpreadRound(self, peers)


class _SpreadRound(BaseRound):
    def _score(self, i: int) -> tuple[float, ...]:
        runner = self._fleet.runners[i]
        return (-self._free[i] / (runner.capacity or 1), runner.load, self._tie[i])

    def _choose(self, job: JobRecord, kind: Kind) -> Verdict:
        i = self._top(self._ranked(kind), job.memory)
        if i is None:
            return self._exhausted(job, kind)
        return self._placed(job, i, f"least loaded ({self._slots(i)})")


class Pack(Policy):
    """The fullest runner that still has a slot, to keep the others idle."""

    name: ClassVar[str] = "pack"

    def round(self, peers: Sequence[Peer]) -> BaseRound:
        return _PackRound(self, peers)


class _PackRound(BaseRound):
    _eager = True

    def _score(self, i: int) -> tuple[float, ...]:
        runner = self._fleet.runners[i]
        return (self._free[i] / (runner.capacity or 1), -runner.load, self._tie[i])

    def _choose(self, job: JobRecord, kind: Kind) -> Verdict:
        i = self._top(self._ranked(kind), job.memory)
        if i is None:
            return self._exhausted(job, kind)
        return self._placed(job, i, f"fullest that fits ({self._slots(i)})")
