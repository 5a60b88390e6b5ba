"""A job's states, as the dispatcher's API names them (``dispatcher.records.JobState``).

Repeated here because the backend never imports the dispatcher; a test
checks that both lists agree.
"""

STATES: tuple[str, ...] = (
    "queued",
    "assigned",
    "running",
    "success",
    "failed",
    "error",
    "cancelled",
    "timed_out",
    "skipped",
)
ENDED: frozenset[str] = frozenset(STATES[3:])
