"""``--log-keep-days``, ``--log-keep-size``, ``--log-keep`` and ``--gc-interval``
into a ``RetentionConfig`` (``dispatcher.retention``)."""

from __future__ import annotations

import argparse

from narwhal.config import LogLimit, RetentionConfig
from narwhal.errors import ConfigError
from narwhal.settings.values import byte_size, positive


def retention_config(args: argparse.Namespace) -> RetentionConfig:
    keep = LogLimit(
        days=_days("--log-keep-days", args.log_keep_days),
        size=byte_size("--log-keep-size", args.log_keep_size) if args.log_keep_size else None,
    )
    repos = tuple(_override(text) for text in args.log_keep or ())
    interval = positive(float, "--gc-interval", args.gc_interval)
    return RetentionConfig(keep=keep, repos=repos, interval=interval)


def _days(name: str, text: str | None) -> float | None:
    return None if text is None or not str(text).strip() else positive(float, name, str(text))


def _override(text: str) -> tuple[str, LogLimit]:
    """``--log-keep PATTERN=DAYS[,SIZE]`` (DAYS may be empty: a size limit alone)."""
    pattern, sep, limits = text.partition("=")
    days, _, size = limits.partition(",")
    if not sep or not pattern.strip() or not (days.strip() or size.strip()):
        raise ConfigError(
            f"--log-keep: expected REPOSITORY-PATTERN=DAYS[,SIZE] (like"
            f" 'https://github.com/octo/*=7,2G'), got {text!r}"
        )
    limit = LogLimit(
        days=_days("--log-keep", days),
        size=byte_size("--log-keep", size) if size.strip() else None,
    )
    return pattern.strip(), limit
