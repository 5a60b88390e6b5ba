"""The queue's order: priority, then fair share between repositories, then age."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from narwhal.dispatcher.order import QueueIndex
from tests.dispatcher.test_placement import job


def _index(*jobs: tuple[int, str, int]) -> QueueIndex:
    index = QueueIndex()
    for job_id, repo, priority in jobs:
        index.add(job(job_id, repo=repo, priority=priority))
    return index


def _ids(index: QueueIndex, running: dict[str, int] | None = None) -> list[int]:
    return [queued.id for queued in index.walk(running or {})]


def test_priority_then_fair_share_then_age() -> None:
    index = _index(
        (1, "/a", 0),
        (2, "/a", 0),
        (3, "/a", 0),
        (4, "/b", 0),
        (5, "/c", 0),
        (6, "/b", 5),
        (7, "/a", -1),
    )
    # Priority 5 first; then, at 0, the repository with the fewest running
    # (ties: its oldest job first), each repository's jobs oldest first.
    assert _ids(index, {"/a": 2, "/b": 1}) == [6, 5, 4, 1, 2, 3, 7]
    assert _ids(index) == [6, 1, 2, 3, 4, 5, 7]  # nothing running, nothing placed: by age
    assert len(index) == 7


def test_what_the_walk_placed_counts_for_fair_share() -> None:
    index = _index(*((n, "/a", 0) for n in range(1, 5)), (10, "/b", 0), (11, "/b", 0))
    walk = index.walk({})
    seen = []
    for queued in walk:
        seen.append(queued.id)
        if queued.repo == "/a":
            walk.took(queued)  # /a's jobs are placed, /b's wait
    assert seen == [1, 10, 11, 2, 3, 4]
    walk = index.walk({})
    taken = []
    for queued in walk:
        taken.append(queued.id)
        walk.took(queued)  # every job placed: the repositories alternate
    assert taken == [1, 10, 2, 11, 3, 4]


def test_a_requeued_attempt_keeps_its_place_and_a_changed_record_moves() -> None:
    index = _index((1, "/a", 0), (2, "/a", 0), (3, "/a", 0))
    index.discard(1)
    assert _ids(index) == [2, 3]
    index.add(job(1, repo="/a", attempt=2))  # requeued: still the oldest
    assert _ids(index) == [1, 2, 3]
    index.add(job(1, repo="/a", attempt=2, reason="waiting"))  # same place: no duplicate
    index.add(job(3, repo="/a", priority=9))  # its pipeline's priority came in
    assert _ids(index) == [3, 1, 2]
    index.add(job(3, repo="/a"))
    assert _ids(index) == [1, 2, 3]
    index.discard(2)
    index.discard(2)
    assert _ids(index) == [1, 3]
    index.clear()
    assert _ids(index) == [] and len(index) == 0


def test_jobs_that_leave_from_the_front_cost_no_rescan() -> None:
    index = _index(*((n, "/a", 0) for n in range(1000)))
    for n in range(999):
        index.discard(n)
    assert _ids(index) == [999]
    bucket = index._buckets[(0, "/a")]
    assert len(bucket.ids) - bucket.head <= 2  # the dead ids were stepped over or compacted


_op = st.one_of(
    st.tuples(st.just("add"), st.integers(0, 40), st.sampled_from("abc"), st.integers(-1, 1)),
    st.tuples(st.just("discard"), st.integers(0, 40), st.just(""), st.just(0)),
)


@settings(max_examples=300, deadline=None)
@given(
    ops=st.lists(_op, max_size=120),
    running=st.dictionaries(st.sampled_from("abc"), st.integers(0, 3)),
)
def test_a_walk_yields_each_queued_job_once_in_order(
    ops: list[tuple[str, int, str, int]], running: dict[str, int]
) -> None:
    index, queued = QueueIndex(), {}
    for op, job_id, repo, priority in ops:
        if op == "add":
            queued[job_id] = job(job_id, repo=repo, priority=priority)
            index.add(queued[job_id])
        else:
            queued.pop(job_id, None)
            index.discard(job_id)
    walked = list(index.walk(running))
    assert sorted(j.id for j in walked) == sorted(queued) and len(index) == len(queued)
    assert walked == [queued[j.id] for j in walked]  # the current record of each
    priorities = [j.priority for j in walked]
    assert priorities == sorted(priorities, reverse=True)
    for repo in "abc":  # within a repository and priority: by age
        for priority in (-1, 0, 1):
            ids = [j.id for j in walked if j.repo == repo and j.priority == priority]
            assert ids == sorted(ids)
    # Fair share: at each step of a priority, the repository chosen has the
    # fewest running among those with jobs left.
    left = {(j.priority, j.repo) for j in walked}
    for n, chosen in enumerate(walked):
        rest = walked[n:]
        level = [j for j in rest if j.priority == chosen.priority]
        fewest = min(running.get(j.repo, 0) for j in level)
        assert running.get(chosen.repo, 0) == fewest
        assert (chosen.priority, chosen.repo) in left
