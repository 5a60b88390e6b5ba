"""Choosing runners: the matching runner with the most free slots (``MostFree``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from narwhal.dispatcher.links import Link
from narwhal.dispatcher.mesh import LinkState, Peer
from narwhal.dispatcher.placement import MostFree, Placement
from narwhal.dispatcher.records import JobRecord


def job(job_id: int, state: str, **fields: Any) -> JobRecord:
    """A job record as the store would return it (no store needed)."""
    values: dict[str, Any] = {
        "id": job_id,
        "repo": "/r",
        "ref": "refs/heads/main",
        "sha": None,
        "event": "push",
        "labels": {},
        "matrix": None,
        "parent_id": None,
        "pipeline": None,
        "state": state,
        "reason": state,
        "attempt": 1,
        "runner_id": None,
        "cancel_requested": False,
        "created_at": 0.0,
        "updated_at": 0.0,
        "started_at": None,
        "finished_at": None,
    }
    return JobRecord(**{**values, **fields})


def _link(name: str, capacity: int, busy: int = 0, **labels: str) -> Link:
    link = Link(endpoint=f"tcp://127.0.0.1:{len(name)}", alias=name.encode())
    link.state, link.runner_id, link.capacity, link.labels = LinkState.READY, name, capacity, labels
    link.jobs = {(i, 1) for i in range(busy)}
    return link


def _job(**labels: str) -> JobRecord:
    return job(1, "queued", labels=labels)


def test_most_free_slots_first_and_ties_go_to_the_first_connected() -> None:
    a, b, c = _link("a", 2), _link("b", 3), _link("c", 3)
    slots = MostFree().round([a, b, c])
    taken = [slots.take(_job()) for _ in range(8)]
    assert [link.runner_id if link else None for link in taken] == [
        "b",
        "c",
        "a",
        "b",
        "c",
        "a",
        "b",
        "c",
    ]
    assert not slots and slots.take(_job()) is None


def test_labels_pick_only_matching_runners_and_share_the_counts() -> None:
    gpu = _link("gpu", 2, gpu="yes")
    plain = _link("plain", 1)
    busy = _link("busy", 1, busy=1, gpu="yes")
    lost = _link("lost", 4)
    lost.state = LinkState.CONNECTING
    slots = MostFree().round([gpu, plain, busy, lost])
    assert slots.take(_job(gpu="yes")) is gpu
    assert slots.take(_job()) is gpu  # 1 left each: the first connected
    assert slots.take(_job(gpu="yes")) is None  # its last slot went to an unlabelled job
    assert slots.take(_job()) is plain
    assert not slots


def test_a_round_counts_only_its_own_slots_and_reads_the_whole_job() -> None:
    """The round reserves nothing on the runners (the mesh does); a policy sees the job."""
    a = _link("a", 1)
    policy: Placement = MostFree()
    first = policy.round([a])
    assert first.take(_job()) is a and not first
    assert a.free == 1  # nothing held: the next round offers it again
    assert policy.round([a]).take(job(2, "queued", repo="/other", matrix={"py": "3"})) is a


class _Repo:
    """A policy of another kind, to show the protocol fits one: runners by repository."""

    def __init__(self, runner_of: dict[str, str]) -> None:
        self.runner_of = runner_of

    def round(self, peers: Sequence[Peer]) -> _RepoRound:
        return _RepoRound({p.runner_id: p for p in peers if p.free}, self.runner_of)


class _RepoRound:
    def __init__(self, peers: dict[str | None, Peer], runner_of: dict[str, str]) -> None:
        self.peers, self.runner_of = peers, runner_of

    def __bool__(self) -> bool:
        return bool(self.peers)

    def take(self, job: JobRecord) -> Peer | None:
        return self.peers.get(self.runner_of.get(job.repo))


def test_another_policy_needs_no_change_elsewhere() -> None:
    a, b = _link("a", 1), _link("b", 1)
    policy: Placement = _Repo({"/r/x": "b"})  # type-checked against the protocol
    slots = policy.round([a, b])
    assert slots.take(job(1, "queued", repo="/r/x")) is b
    assert slots.take(job(2, "queued", repo="/r/y")) is None
