"""Black-hole runners: quarantined after faults of their own side, back after a probe."""

from __future__ import annotations

from narwhal.dispatcher.health import Health


def _faults(
    health: Health, runner: str, *repos: str, now: float = 0.0, fault: str = "checkout"
) -> None:
    for repo in repos:
        health.record(runner, repo, fault, now)


def test_three_faults_in_a_row_from_two_repositories_quarantine_a_runner() -> None:
    health = Health(wall=lambda: 1000.0)
    _faults(health, "a", "/x", "/y")
    assert health.blocked("a", 0.0) is None and health.faults("a") == 2
    health.record("a", "/x", "engine", 0.0)
    assert health.blocked("a", 1.0) == "3 failures in a row (2 checkout, 1 engine)"
    assert health.to_json("a", 10.0) == {
        "reason": "3 failures in a row (2 checkout, 1 engine)",
        "until": 1050.0,  # 60 s after the third fault, on the wall clock
        "probing": False,
    }
    assert health.to_json("b", 10.0) is None and health.blocked("b", 10.0) is None


def test_a_job_that_ends_without_fault_resets_the_count() -> None:
    health = Health()
    _faults(health, "a", "/x", "/y")
    health.record("a", "/x", "", 0.0)
    _faults(health, "a", "/x", "/y")
    assert health.blocked("a", 0.0) is None and health.faults("a") == 2


def test_one_repository_that_fails_everywhere_is_not_the_runners_fault() -> None:
    """A deleted repository makes every checkout fail: no runner is quarantined for it."""
    health = Health()
    for runner in ("a", "b", "c"):
        _faults(health, runner, "/gone", "/gone", "/gone", "/gone")
        assert health.blocked(runner, 0.0) is None
    health.record("a", "/other", "checkout", 0.0)  # a second repository: it is the runner
    assert health.blocked("a", 0.0) == "5 checkout failures in a row"


def test_one_repository_that_works_elsewhere_is_the_runners_fault() -> None:
    health = Health()
    health.record("a", "/r", "engine", 10.0)
    health.record("b", "/r", "", 11.0)  # fine on another runner since the streak began
    _faults(health, "a", "/r", "/r", now=12.0, fault="engine")
    assert health.blocked("a", 12.0) == "3 engine failures in a row"
    # Fine on another runner before the streak began says nothing of now.
    health.record("c", "/s", "", 0.0)
    _faults(health, "d", "/s", "/s", "/s", now=5.0)
    assert health.blocked("d", 5.0) is None


def test_probation_takes_one_probe_and_a_good_one_clears_the_runner() -> None:
    health = Health()
    _faults(health, "a", "/x", "/y", "/z", now=100.0)
    assert health.blocked("a", 159.0) == "3 checkout failures in a row"
    assert health.blocked("a", 160.0) is None  # on probation: one job
    assert health.to_json("a", 160.0)["probing"] is True  # type: ignore[index]
    health.took("a", 160.0)
    assert health.blocked("a", 161.0) == (
        "on probation after 3 checkout failures in a row: its probe job is out"
    )
    health.record("a", "/x", "", 170.0)
    assert health.blocked("a", 170.0) is None and health.to_json("a", 170.0) is None
    assert health.faults("a") == 0


def test_a_failed_probe_quarantines_it_again_for_twice_as_long_up_to_15_minutes() -> None:
    health = Health()
    _faults(health, "a", "/x", "/y", "/z", now=0.0)
    now, period = 60.0, 60.0
    for failed in range(1, 7):
        health.took("a", now)
        health.record("a", "/x", "runner", now + 1.0)
        period = min(900.0, period * 2)
        now += 1.0
        probes = "1 probe" if failed == 1 else f"{failed} probes"
        assert health.blocked("a", now) == f"3 checkout failures in a row, {probes} failed"
        assert health.blocked("a", now + period - 0.1) is not None
        now += period
        assert health.blocked("a", now) is None
    assert period == 900.0


def test_a_job_placed_before_the_quarantine_does_not_end_it() -> None:
    health = Health()
    _faults(health, "a", "/x", "/y", "/z", now=0.0)
    health.record("a", "/x", "", 30.0)  # it was under way already
    health.record("a", "/x", "engine", 31.0)
    assert health.blocked("a", 31.0) == "3 checkout failures in a row"
    assert health.blocked("a", 60.0) is None


def test_a_probe_whose_end_never_came_stops_blocking_after_a_while() -> None:
    health = Health()
    _faults(health, "a", "/x", "/y", "/z", now=0.0)
    health.took("a", 60.0)  # and its runner was lost with it
    assert health.blocked("a", 60.0 + 899.0) is not None
    assert health.blocked("a", 60.0 + 900.0) is None
    health.took("a", 960.0)
    assert health.blocked("a", 961.0) is not None


def test_many_runners_are_remembered_within_a_bound() -> None:
    health = Health()
    _faults(health, "bad", "/x", "/y", "/z")
    for n in range(5000):
        health.record(f"r{n}", "/x", "checkout", 0.0)
    assert len(health._runners) <= 4096
    assert health.blocked("bad", 0.0) is not None  # the quarantined are forgotten last
