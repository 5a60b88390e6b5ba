"""Why queued jobs wait: one verdict per kind of job, positions, estimated starts,
and a pass only when something it depends on changed."""

from __future__ import annotations

from narwhal.dispatcher.fleet import NO_RUNNER_TEXT
from narwhal.dispatcher.order import QueueIndex
from narwhal.dispatcher.placement import REASONS, Waiting, policy
from narwhal.dispatcher.records import JobRecord
from narwhal.dispatcher.signals import Signals
from narwhal.dispatcher.waiting import Explainer, Pending
from narwhal.testing import FakePeer
from tests.dispatcher.test_placement import Clock, job, report, runner


def _explainer(
    signals: Signals | None = None, clock: Clock | None = None
) -> tuple[Explainer, Signals]:
    signals, clock = signals or Signals(), clock or Clock()
    return Explainer(policy("affinity", signals, clock=clock), signals, clock=clock), signals


def _look(
    explainer: Explainer, queue: dict[int, JobRecord], peers: list[FakePeer]
) -> list[tuple[int, int, str]]:
    index = QueueIndex()
    for queued in queue.values():
        index.add(queued)
    return explainer.look(queue, index.walk({}), list(peers))


FULL = "waiting: 0 of 1 runner can take it: 1 full (1/1 slots)"


def test_each_job_says_why_it_waits_and_where_it_stands() -> None:
    explainer, _ = _explainer()
    full = runner("a", 1, busy=1, state=report())
    queue = {
        1: job(1, reason="submitted"),
        2: job(2, reason="submitted", labels={"gpu": "yes"}),
        3: job(3, reason="submitted", priority=5),
    }
    assert _look(explainer, queue, [full]) == [
        (3, 1, FULL),
        (1, 1, FULL),
        (2, 1, "no runner offers gpu=yes: it waits until one joins"),
    ]
    assert explainer.pending(3) == Pending("full", FULL, 1, None)
    assert explainer.pending(2) == Pending(
        "label", "no runner offers gpu=yes: it waits until one joins", 3, None
    )
    assert explainer.pending(2).to_json()["position"] == 3  # type: ignore[union-attr]
    counts = explainer.counts()
    assert list(counts) == list(REASONS) and counts["full"] == 2 and counts["label"] == 1
    assert _look(explainer, {}, []) == [] and explainer.pending(1) is None


def test_a_job_a_runner_can_take_now_has_no_pending_explanation() -> None:
    explainer, _ = _explainer()
    assert _look(explainer, {1: job(1, reason="submitted")}, [runner("a", 1)]) == []
    assert explainer.pending(1) is None
    assert _look(explainer, {1: job(1, reason="submitted")}, []) == [(1, 1, NO_RUNNER_TEXT)]


def test_a_rounds_verdict_wins_over_the_filters() -> None:
    explainer, _ = _explainer()
    held = Waiting("held", "waiting up to 3.0 s for b (mirror warm, up to date) rather than ...")
    queued = job(1, reason="submitted")
    explainer.saw(queued, held)
    free = runner("b", 1)
    assert _look(explainer, {1: queued}, [free]) == [(1, 1, held.text)]
    assert explainer.pending(1) == Pending("held", held.text, 1, None)
    explainer.saw(job(1, attempt=2), held)  # said of another attempt: not this one's
    assert _look(explainer, {1: queued}, [free]) == []


def test_the_queue_is_not_looked_at_again_while_nothing_changed() -> None:
    explainer, _ = _explainer()
    queue = {1: job(1, reason="submitted")}
    full = runner("a", 1, busy=1)
    assert _look(explainer, queue, [full]) == [(1, 1, FULL)]
    # Not applied (the store refused it, say): said again, without a pass.
    assert _look(explainer, queue, [full]) == [(1, 1, FULL)]
    queue[1] = queue[1]._replace(reason=FULL)  # applied: nothing new to say
    assert _look(explainer, queue, [full]) == []
    queue[2] = job(2, reason="submitted")
    assert _look(explainer, queue, [full]) == [(2, 1, FULL)]
    full.held.clear()  # a slot is free: no reason to give, but it looked
    assert _look(explainer, queue, [full]) == []
    assert explainer.pending(1) is None
    full.held.add((9, 1))
    assert _look(explainer, queue, [full]) == [(2, 1, FULL)]
    del queue[2]
    queue[2] = job(2, reason="requeued", attempt=2)  # same length, new attempt
    assert _look(explainer, queue, [full]) == [(2, 2, FULL)]
    queue[2] = queue[2]._replace(reason=FULL)
    full.report = report(disk=2**20)  # what a runner says of itself counts too
    short = "waiting: 0 of 1 runner can take it: 1 is short of disk (1 MiB free, it needs 512 MiB)"
    assert _look(explainer, queue, [full]) == [(1, 1, short), (2, 2, short)]


def test_a_quarantine_that_ends_is_noticed_without_any_other_change() -> None:
    signals, clock = Signals(), Clock()
    for repo in ("/a", "/b", "/c"):
        signals.ended("a", repo, fault="engine", duration=1.0, now=clock.now)
    explainer, _ = _explainer(signals, clock)
    queue = {1: job(1, reason="submitted")}
    changed = _look(explainer, queue, [runner("a", 1)])
    assert changed == [
        (1, 1, "waiting: 0 of 1 runner can take it: 1 quarantined: 3 engine failures in a row")
    ]
    clock.now += 60.0
    assert _look(explainer, queue, [runner("a", 1)]) == []  # on probation: it may take one
    assert explainer.pending(1) is None


def test_the_estimated_start_counts_the_jobs_ahead_for_the_same_runners() -> None:
    signals = Signals()
    for _ in range(3):
        signals.ended("x", "/r", fault="", duration=10.0, now=0.0)
    signals.ended("x", "/other", fault="", duration=100.0, now=0.0)
    explainer, _ = _explainer(signals)
    peers = [
        runner("a", 2, busy=2, labels={"pool": "x"}),
        runner("b", 1, busy=1, labels={"pool": "x"}),
        runner("gpu", 1, busy=1, labels={"gpu": "yes"}),
    ]
    queue = {n: job(n, reason="submitted", labels={"pool": "x"}) for n in range(1, 5)}
    queue[5] = job(5, reason="submitted", labels={"gpu": "yes"})  # competes with none of them
    queue[6] = job(6, reason="submitted", repo="/other", labels={"gpu": "yes"})
    queue[7] = job(7, reason="submitted", labels={"zone": "z"})
    _look(explainer, queue, peers)
    etas = {n: explainer.pending(n).eta for n in queue}  # type: ignore[union-attr]
    # 3 slots for the pool: 0-2 jobs ahead start within one job's time, the 4th within two;
    # /other has too few durations of its own: typical of all (a median of 10 s).
    assert etas == {1: 10.0, 2: 10.0, 3: 10.0, 4: 20.0, 5: 10.0, 6: 20.0, 7: None}
    assert _explainer()[0].look({}, [], []) == []
