"""Store invariants checked through the REST API, so they hold for any store.

Chaos tests kill and restart daemons, then check what the dispatcher
recorded: each job ended exactly once, none was lost or invented, attempts
stayed bounded. Asking the API (what the operator sees) instead of opening
the database keeps these checks the same when the store is not SQLite.
"""

from __future__ import annotations

from collections import Counter

from tests.support.cluster import TERMINAL
from tests.support.daemons import Client


def transitions(api: Client, job_id: int) -> list[str]:
    """The states a job went through, oldest first."""
    return [t["state"] for t in api.job(job_id)["transitions"]]


def terminal_once(api: Client, job_id: int) -> str:
    """The job's single terminal state: exactly one terminal transition is stored."""
    states = transitions(api, job_id)
    ends = [state for state in states if state in TERMINAL]
    assert len(ends) == 1, f"job {job_id} transitions: {states}"
    return ends[0]


def state_counts(api: Client) -> dict[str, int]:
    """How many jobs the dispatcher holds in each state."""
    return dict(Counter(job["state"] for job in api.jobs(limit=500)))


def max_attempt(api: Client) -> int:
    """The highest attempt number of any job (0 with no job)."""
    return max((int(job["attempt"]) for job in api.jobs(limit=500)), default=0)


def lost_transitions(api: Client) -> int:
    """Transitions of any job whose reason says a runner was lost."""
    return sum(
        "lost" in t["reason"]
        for job in api.jobs(limit=500)
        for t in api.job(job["id"])["transitions"]
    )
