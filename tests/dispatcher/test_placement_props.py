"""What every placement policy promises, on random fleets and queues (hypothesis).

No runner gets more jobs than its free slots; no job goes to a runner that
does not offer its labels (os= and arch= included) or lacks its CPUs or
memory (less what the round placed there), its disk or its health; and a
job waits only if no runner that passes every filter has a slot, or it is
held for a busy warm runner, which ends by ``retry_at``.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from narwhal.dispatcher.fleet import MIN_DISK
from narwhal.dispatcher.mesh import LinkState
from narwhal.dispatcher.placement import POLICIES, REASONS, Placed, policy
from narwhal.dispatcher.records import JobRecord
from narwhal.dispatcher.signals import Signals
from narwhal.mesh import protocol as p
from narwhal.testing import FakePeer
from tests.dispatcher.test_placement import GIB, Clock, job

REPOS = ("/a", "/b", "/c")
SHAS = ("c1", "c2", "c3")

_reports = st.builds(
    lambda cpus, memory, disk, os, arch, warm: p.RunnerState(
        cpus=cpus,
        load=cpus / 3,
        memory_total=16 * GIB,
        memory_available=memory * GIB,
        disk_free=disk,
        os=os,
        arch=arch,
        docker=True,
        mirrors=tuple(p.WarmRepo(repo=r, sha=s, used_at=0.0, size=1) for r, s in warm.items()),
    ),
    st.integers(1, 8),
    st.integers(0, 12),
    st.sampled_from((0, 100 * 2**20, MIN_DISK, 50 * GIB, 50 * GIB, 50 * GIB)),
    st.sampled_from(("linux", "windows")),
    st.sampled_from(("amd64", "arm64")),
    st.dictionaries(st.sampled_from(REPOS), st.sampled_from(SHAS), max_size=3),
)
_labels = st.dictionaries(
    st.sampled_from(("gpu", "zone", "os", "arch")),
    st.sampled_from(("yes", "a", "linux", "arm64")),
    max_size=2,
)
_runners = st.lists(
    st.tuples(
        st.integers(0, 4),  # capacity
        st.sampled_from((0, 0, 1, 2, 4)),  # busy
        st.just({}) | _labels,
        st.none() | _reports,
        st.sampled_from((True, True, True, False)),  # ready
        st.sampled_from((False, False, False, True)),  # quarantined
    ),
    min_size=1,
    max_size=6,
)
_jobs = st.lists(
    st.tuples(
        st.just({}) | _labels,
        st.sampled_from((None, None, 1.0, 4.0)),
        st.sampled_from((None, None, GIB, 6 * GIB)),
        st.sampled_from(REPOS),
        st.sampled_from((None, *SHAS)),
    ),
    min_size=1,
    max_size=16,
)


def _fleet(runners: list[tuple[Any, ...]], signals: Signals, now: float) -> list[FakePeer]:
    peers = []
    for n, (capacity, busy, labels, state, ready, sick) in enumerate(runners):
        name = f"r{n}"
        peer = FakePeer(
            endpoint=f"tcp://{name}:1", runner_id=name, capacity=capacity, labels=labels
        )
        peer.report, peer.state = state, LinkState.READY if ready else LinkState.CONNECTING
        peer.held = {(10_000 + k, 1) for k in range(min(busy, capacity))}
        if sick:
            for repo in REPOS:
                signals.ended(name, repo, fault="engine", duration=1.0, now=now)
        peers.append(peer)
    return peers


def _offers(peer: FakePeer, labels: Mapping[str, str]) -> bool:
    own: dict[str, str] = dict(peer.labels)
    if peer.report is not None:
        own = {"os": peer.report.os, "arch": peer.report.arch, **peer.labels}
    return all(own.get(k) == v for k, v in labels.items())


def _passes(peer: FakePeer, queued: JobRecord, memory: int | None, blocked: bool) -> bool:
    """Every filter but the slot, as the module doc of ``fleet`` states them."""
    if peer.state != LinkState.READY or blocked or not _offers(peer, queued.labels):
        return False
    report = peer.report
    if report is None:
        return True
    if queued.cpus is not None and queued.cpus > report.cpus:
        return False
    if queued.memory and memory is not None and queued.memory > memory:
        return False
    return report.disk_free >= MIN_DISK


class _Expected:
    """What a round may do, followed job by job: slots and memory left, blocked runners."""

    def __init__(self, peers: list[FakePeer], signals: Signals, now: float) -> None:
        self.health, self.now = signals.health, now
        self.free = {peer.runner_id: peer.free for peer in peers}
        self.memory = {
            peer.runner_id: None if peer.report is None else peer.report.memory_available
            for peer in peers
        }
        self.blocked = {peer.runner_id: self._sick(peer) for peer in peers}
        for peer in peers:  # a runner short of disk or quarantined offers no slot
            short = peer.report is not None and peer.report.disk_free < MIN_DISK
            if short or self.blocked[peer.runner_id]:
                self.free[peer.runner_id] = 0
        self.placed: dict[str | None, int] = {}

    def _sick(self, peer: FakePeer) -> bool:
        return self.health.blocked(peer.runner_id or "", self.now) is not None

    def could(self, peers: list[FakePeer], queued: JobRecord) -> list[FakePeer]:
        """The runners with a slot left that pass every filter for ``queued``."""
        return [
            peer
            for peer in peers
            if self.free[peer.runner_id]
            and _passes(peer, queued, self.memory[peer.runner_id], self.blocked[peer.runner_id])
        ]

    def took(self, peer: FakePeer, queued: JobRecord) -> None:
        name = peer.runner_id
        self.placed[name] = self.placed.get(name, 0) + 1
        self.free[name] -= 1
        left = self.memory[name]
        if queued.memory and left is not None:
            self.memory[name] = left - queued.memory
        if self._sick(peer):  # that was its probe
            self.free[name], self.blocked[name] = 0, True


def _measured(signals: Signals, runners: int) -> None:
    """Savings known: affinity may hold jobs for busy warm runners (5 s cold, 1 s warm)."""
    for n in range(runners):
        for repo in REPOS:
            signals.checked_out(f"r{n}", repo, "c1", seconds=5.0, cold=True, now=0.0)
            for sha in SHAS:
                signals.checked_out(f"r{n}", repo, sha, seconds=1.0, cold=False, now=0.0)


@settings(max_examples=250, deadline=None)
@given(runners=_runners, jobs=_jobs, seed=st.integers(0, 2**16), measured=st.booleans())
def test_no_policy_exceeds_capacity_or_ignores_a_filter(
    runners: list[tuple[Any, ...]], jobs: list[tuple[Any, ...]], seed: int, measured: bool
) -> None:
    for name in POLICIES:
        clock, signals = Clock(), Signals()
        if measured:
            _measured(signals, len(runners))
        peers = _fleet(runners, signals, clock.now)
        expected = _Expected(peers, signals, clock.now)
        slots = policy(name, signals, rng=random.Random(seed), clock=clock).round(peers)
        for n, (labels, cpus, need, repo, sha) in enumerate(jobs):
            assert bool(slots) == any(expected.free.values()), name
            queued = job(n + 1, labels=labels, cpus=cpus, memory=need, repo=repo, sha=sha)
            could = expected.could(peers, queued)
            verdict = slots.take(queued)
            if isinstance(verdict, Placed):
                assert verdict.peer in could, (name, verdict.text)
                assert verdict.text.startswith(f"placed on {verdict.peer.runner_id}: ")
                verdict.peer.held.add((queued.id, 1))  # type: ignore[attr-defined]
                expected.took(verdict.peer, queued)  # type: ignore[arg-type]
            elif verdict.reason == "held":
                assert name == "affinity" and measured and could
                retry = slots.retry_at()
                assert retry is not None and clock.now < retry <= clock.now + 4.0
            else:
                assert verdict.reason in REASONS and not could, (name, verdict)
        for peer, (capacity, busy, *_) in zip(peers, runners, strict=True):
            assert expected.placed.get(peer.runner_id, 0) <= max(0, capacity - min(busy, capacity))


@settings(max_examples=150, deadline=None)
@given(runners=_runners, jobs=_jobs)
def test_explain_says_a_job_waits_exactly_when_no_runner_could_take_it(
    runners: list[tuple[Any, ...]], jobs: list[tuple[Any, ...]]
) -> None:
    clock, signals = Clock(), Signals()
    peers = _fleet(runners, signals, clock.now)
    placement = policy("affinity", signals, clock=clock)
    for n, (labels, cpus, need, repo, sha) in enumerate(jobs):
        queued = job(n + 1, labels=labels, cpus=cpus, memory=need, repo=repo, sha=sha)
        could = any(
            peer.free
            and _passes(
                peer,
                queued,
                None if peer.report is None else peer.report.memory_available,
                signals.health.blocked(peer.runner_id or "", clock.now) is not None,
            )
            for peer in peers
        )
        verdict = placement.explain(queued, peers)
        assert (verdict is None) == could, verdict
        if verdict is not None:
            assert verdict.reason in REASONS and verdict.reason != "held"
            ready = [peer for peer in peers if peer.state == LinkState.READY]
            if verdict.reason in ("label", "platform"):
                assert verdict.text.endswith(": it waits until one joins")
            elif not ready:
                assert verdict == (verdict.__class__("no_runner", "waiting: no runner connected"))
            else:
                assert verdict.text.startswith(f"waiting: 0 of {len(ready)} runner")
