"""What the dispatcher learns from runners' frames that placement weighs.

Fed by the dispatcher from CHECKED_OUT (what a checkout cost on which
runner, which commit a repository's mirror there now holds) and DONE (how
long jobs take, whose fault an error was: ``health``). Read by the
placement policies and the pending explanations. In memory only: a
restarted dispatcher learns it again within a few jobs.
"""

from __future__ import annotations

from narwhal.dispatcher.health import Health


class Signals:
    """Checkout costs, commit order, job durations and runner health."""

    def __init__(self) -> None:
        self.health = Health()

    def checked_out(
        self, runner_id: str, repo: str, sha: str, *, seconds: float, cold: bool, now: float
    ) -> None:
        """A runner checked out ``sha`` of ``repo`` in ``seconds`` (``cold``: cloned afresh)."""

    def ended(
        self, runner_id: str, repo: str, *, fault: str, duration: float | None, now: float
    ) -> None:
        """A job of ``repo`` ended on ``runner_id``; ``fault`` from its DONE ("" if none)."""
        self.health.record(runner_id, repo, fault, now)

    def behind(self, repo: str, have: str, want: str | None) -> int | None:
        """How many commits a mirror at ``have`` is behind ``want`` (None: the ref's
        tip), by the order commits of ``repo`` were seen; None if not known."""
        return None

    def saving(self, runner_id: str, repo: str) -> float:
        """Seconds a warm checkout of ``repo`` saves over a cold one, as measured on
        ``runner_id`` (0.0 until both were seen): the longest a job waits for it."""
        return 0.0

    def typical(self, repo: str) -> float | None:
        """A typical duration of ``repo``'s recent jobs (of any, if too few); None: none seen."""
        return None
