"""Black-hole runners: a runner whose jobs keep ending in faults of its own side
(checkout, engine, runner: DONE's ``fault``) is quarantined for a while, then
gets one probe job; it is cleared when that ends well."""

from __future__ import annotations

from typing import Any


class Health:
    """Each runner's recent faults and quarantine."""

    def record(self, runner_id: str, repo: str, fault: str, now: float) -> None:
        """A job of ``repo`` ended on ``runner_id`` with ``fault`` ("" if none)."""

    def blocked(self, runner_id: str, now: float) -> str | None:
        """Why ``runner_id`` takes no job now (quarantined, or its probe job is
        out), in words; None if it may take one."""
        return None

    def took(self, runner_id: str, now: float) -> None:
        """A job was placed on ``runner_id`` (while on probation: its probe)."""

    def to_json(self, runner_id: str, now: float) -> dict[str, Any] | None:
        """``{"reason", "until", "probing"}`` while quarantined or probing; None if healthy."""
        return None
