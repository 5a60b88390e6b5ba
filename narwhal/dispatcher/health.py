"""Black-hole runners: a runner whose jobs keep ending in faults of its own side
(checkout, engine, runner: DONE's ``fault``) is quarantined for a while, then
gets one probe job; it is cleared when that ends well.

The rule. A runner is quarantined when its last ``STREAK`` jobs in a row
ended in a fault (a job ending without one resets the count), and the
faults are its own: they come from at least two repositories, or a job of
the one repository they come from ended without fault on another runner
since the streak began. A streak of one repository that no other runner
could check out either (deleted, moved, its credentials revoked) is that
repository's fault: quarantining each runner in turn for it would stop all
work and fix nothing. (A runner keeps its streak meanwhile: the next fault
decides again, and placement prefers runners without a streak, so the
repository's next job tries another runner and shows whose fault it is.)

A quarantine lasts ``QUARANTINE`` seconds, doubled each time its probe
fails, up to ``QUARANTINE_MAX``. Then the runner is on probation: it may
take one job (``took``), and no other until that one ends; an end without
fault clears it, a fault quarantines it again for longer. The end that
decides is the runner's next one: DONE does not say which job was the
probe, and any job that ends well there is evidence it works again.
Timing uses the monotonic ``now`` the caller gives; ``to_json`` shows the
end of a quarantine on the wall clock.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: Faults in a row that quarantine a runner.
STREAK = 3
#: Seconds of a first quarantine, and the longest (doubling on each failed probe).
QUARANTINE = 60.0
QUARANTINE_MAX = 900.0
#: A probe job whose end never came (its runner was lost, the job requeued)
#: stops blocking the runner after this long: it may take another.
PROBE_PATIENCE = 900.0
#: Runners and repositories remembered (ids are runners' claims: bounded).
MAX_RUNNERS = 4096
MAX_REPOS = 4096


@dataclass(slots=True)
class _Runner:
    """One runner's current streak of faults and its quarantine, if any."""

    since: float
    count: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    #: The streak's repositories (two are enough to know it is the runner's).
    repos: set[str] = field(default_factory=set)
    #: Quarantined until (monotonic); None: not quarantined.
    until: float | None = None
    period: float = 0.0
    reason: str = ""
    probes_failed: int = 0
    #: When its probe job was placed (on probation), None: none out.
    probe_at: float | None = None


def _words(count: int, kinds: Counter[str]) -> str:
    """``3 checkout failures in a row``, or ``4 failures in a row (3 checkout, 1 engine)``."""
    if len(kinds) == 1:
        return f"{count} {next(iter(kinds))} failures in a row"
    mix = ", ".join(f"{n} {kind}" for kind, n in kinds.most_common())
    return f"{count} failures in a row ({mix})"


class Health:
    """Each runner's recent faults and quarantine."""

    def __init__(
        self,
        *,
        streak: int = STREAK,
        period: float = QUARANTINE,
        longest: float = QUARANTINE_MAX,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._streak = streak
        self._period = period
        self._longest = max(longest, period)
        self._wall = wall
        self._runners: dict[str, _Runner] = {}
        #: Per repository, the last runners a job of it ended well on: runner -> when.
        self._fine: dict[str, dict[str, float]] = {}

    def record(self, runner_id: str, repo: str, fault: str, now: float) -> None:
        """A job of ``repo`` ended on ``runner_id`` with ``fault`` ("" if none)."""
        if not fault:
            self._fine_on(repo, runner_id, now)
        state = self._runners.get(runner_id)
        if state is not None and state.until is not None:
            self._judge(runner_id, state, fault, now)
        elif not fault:
            self._runners.pop(runner_id, None)
        else:
            self._fault(runner_id, state, repo, fault, now)

    def _judge(self, runner_id: str, state: _Runner, fault: str, now: float) -> None:
        """An end while quarantined (ignored: placed before) or on probation (decides)."""
        assert state.until is not None  # noqa: S101 - the caller checked
        if now < state.until:
            return
        if not fault:
            del self._runners[runner_id]
            return
        state.probes_failed += 1
        state.probe_at = None
        self._quarantine(state, min(self._longest, state.period * 2), now)

    def _fault(
        self, runner_id: str, state: _Runner | None, repo: str, fault: str, now: float
    ) -> None:
        if state is None:
            state = self._runners[runner_id] = self._new(now)
        state.count += 1
        state.kinds[fault] += 1
        if len(state.repos) < 2:
            state.repos.add(repo)
        if state.count >= self._streak and self._own(runner_id, state):
            self._quarantine(state, self._period, now)

    def _new(self, now: float) -> _Runner:
        if len(self._runners) >= MAX_RUNNERS:  # forget a runner not quarantined first
            old = next((r for r, s in self._runners.items() if s.until is None), None)
            del self._runners[old if old is not None else next(iter(self._runners))]
        return _Runner(since=now)

    def _own(self, runner_id: str, state: _Runner) -> bool:
        """Whether the streak is the runner's fault, not one repository's (module doc)."""
        if len(state.repos) >= 2:
            return True
        fine = self._fine.get(next(iter(state.repos)), {})
        return any(r != runner_id and at >= state.since for r, at in fine.items())

    def _quarantine(self, state: _Runner, period: float, now: float) -> None:
        state.period = period
        state.until = now + period
        state.reason = _words(state.count, state.kinds)
        if state.probes_failed:
            probes = "probe" if state.probes_failed == 1 else "probes"
            state.reason += f", {state.probes_failed} {probes} failed"

    def _fine_on(self, repo: str, runner_id: str, now: float) -> None:
        fine = self._fine.pop(repo, None)
        if fine is None:
            if len(self._fine) >= MAX_REPOS:
                del self._fine[next(iter(self._fine))]
            fine = {}
        self._fine[repo] = fine  # the most recently used last
        fine.pop(runner_id, None)
        fine[runner_id] = now
        if len(fine) > 2:  # two runners suffice: one of them is not the one asking
            del fine[next(iter(fine))]

    def blocked(self, runner_id: str, now: float) -> str | None:
        """Why ``runner_id`` takes no job now (quarantined, or its probe job is
        out), in words; None if it may take one."""
        state = self._runners.get(runner_id)
        if state is None or state.until is None:
            return None
        if now < state.until:
            return state.reason
        if state.probe_at is not None and now < state.probe_at + PROBE_PATIENCE:
            return f"on probation after {state.reason}: its probe job is out"
        return None

    def took(self, runner_id: str, now: float) -> None:
        """A job was placed on ``runner_id`` (while on probation: its probe)."""
        state = self._runners.get(runner_id)
        if state is not None and state.until is not None and self.blocked(runner_id, now) is None:
            state.probe_at = now

    def faults(self, runner_id: str) -> int:
        """How many of its last jobs in a row ended in a fault of its side (0: none)."""
        state = self._runners.get(runner_id)
        return 0 if state is None else state.count

    def to_json(self, runner_id: str, now: float) -> dict[str, Any] | None:
        """``{"reason", "until", "probing"}`` while quarantined or probing; None if healthy.

        ``until``: when the quarantine ends or ended (wall clock); ``probing``:
        it is past, the runner is on probation.
        """
        state = self._runners.get(runner_id)
        if state is None or state.until is None:
            return None
        return {
            "reason": state.reason,
            "until": self._wall() + (state.until - now),
            "probing": now >= state.until,
        }
