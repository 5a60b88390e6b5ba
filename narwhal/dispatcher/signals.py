"""What the dispatcher learns from runners' frames that placement weighs.

Fed by the dispatcher from CHECKED_OUT (what a checkout cost on which
runner, which commit a repository's mirror there now holds) and DONE (how
long jobs take, whose fault an error was: ``health``). Read by the
placement policies and the pending explanations. In memory only: a
restarted dispatcher learns it again within a few jobs. Every map is
bounded (repositories, runners, commits per repository): ids and URLs are
what runners and users claim.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from statistics import median
from typing import TypeVar

from narwhal.dispatcher.health import Health

#: Checkout times averaged per (runner, repository), and per runner.
CHECKOUTS = 8
#: Job durations kept per repository, and of all repositories.
DURATIONS = 32
ALL_DURATIONS = 256
#: A repository's own durations are typical of it once this many were seen.
MIN_OWN = 3
#: Commits whose order is kept per repository.
COMMITS = 1024
MAX_REPOS = 1024
MAX_RUNNERS = 1024
MAX_PAIRS = 8192

K = TypeVar("K")
V = TypeVar("V")


def _bounded(table: MutableMapping[K, V], key: K, make: Callable[[], V], cap: int) -> V:
    """``table[key]``, made if missing; the oldest entry goes when ``cap`` is reached."""
    found = table.get(key)
    if found is None:
        if len(table) >= cap:
            del table[next(iter(table))]
        found = table[key] = make()
    return found


def _recent() -> deque[float]:
    return deque(maxlen=DURATIONS)


@dataclass(slots=True)
class _Checkouts:
    """Recent warm and cold checkout times (seconds)."""

    warm: deque[float] = field(default_factory=lambda: deque(maxlen=CHECKOUTS))
    cold: deque[float] = field(default_factory=lambda: deque(maxlen=CHECKOUTS))

    def saving(self) -> float | None:
        if not self.warm or not self.cold:
            return None
        return max(0.0, sum(self.cold) / len(self.cold) - sum(self.warm) / len(self.warm))


@dataclass(slots=True)
class _Commits:
    """The commits of one repository in the order they were first seen."""

    seen: dict[str, int] = field(default_factory=dict)
    next: int = 0

    def add(self, sha: str) -> None:
        if sha in self.seen:
            return
        if len(self.seen) >= COMMITS:
            del self.seen[next(iter(self.seen))]
        self.seen[sha] = self.next
        self.next += 1


class Signals:
    """Checkout costs, commit order, job durations and runner health."""

    def __init__(self, health: Health | None = None) -> None:
        self.health = health or Health()
        self._pairs: dict[tuple[str, str], _Checkouts] = {}
        self._runners: dict[str, _Checkouts] = {}
        self._commits: dict[str, _Commits] = {}
        self._durations: dict[str, deque[float]] = {}
        self._all: deque[float] = deque(maxlen=ALL_DURATIONS)

    def checked_out(
        self, runner_id: str, repo: str, sha: str, *, seconds: float, cold: bool, now: float
    ) -> None:
        """A runner checked out ``sha`` of ``repo`` in ``seconds`` (``cold``: cloned afresh)."""
        for times in (
            _bounded(self._pairs, (runner_id, repo), _Checkouts, MAX_PAIRS),
            _bounded(self._runners, runner_id, _Checkouts, MAX_RUNNERS),
        ):
            (times.cold if cold else times.warm).append(seconds)
        if sha:
            _bounded(self._commits, repo, _Commits, MAX_REPOS).add(sha)

    def ended(
        self, runner_id: str, repo: str, *, fault: str, duration: float | None, now: float
    ) -> None:
        """A job of ``repo`` ended on ``runner_id``; ``fault`` from its DONE ("" if none).

        A job that ended in a fault says nothing of how long its kind takes:
        only the others' durations count.
        """
        self.health.record(runner_id, repo, fault, now)
        if duration is None or fault:
            return
        _bounded(self._durations, repo, _recent, MAX_REPOS).append(duration)
        self._all.append(duration)

    def behind(self, repo: str, have: str, want: str | None) -> int | None:
        """How many commits a mirror at ``have`` is behind ``want`` (None: the ref's
        tip), by the order commits of ``repo`` were seen; None if not known.

        Counted among the commits seen (checked out somewhere): the commits
        seen after ``have`` up to ``want``, or up to the latest seen for
        None. A ``want`` never seen counts as one after the latest (a new
        push, most likely); a mirror at a later commit than ``want`` is 0
        behind.
        """
        commits = self._commits.get(repo)
        at = None if commits is None or not have else commits.seen.get(have)
        if commits is None or at is None:
            return None
        latest = commits.next - 1
        if want is None:
            return latest - at
        wanted = commits.seen.get(want)
        if wanted is None:
            return latest - at + 1
        return max(0, wanted - at)

    def saving(self, runner_id: str, repo: str) -> float:
        """Seconds a warm checkout of ``repo`` saves over a cold one, as measured on
        ``runner_id`` (0.0 until both were seen): the longest a job waits for it.

        The runner's figures for this repository, else its figures over every
        repository, else 0.0.
        """
        for times in (self._pairs.get((runner_id, repo)), self._runners.get(runner_id)):
            saved = None if times is None else times.saving()
            if saved is not None:
                return saved
        return 0.0

    def typical(self, repo: str) -> float | None:
        """A typical duration of ``repo``'s recent jobs (of any, if too few); None: none seen.

        The median of the repository's last ``DURATIONS`` if at least
        ``MIN_OWN``, else of the last ``ALL_DURATIONS`` jobs of every repository.
        """
        own = self._durations.get(repo)
        if own is not None and len(own) >= MIN_OWN:
            return float(median(own))
        return float(median(self._all)) if self._all else None
