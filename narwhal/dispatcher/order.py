"""The order the scheduler looks at queued jobs in: priority, then fair share
between repositories (the one with the fewest running jobs first), then age."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from narwhal.dispatcher.records import JobRecord


class QueueIndex:
    """The queued jobs, kept in ``JobTable`` beside its ``queue`` dict."""

    def __init__(self) -> None:
        self._jobs: dict[int, JobRecord] = {}

    def __len__(self) -> int:
        return len(self._jobs)

    def add(self, job: JobRecord) -> None:
        """``job`` joined the queue, or its record changed (same id)."""
        self._jobs[job.id] = job

    def discard(self, job_id: int) -> None:
        self._jobs.pop(job_id, None)

    def clear(self) -> None:
        self._jobs.clear()

    def walk(self, running: Mapping[str, int]) -> Walk:
        """The queued jobs in order; ``running``: jobs assigned or running per repository."""
        return Walk(sorted(self._jobs.values(), key=lambda j: (-j.priority, j.id)), running)


class Walk:
    """One pass over the queue in order; ``took`` says the last job yielded was placed."""

    def __init__(self, jobs: list[JobRecord], running: Mapping[str, int]) -> None:
        self._jobs = jobs
        self._running = dict(running)

    def __iter__(self) -> Iterator[JobRecord]:
        return iter(self._jobs)

    def took(self, job: JobRecord) -> None:
        self._running[job.repo] = self._running.get(job.repo, 0) + 1
