"""What placement learns from runners' frames: checkout costs, commit order, durations."""

from __future__ import annotations

from narwhal.dispatcher import signals as s
from narwhal.dispatcher.signals import Signals


def test_commits_behind_count_the_commits_seen_after_the_mirrors() -> None:
    signals = Signals()
    for sha in ("c1", "c2", "c3", "c4"):
        signals.checked_out("a", "/r", sha, seconds=1.0, cold=False, now=0.0)
    signals.checked_out(
        "a", "/r", "c2", seconds=1.0, cold=False, now=0.0
    )  # seen before: same place
    assert signals.behind("/r", "c1", None) == 3
    assert signals.behind("/r", "c1", "c3") == 2
    assert signals.behind("/r", "c4", "c4") == 0
    assert signals.behind("/r", "c4", "c1") == 0  # the mirror is past what the job wants
    assert signals.behind("/r", "c3", "new") == 2  # an unseen commit: after the latest
    assert signals.behind("/r", "unknown", None) is None
    assert signals.behind("/r", "", None) is None
    assert signals.behind("/other", "c1", None) is None


def test_the_saving_is_measured_on_that_runner() -> None:
    signals = Signals()
    assert signals.saving("a", "/r") == 0.0  # nothing measured: no wait
    signals.checked_out("a", "/r", "c1", seconds=9.0, cold=True, now=0.0)
    assert signals.saving("a", "/r") == 0.0  # cold only
    signals.checked_out("a", "/r", "c2", seconds=1.0, cold=False, now=0.0)
    signals.checked_out("a", "/r", "c3", seconds=3.0, cold=False, now=0.0)
    assert signals.saving("a", "/r") == 7.0  # 9 - the mean of 1 and 3
    signals.checked_out("a", "/big", "b1", seconds=20.0, cold=True, now=0.0)
    assert signals.saving("a", "/other") == (9.0 + 20.0) / 2 - 2.0  # the runner's figures
    assert signals.saving("b", "/r") == 0.0  # another runner: its own, none
    signals.checked_out("b", "/r", "c1", seconds=1.0, cold=True, now=0.0)
    signals.checked_out("b", "/r", "c1", seconds=2.0, cold=False, now=0.0)
    assert signals.saving("b", "/r") == 0.0  # never negative


def test_typical_durations_are_the_repositorys_once_there_are_enough() -> None:
    signals = Signals()
    assert signals.typical("/r") is None
    signals.ended("a", "/other", fault="", duration=100.0, now=0.0)
    signals.ended("a", "/r", fault="", duration=10.0, now=0.0)
    assert signals.typical("/r") == 55.0  # too few of its own: the median of all
    signals.ended("a", "/r", fault="", duration=30.0, now=0.0)
    signals.ended("a", "/r", fault="", duration=20.0, now=0.0)
    signals.ended("a", "/r", fault="checkout", duration=0.1, now=0.0)  # not its kind of length
    signals.ended("a", "/r", fault="", duration=None, now=0.0)
    assert signals.typical("/r") == 20.0


def test_ends_feed_health() -> None:
    signals = Signals()
    for repo in ("/a", "/b", "/c"):
        signals.ended("a", repo, fault="engine", duration=1.0, now=0.0)
    assert signals.health.blocked("a", 0.0) == "3 engine failures in a row"


def test_memory_is_bounded() -> None:
    signals = Signals()
    for n in range(s.MAX_PAIRS + 10):
        signals.checked_out(f"r{n}", f"/r{n % 2000}", f"c{n}", seconds=1.0, cold=True, now=0.0)
        signals.ended(f"r{n}", f"/r{n}", fault="", duration=1.0, now=0.0)
    assert len(signals._pairs) <= s.MAX_PAIRS and len(signals._runners) <= s.MAX_RUNNERS
    assert len(signals._commits) <= s.MAX_REPOS and len(signals._durations) <= s.MAX_REPOS
    for n in range(s.COMMITS + 5):
        signals.checked_out("a", "/long", f"x{n}", seconds=1.0, cold=False, now=0.0)
    assert len(signals._commits["/long"].seen) == s.COMMITS
    assert signals.behind("/long", "x0", None) is None  # forgotten
    assert signals.behind("/long", f"x{s.COMMITS}", None) == 4
