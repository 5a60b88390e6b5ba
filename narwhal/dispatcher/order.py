"""The order the scheduler looks at queued jobs in: priority, then fair share
between repositories (the one with the fewest running jobs first), then age.

Age is the job's id: a requeued attempt keeps its place. Fair share counts
the jobs each repository has assigned or running, plus the ones the walk
itself placed (``Walk.took``), so a burst of one repository does not take
every slot while another repository's job waits behind it.

The dispatcher walks the queue every scheduling round and stops when no
slot is left, so a walk is lazy: the queue is kept in buckets, one per
(priority, repository), each sorted by id; a walk merges a priority's
buckets through a heap of repositories. Walking k jobs costs about
O(k log repositories) plus O(repositories) to start a priority; ``add``
and ``discard`` cost O(1) for jobs that come and go in id order (the usual
case) and O(bucket) for one that returns into the middle of its bucket.
A discarded job leaves its id in its bucket until the walk or a
compaction passes it (a bucket is compacted once it holds more dead ids
than live ones).
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Iterator, Mapping

from narwhal.dispatcher.records import JobRecord

Bucket = tuple[int, str]


class _Ids:
    """One bucket's job ids, sorted; ``ids[head:]`` are the ones not known dead."""

    __slots__ = ("dead", "head", "ids", "live")

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.head = 0
        self.live = 0
        self.dead = 0


class QueueIndex:
    """The queued jobs, kept in ``JobTable`` beside its ``queue`` dict."""

    def __init__(self) -> None:
        self._jobs: dict[int, JobRecord] = {}
        self._buckets: dict[Bucket, _Ids] = {}
        #: Per priority, the repositories with a live job of it.
        self._levels: dict[int, set[str]] = {}

    def __len__(self) -> int:
        return len(self._jobs)

    def add(self, job: JobRecord) -> None:
        """``job`` joined the queue, or its record changed (same id)."""
        old = self._jobs.get(job.id)
        self._jobs[job.id] = job
        if old is not None:
            if (old.priority, old.repo) == (job.priority, job.repo):
                return
            self._dropped((old.priority, old.repo), job.id)
        self._put((job.priority, job.repo), job.id)

    def discard(self, job_id: int) -> None:
        old = self._jobs.pop(job_id, None)
        if old is not None:
            self._dropped((old.priority, old.repo), job_id)

    def clear(self) -> None:
        self._jobs.clear()
        self._buckets.clear()
        self._levels.clear()

    def _put(self, bucket: Bucket, job_id: int) -> None:
        ids = self._buckets.get(bucket)
        if ids is None:
            ids = self._buckets[bucket] = _Ids()
            self._levels.setdefault(bucket[0], set()).add(bucket[1])
        ids.live += 1
        if not ids.ids or ids.ids[-1] < job_id:
            ids.ids.append(job_id)
            return
        at = bisect.bisect_left(ids.ids, job_id, ids.head)
        if at < len(ids.ids) and ids.ids[at] == job_id:
            ids.dead -= 1  # back before a walk or a compaction passed it
        elif at == ids.head and ids.head:
            ids.head -= 1  # into the slot the head left
            ids.ids[ids.head] = job_id
        else:
            ids.ids.insert(at, job_id)

    def _dropped(self, bucket: Bucket, job_id: int) -> None:
        ids = self._buckets[bucket]
        ids.live -= 1
        if not ids.live:
            del self._buckets[bucket]
            repos = self._levels[bucket[0]]
            repos.discard(bucket[1])
            if not repos:
                del self._levels[bucket[0]]
            return
        ids.dead += 1
        self._trim(bucket, ids)
        if ids.dead > ids.live:
            alive = [i for i in ids.ids[ids.head :] if self._alive(bucket, i)]
            ids.ids, ids.head, ids.dead = alive, 0, 0

    def _alive(self, bucket: Bucket, job_id: int) -> bool:
        job = self._jobs.get(job_id)
        return job is not None and job.priority == bucket[0] and job.repo == bucket[1]

    def _trim(self, bucket: Bucket, ids: _Ids) -> None:
        """Step the head past dead ids (jobs leave mostly from the front)."""
        while ids.head < len(ids.ids) and not self._alive(bucket, ids.ids[ids.head]):
            ids.head += 1
            ids.dead -= 1

    def walk(self, running: Mapping[str, int]) -> Walk:
        """The queued jobs in order; ``running``: jobs assigned or running per repository."""
        return Walk(self, running)

    def _level(self, priority: int) -> list[tuple[int, int, str, int]]:
        """A heap of (running, next id, repository, position) over one priority's buckets."""
        heap = []
        for repo in self._levels.get(priority, ()):
            bucket = (priority, repo)
            ids = self._buckets[bucket]
            self._trim(bucket, ids)
            if ids.head < len(ids.ids):
                heap.append((0, ids.ids[ids.head], repo, ids.head))
        return heap

    def _next(self, bucket: Bucket, position: int) -> int:
        """The position of the next live id after ``position`` (len: none)."""
        ids = self._buckets.get(bucket)
        if ids is None:
            return -1
        listed = ids.ids
        position += 1
        while position < len(listed) and (
            listed[position] == listed[position - 1] or not self._alive(bucket, listed[position])
        ):
            position += 1
        return position if position < len(listed) else -1


class Walk:
    """One pass over the queue in order; ``took`` says the last job yielded was placed.

    The queue is not to change while a walk is under way (the dispatcher
    walks it within one step of its loop).
    """

    def __init__(self, index: QueueIndex, running: Mapping[str, int]) -> None:
        self._index = index
        self._running = dict(running)

    def __iter__(self) -> Iterator[JobRecord]:
        index = self._index
        for priority in sorted(index._levels, reverse=True):
            yield from self._level(priority, index._level(priority))

    def _level(self, priority: int, heap: list[tuple[int, int, str, int]]) -> Iterator[JobRecord]:
        index, running = self._index, self._running
        heap = [(running.get(repo, 0), i, repo, at) for _, i, repo, at in heap]
        heapq.heapify(heap)
        while heap:
            count, job_id, repo, at = heap[0]
            now = running.get(repo, 0)
            if now != count:  # another repository's count changed under it
                heapq.heapreplace(heap, (now, job_id, repo, at))
                continue
            yield index._jobs[job_id]
            at = index._next((priority, repo), at)
            if at < 0:
                heapq.heappop(heap)
            else:
                ids = index._buckets[(priority, repo)].ids
                heapq.heapreplace(heap, (running.get(repo, 0), ids[at], repo, at))

    def took(self, job: JobRecord) -> None:
        self._running[job.repo] = self._running.get(job.repo, 0) + 1
