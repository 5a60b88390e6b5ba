"""Why queued jobs wait: one verdict per label set, a change only when the reason is new."""

from __future__ import annotations

from narwhal.dispatcher.links import Link
from narwhal.dispatcher.mesh import LinkState
from narwhal.dispatcher.waiting import NO_RUNNER, NO_SLOT, Explainer, changed_reasons
from tests.dispatcher.test_placement import job


def _link(n: int, capacity: int, labels: dict[str, str], held: int = 0) -> Link:
    link = Link(endpoint=f"tcp://127.0.0.1:{9000 + n}", alias=b"%d" % n, state=LinkState.READY)
    link.capacity, link.labels = capacity, labels
    link.jobs = {(100 + i, 1) for i in range(held)}
    return link


def test_reasons_name_the_missing_labels_or_the_full_runners() -> None:
    queue = [
        job(1, "queued", reason="submitted", labels={"gpu": "a100"}),
        job(2, "queued", reason="submitted", labels={"os": "linux"}),
        job(3, "queued", reason="submitted"),
    ]
    full = _link(1, 1, {"os": "linux"}, held=1)
    assert changed_reasons(queue, [full]) == [
        (1, 1, "waiting: no runner offers gpu=a100"),
        (2, 1, NO_SLOT),
        (3, 1, NO_SLOT),
    ]
    free = _link(2, 2, {})
    assert changed_reasons(queue, [full, free]) == [
        (1, 1, "waiting: no runner offers gpu=a100"),
        (2, 1, NO_SLOT),  # only the full runner offers os=linux
    ]
    assert changed_reasons(queue, []) == [(n, 1, NO_RUNNER) for n in (1, 2, 3)]
    lost = _link(3, 4, {"gpu": "a100"})
    lost.state = LinkState.CONNECTING
    assert changed_reasons(queue[:1], [lost]) == [(1, 1, NO_RUNNER)]


def test_a_reason_already_given_is_not_written_again() -> None:
    queue = [job(1, "queued", reason=NO_SLOT), job(2, "queued", reason="submitted")]
    assert changed_reasons(queue, [_link(1, 1, {}, held=1)]) == [(2, 1, NO_SLOT)]


def test_the_queue_is_not_looked_at_again_while_nothing_changed() -> None:
    explainer = Explainer()
    queue = {1: job(1, "queued", reason="submitted")}
    full = _link(1, 1, {}, held=1)
    assert explainer.look(queue, [full]) == [(1, 1, NO_SLOT)]
    # Not applied, yet not reported again: nothing it depends on changed.
    assert explainer.look(queue, [full]) == []
    queue[2] = job(2, "queued", reason="submitted")
    assert explainer.look(queue, [full]) == [(1, 1, NO_SLOT), (2, 1, NO_SLOT)]
    full.jobs.clear()  # a slot is free: no reason to give, but it looked
    assert explainer.look(queue, [full]) == []
    full.jobs.add((9, 1))
    assert explainer.look(queue, [full]) == [(1, 1, NO_SLOT), (2, 1, NO_SLOT)]
    del queue[2]
    queue[2] = job(2, "queued", reason="requeued", attempt=2)  # same length, new attempt
    assert explainer.look(queue, [full]) == [(1, 1, NO_SLOT), (2, 2, NO_SLOT)]
