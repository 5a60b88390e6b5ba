"""Choosing runners: the matching runner with the most free slots."""

from __future__ import annotations

from narwhal.dispatcher.links import Link, Slots


def _link(name: str, capacity: int, busy: int = 0, **labels: str) -> Link:
    link = Link(endpoint=f"tcp://127.0.0.1:{len(name)}", alias=name.encode())
    link.state, link.runner_id, link.capacity, link.labels = "ready", name, capacity, labels
    link.jobs = {(i, 1) for i in range(busy)}
    return link


def test_most_free_slots_first_and_ties_go_to_the_first_connected() -> None:
    a, b, c = _link("a", 2), _link("b", 3), _link("c", 3)
    slots = Slots([a, b, c])
    taken = [slots.take({}) for _ in range(8)]
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
    assert not slots and slots.take({}) is None


def test_labels_pick_only_matching_runners_and_share_the_counts() -> None:
    gpu = _link("gpu", 2, gpu="yes")
    plain = _link("plain", 1)
    busy = _link("busy", 1, busy=1, gpu="yes")
    lost = _link("lost", 4)
    lost.state = "connecting"
    slots = Slots([gpu, plain, busy, lost])
    assert slots.take({"gpu": "yes"}) is gpu
    assert slots.take({}) is gpu  # 1 left each: the first connected
    assert slots.take({"gpu": "yes"}) is None  # its last slot went to an unlabelled job
    assert slots.take({}) is plain
    assert not slots
