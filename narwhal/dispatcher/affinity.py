"""The ``affinity`` policy: the runner with the job's repository warm, within a
share cap, with a bounded wait for a busy warm runner (``placement`` describes it).
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import random
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

from narwhal.dispatcher.fleet import HELD, REASONS, Key, Placed, Runner, Verdict, Waiting
from narwhal.dispatcher.mesh import Peer
from narwhal.dispatcher.policies import BaseRound, Kind, Policy, Ranking
from narwhal.dispatcher.records import JobRecord
from narwhal.dispatcher.signals import Signals
from narwhal.mesh import protocol as p

#: The largest share of the jobs under way one runner takes while others can.
SHARE = 0.4
#: Placements the bounded wait looks back on for a runner's share.
WINDOW = 20
#: A job may wait for one of the best this many full warm runners.
HOLD_FOR_BEST = 3
#: How far behind a warm mirror of unknown distance is taken to be.
UNKNOWN_BEHIND = 50
#: Jobs held for a warm runner are forgotten this long after they were first
#: held (or when more are held), if no round placed them meanwhile.
HELD_FOR = 3600.0
MAX_HELD = 100_000
#: Runners, and jobs per runner, whose placements are remembered.
MAX_RUNNERS = 4096
MAX_PLACEMENTS = 1024


class Affinity(Policy):
    """Warm mirrors first, within a share cap, with a bounded wait."""

    name: ClassVar[str] = "affinity"

    def __init__(
        self,
        signals: Signals | None = None,
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(signals, rng=rng, clock=clock)
        #: Jobs (id, attempt) held for a warm runner: when first held (monotonic), and for whom.
        self.held: dict[tuple[int, int], tuple[float, str]] = {}
        #: The runners of the last ``WINDOW`` placements, and how many each took.
        self.recent: deque[str] = deque(maxlen=WINDOW)
        self.taken: Counter[str] = Counter()
        #: Per runner, the jobs placed there (id, attempt): their repository and
        #: commit. While one is under way its repository is warming there.
        self.placements: dict[str, dict[tuple[int, int], tuple[str, str | None]]] = {}
        self._mirrors: dict[int, tuple[p.RunnerState, dict[str, p.WarmRepo]]] = {}

    def mirrors(self, report: p.RunnerState | None) -> dict[str, p.WarmRepo]:
        """A report's mirror cache by repository (kept per report: reports change seldom)."""
        if report is None or not report.mirrors:
            return {}
        known = self._mirrors.get(id(report))
        if known is None or known[0] is not report:
            if len(self._mirrors) >= 4 * MAX_RUNNERS:  # reports replaced: the old ones go
                self._mirrors.clear()
            known = self._mirrors[id(report)] = (report, {m.repo: m for m in report.mirrors})
        return known[1]

    def round(self, peers: Sequence[Peer]) -> AffinityRound:
        self._forget(self.clock())
        return AffinityRound(self, peers)

    def _forget(self, now: float) -> None:
        """Jobs held long ago (cancelled meanwhile, most likely) are forgotten."""
        held = self.held
        while held and (len(held) > MAX_HELD or next(iter(held.values()))[0] < now - HELD_FOR):
            del held[next(iter(held))]

    def placed(self, job: JobRecord, runner: str) -> None:
        self.held.pop((job.id, job.attempt), None)
        there = self.placements.get(runner)
        if there is None:
            if len(self.placements) >= MAX_RUNNERS:
                del self.placements[next(iter(self.placements))]
            there = self.placements[runner] = {}
        if len(there) >= MAX_PLACEMENTS:
            del there[next(iter(there))]
        there[(job.id, job.attempt)] = (job.repo, job.sha)
        if len(self.recent) == WINDOW:
            gone = self.recent[0]
            self.taken[gone] -= 1
            if not self.taken[gone]:
                del self.taken[gone]
        self.recent.append(runner)
        self.taken[runner] += 1


@dataclass(slots=True)
class _Warm:
    """The runners that can take one kind of job with its repository warm, for one commit."""

    #: Runner index -> commits behind (None: not known).
    behind: dict[int, int | None]
    #: Those whose mirror is warming: a job of the repository is under way
    #: there (its runner clones or fetches it; the next job waits for that).
    warming: set[int]
    #: Runner index -> its rank (commits behind, ``UNKNOWN_BEHIND`` if not known).
    rank: dict[int, float]
    #: The same runners, the fewest commits behind first.
    order: list[int]
    ranking: Ranking
    #: The commit the jobs want, and the runners that can take them.
    sha: str | None
    passes: frozenset[int]


@dataclass(slots=True)
class _Repo:
    """One repository in one round."""

    #: (runner index, the commit its mirror is at, whether it is only warming).
    runners: list[tuple[int, str | None, bool]]
    #: Bytes its mirror takes, as reports say (0: none has it).
    size: int


def _warmth(warm: _Warm, i: int) -> str:
    behind = warm.behind[i]
    if i in warm.warming:
        return "mirror warming: a job of it is under way there"
    if behind is None:
        return "mirror warm, how far behind is not known"
    if behind == 0:
        return "mirror warm, up to date"
    return f"mirror warm, {behind} commit{'s' if behind != 1 else ''} behind"


def _others(warm: int, cold: int) -> str:
    """``2 others cold``, ``1 other warm, 2 cold``."""
    parts = []
    if warm:
        parts.append(f"{warm} other{'s' if warm != 1 else ''} warm")
    if cold:
        parts.append(f"{cold} cold" if warm else f"{cold} other{'s' if cold != 1 else ''} cold")
    return ", ".join(parts) or "no other runner can take it"


class AffinityRound(BaseRound):
    """One round of ``Affinity``."""

    def __init__(self, policy: Affinity, peers: Sequence[Peer]) -> None:
        super().__init__(policy, peers)
        self._affinity = policy
        n = len(self._fleet.runners)
        #: Jobs this round held for each runner, and for all.
        self._holds = [0] * n
        self._held = 0
        self._retry: float | None = None
        self._warm: dict[tuple[Key, str, str | None], _Warm] = {}
        self._warm_by_repo: dict[str, list[_Warm]] = {}
        #: Per set of runners, memory need and repository: the ranking for a cold clone.
        self._colds: dict[tuple[tuple[int, ...], int | None, str], Ranking] = {}
        #: Bytes each runner's mirror cache holds, with this round's clones;
        #: the size of each repository as some report says.
        self._cache = [
            0 if r.peer.report is None else r.peer.report.mirror_bytes for r in self._fleet.runners
        ]
        #: Per repository, the runners with it warm (or warming) and its size.
        self._repos: dict[str, _Repo] = {}
        #: Per runner, its mirror cache (read from its report when needed).
        self._mirrors: list[dict[str, p.WarmRepo] | None] = [None] * n
        #: Per repository, the runners with a job of it under way (computed when needed).
        self._under_way: dict[str, dict[int, str | None]] | None = None
        #: Jobs this round placed (not reserved on their runner yet, maybe).
        self._this_round: set[tuple[int, int]] = set()

    def retry_at(self) -> float | None:
        return self._retry

    def _score(self, i: int) -> tuple[float, ...]:
        runner = self._fleet.runners[i]
        faulty = 1.0 if runner.faults else 0.0
        return (faulty, -self._free[i] / (runner.capacity or 1), runner.load, self._tie[i])

    def _capped(self, i: int) -> bool:
        return self._running[i] >= SHARE * self._total + 1

    def _pick(self, ranking: Ranking, memory: int | None) -> tuple[int | None, int | None]:
        """(the best runner under the share cap, the best runner) of ``ranking``."""
        first = found = self._top(ranking, memory)
        aside = []
        while found is not None and self._capped(found):  # two at most are over it
            aside.append(heapq.heappop(ranking.heap))
            found = self._top(ranking, memory)
        for entry in aside:
            heapq.heappush(ranking.heap, entry)
        return found, first

    def _choose(self, job: JobRecord, kind: Kind) -> Verdict:
        warm = self._warm_of(kind, job)
        warm_any = None
        if warm.order:
            chosen, warm_any = self._pick(warm.ranking, job.memory)
            if chosen is not None:
                others = _others(len(warm.order) - 1, len(kind.sorting.passing) - len(warm.order))
                return self._done(job, chosen, f"{_warmth(warm, chosen)}; {others}")
        cold, cold_any = self._pick(self._cold_of(kind, job.repo), job.memory)
        if cold_any is None:
            return self._exhausted(job, kind)
        if cold is None:  # the cap only steers: never a reason to wait
            chosen = warm_any if warm_any is not None else cold_any
            words = _warmth(warm, chosen) if chosen in warm.behind else "cold"
            return self._done(job, chosen, f"{words}; every runner that can take it runs its share")
        if warm.order and warm_any is None:
            held = self._hold(job, warm, cold)
            if held is not None:
                return held
        room = "room in its mirror cache; " if self._room_for(cold, job.repo) else ""
        why = self._cold(job, warm, warm_any)
        return self._done(job, cold, f"{why}; {room}least loaded ({self._slots(cold)})")

    def _done(self, job: JobRecord, i: int, words: str) -> Placed:
        placed = self._placed(job, i, words)
        runner = self._fleet.runners[i]
        self._affinity.placed(job, runner.name)
        self._this_round.add((job.id, job.attempt))
        under_way = self._jobs_under_way().setdefault(job.repo, {})
        if i not in under_way and job.repo not in self._mirrors_of(i):
            under_way[i] = job.sha
            known = self._repos.get(job.repo)
            self._cache[i] += 0 if known is None else known.size
            if not runner.faults:
                if known is not None:
                    known.runners.append((i, job.sha, True))
                self._warmed(job.repo, i, job.sha)
        return placed

    def _cold_of(self, kind: Kind, repo: str) -> Ranking:
        """The runners for a cold clone: healthy first, then those whose mirror
        cache has room for it (nothing of it is evicted), then as spread."""
        key = (tuple(kind.sorting.passing), kind.key[2], repo)
        ranking = self._colds.get(key)
        if ranking is None:
            runners = self._fleet.runners

            def score(i: int) -> tuple[float, ...]:
                runner = runners[i]
                return (
                    1.0 if runner.faults else 0.0,
                    0.0 if self._room_for(i, repo) else 1.0,
                    -self._free[i] / (runner.capacity or 1),
                    runner.load,
                    self._tie[i],
                )

            ranking = self._colds[key] = self._rank(kind.sorting.passing, score)
        return ranking

    def _room_for(self, i: int, repo: str) -> bool:
        """Whether runner ``i``'s mirror cache is bounded and has room for ``repo``."""
        report = self._fleet.runners[i].peer.report
        if report is None or not report.mirror_limit:
            return False
        return self._cache[i] + max(1, self._size(repo)) <= report.mirror_limit

    def _size(self, repo: str) -> int:
        return self._repo(repo).size

    def _warmed(self, repo: str, i: int, sha: str | None) -> None:
        """Runner ``i`` is warming ``repo`` now: the next jobs of it may go there."""
        for warm in self._warm_by_repo.get(repo, ()):
            self._add_warm(warm, repo, i, sha, True)

    def _mirrors_of(self, i: int) -> dict[str, p.WarmRepo]:
        mirrors = self._mirrors[i]
        if mirrors is None:
            mirrors = self._mirrors[i] = self._affinity.mirrors(self._fleet.runners[i].peer.report)
        return mirrors

    def _jobs_under_way(self) -> dict[str, dict[int, str | None]]:
        """Per repository, the runners with a job of it under way that this policy placed."""
        if self._under_way is None:
            self._under_way = {}
            placed, placements = self._this_round, self._affinity.placements
            for i, runner in enumerate(self._fleet.runners):
                there = placements.get(runner.name)
                if not there:
                    continue
                held = runner.peer.held
                for key in [k for k in there if k not in held and k not in placed]:
                    del there[key]  # ended (or never reserved): forgotten
                for repo, sha in there.values():
                    self._under_way.setdefault(repo, {})[i] = sha
        return self._under_way

    def _repo(self, repo: str) -> _Repo:
        """The runners with ``repo`` warm or warming, and its size (once per round)."""
        known = self._repos.get(repo)
        if known is None:
            found: list[tuple[int, str | None, bool]] = []
            runners, size = self._fleet.runners, 0
            for i in range(len(runners)):
                have = self._mirrors_of(i).get(repo)
                if have is not None:
                    size = max(size, have.size)
                    if not runners[i].faults:  # its mirror may be why: cold for now
                        found.append((i, have.sha, False))
            for i, sha in self._jobs_under_way().get(repo, {}).items():
                if not runners[i].faults and repo not in self._mirrors_of(i):
                    found.append((i, sha, True))
            known = self._repos[repo] = _Repo(found, size)
        return known

    def _warm_of(self, kind: Kind, job: JobRecord) -> _Warm:
        key = (kind.key, job.repo, job.sha)
        warm = self._warm.get(key)
        if warm is None:
            warm = self._warm[key] = self._warm_for(kind, job.repo, job.sha)
        return warm

    def _warm_for(self, kind: Kind, repo: str, sha: str | None) -> _Warm:
        runners, tie, free = self._fleet.runners, self._tie, self._free
        rank: dict[int, float] = {}

        def score(i: int) -> tuple[float, ...]:
            runner = runners[i]
            return (rank[i], -free[i] / (runner.capacity or 1), runner.load, tie[i])

        warm = _Warm({}, set(), rank, [], self._rank((), score), sha, kind.sorting.passes)
        for i, at, warming in self._repo(repo).runners:
            self._add_warm(warm, repo, i, at, warming)
        self._warm_by_repo.setdefault(repo, []).append(warm)
        return warm

    def _add_warm(self, warm: _Warm, repo: str, i: int, at: str | None, warming: bool) -> None:
        """Runner ``i`` has ``repo`` warm at ``at`` (or is warming it): rank it."""
        if i not in warm.passes or i in warm.behind:
            return
        behind = None if not at else self._affinity.signals.behind(repo, at, warm.sha)
        warm.behind[i] = behind
        if warming:
            warm.warming.add(i)
        warm.rank[i] = float(UNKNOWN_BEHIND if behind is None else behind)
        bisect.insort(warm.order, i, key=lambda j: (warm.rank[j], self._tie[j]))
        if self._free[i]:
            score = warm.ranking.score
            heapq.heappush(warm.ranking.heap, (*score(i), self._version[i], i))

    def _hold(self, job: JobRecord, warm: _Warm, cold: int) -> Waiting | None:
        """Hold ``job`` for the best full warm runner it may wait for (module doc),
        or None: it clones cold. (A runner free but short of the memory it asks
        is not waited for, nor one whose probe is out.)"""
        full = (i for i in warm.order if not self._free[i] and i not in self._probing)
        for target in itertools.islice(full, HOLD_FOR_BEST):
            runner = self._fleet.runners[target]
            saving = self._affinity.signals.saving(runner.name, job.repo)
            first = self._affinity.held.get((job.id, job.attempt), (self._now, ""))[0]
            until = first + saving
            if until <= self._now or self._holds[target] >= self._room(runner, job, saving):
                continue
            if not self._may_hold(runner.name, target):
                continue
            self._affinity.held[(job.id, job.attempt)] = (first, runner.name)
            self._holds[target] += 1
            self._held += 1
            self._retry = until if self._retry is None else min(self._retry, until)
            spill = self._fleet.runners[cold].name
            return Waiting(
                REASONS[HELD],
                f"waiting up to {until - self._now:.1f} s for {runner.name}"
                f" ({_warmth(warm, target)}) rather than clone cold on {spill}",
            )
        return None

    def _room(self, runner: Runner, job: JobRecord, saving: float) -> int:
        """How many jobs may wait for ``runner``: as many as it frees slots for
        within ``saving`` (the k-th waits about k typical durations / its slots),
        its slots if durations are not known yet."""
        typical = self._affinity.signals.typical(job.repo)
        if not typical:
            return runner.capacity
        return int(saving * runner.capacity / typical)

    def _may_hold(self, name: str, i: int) -> bool:
        """Whether its share of the last ``WINDOW`` placements, the held jobs
        counted, stays within ``SHARE`` (fewer placements so far count as others')."""
        mine = self._affinity.taken[name] + self._holds[i] + 1
        return mine <= SHARE * (WINDOW + self._held + 1)

    def _cold(self, job: JobRecord, warm: _Warm, capped: int | None) -> str:
        """Why a job goes to a cold runner, in words."""
        runners = self._fleet.runners
        if not warm.order:
            return "cold, no runner that can take it has its mirror warm"
        if capped is not None:
            under_way = f"{self._running[capped]} of the {self._total} jobs under way"
            return f"cold, {runners[capped].name} has it warm but runs {under_way}"
        best = warm.order[0]
        held = self._affinity.held.get((job.id, job.attempt))
        if held is not None:
            return f"cold after waiting {self._now - held[0]:.1f} s for {held[1]} (warm, full)"
        if not self._free[best]:
            return f"cold, {runners[best].name} has it warm but is full"
        return f"cold, {runners[best].name} has it warm but not the memory it asks"
