"""Which ended jobs' logs retention deletes (``dispatcher.retention.doomed``), and its flags."""

from __future__ import annotations

import argparse

import pytest

from narwhal.config import LogLimit, RetentionConfig
from narwhal.dispatcher.retention import doomed
from narwhal.dispatcher.store.base import LogFootprint
from narwhal.errors import ConfigError
from narwhal.settings.retention import retention_config

DAY = 86400.0
NOW = 100 * DAY


def _f(
    job_id: int, days_ago: float, stored: int = 100, repo: str = "https://f/a.git"
) -> LogFootprint:
    return LogFootprint(job_id=job_id, repo=repo, finished_at=NOW - days_ago * DAY, stored=stored)


def _ids(chosen: list[LogFootprint]) -> list[int]:
    return [f.job_id for f in chosen]


def test_no_limit_keeps_everything() -> None:
    assert doomed([_f(1, 900), _f(2, 1)], RetentionConfig(), NOW) == []


def test_logs_older_than_the_days_go() -> None:
    footprints = [_f(1, 30), _f(2, 8), _f(3, 6.9), _f(4, 0)]
    policy = RetentionConfig(keep=LogLimit(days=7))
    assert _ids(doomed(footprints, policy, NOW)) == [1, 2]


def test_past_the_size_the_oldest_go_first_until_under() -> None:
    footprints = [_f(1, 5, 400), _f(2, 4, 300), _f(3, 3, 200), _f(4, 2, 100)]
    policy = RetentionConfig(keep=LogLimit(size=350))
    # 1000 stored: 1 (400) and 2 (300) go, leaving 300.
    assert _ids(doomed(footprints, policy, NOW)) == [1, 2]


def test_days_and_size_together() -> None:
    footprints = [_f(1, 40, 10), _f(2, 4, 300), _f(3, 3, 200), _f(4, 2, 100)]
    policy = RetentionConfig(keep=LogLimit(days=30, size=350))
    assert _ids(doomed(footprints, policy, NOW)) == [1, 2]


def test_a_repository_override_has_its_own_limit_and_budget() -> None:
    noisy = "https://f/noisy.git"
    footprints = [
        _f(1, 5, 500, noisy),
        _f(2, 4, 100),
        _f(3, 3, 500, noisy),
        _f(4, 2, 100),
        _f(5, 1, 500, noisy),
    ]
    policy = RetentionConfig(
        keep=LogLimit(size=1000), repos=(("https://f/noisy*", LogLimit(size=600)),)
    )
    # The noisy repository's 1500 bytes are over its own 600: its two oldest go;
    # the others' 200 are well under the installation's 1000 and all stay.
    assert _ids(doomed(footprints, policy, NOW)) == [1, 3]


def test_the_first_matching_pattern_wins() -> None:
    footprints = [_f(1, 10, repo="https://f/x.git")]
    policy = RetentionConfig(
        repos=(("https://f/x*", LogLimit(days=30)), ("https://f/*", LogLimit(days=1)))
    )
    assert doomed(footprints, policy, NOW) == []


def _args(**given: object) -> argparse.Namespace:
    values = {"log_keep_days": None, "log_keep_size": None, "log_keep": None, "gc_interval": "3600"}
    return argparse.Namespace(**(values | given))


def test_flags_become_the_policy() -> None:
    policy = retention_config(
        _args(log_keep_days="14", log_keep_size="2G", log_keep=["https://f/a*=3,500M", "b*=,1G"])
    )
    assert policy.keep == LogLimit(days=14.0, size=2 << 30)
    assert policy.repos == (
        ("https://f/a*", LogLimit(days=3.0, size=500 << 20)),
        ("b*", LogLimit(days=None, size=1 << 30)),
    )
    assert policy.bounded and not retention_config(_args()).bounded


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"log_keep_days": "-1"}, "--log-keep-days: must be positive"),
        ({"log_keep_days": "nan"}, "--log-keep-days: must be positive"),
        ({"log_keep_size": "lots"}, "--log-keep-size: expected a size"),
        ({"log_keep": ["no-equals"]}, "--log-keep: expected REPOSITORY-PATTERN=DAYS"),
        ({"log_keep": ["x="]}, "--log-keep: expected REPOSITORY-PATTERN=DAYS"),
        ({"log_keep": ["x=1,0"]}, "--log-keep: expected a size"),
        ({"gc_interval": "0"}, "--gc-interval: must be positive"),
    ],
)
def test_bad_flags_are_one_line(given: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        retention_config(_args(**given))
