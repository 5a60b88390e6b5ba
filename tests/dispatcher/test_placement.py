"""Choosing runners: filters and their words, the policies, the share cap, the bounded wait.

Against ``FakePeer``\\ s with reports (no socket); ``tests/dispatcher/
test_placement_props.py`` checks the policies' promises on random fleets.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections import Counter, OrderedDict
from collections.abc import Sequence
from typing import Any

import pytest

from narwhal.dispatcher.health import Health
from narwhal.dispatcher.mesh import LinkState, Peer
from narwhal.dispatcher.order import QueueIndex
from narwhal.dispatcher.placement import (
    REASONS,
    Placed,
    Placement,
    Round,
    Verdict,
    Waiting,
    policy,
)
from narwhal.dispatcher.records import JobRecord
from narwhal.dispatcher.signals import Signals
from narwhal.errors import ConfigError
from narwhal.mesh import protocol as p
from narwhal.testing import FakePeer

GIB = 2**30


def job(job_id: int, state: str = "queued", **fields: Any) -> JobRecord:
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


def report(
    *,
    cpus: int = 4,
    load: float = 0.0,
    memory: int = 8 * GIB,
    disk: int = 50 * GIB,
    os: str = "linux",
    arch: str = "amd64",
    warm: dict[str, str] | None = None,
    cache: tuple[int, int] = (0, 0),
) -> p.RunnerState:
    """What a runner reports; ``warm``: repository -> the commit its mirror is at."""
    mirrors = tuple(
        p.WarmRepo(repo=repo, sha=sha, used_at=0.0, size=1) for repo, sha in (warm or {}).items()
    )
    return p.RunnerState(
        cpus=cpus,
        load=load,
        memory_total=memory,
        memory_available=memory,
        disk_free=disk,
        os=os,
        arch=arch,
        docker=True,
        mirrors=mirrors,
        mirror_bytes=cache[0],
        mirror_limit=cache[1],
    )


def runner(
    name: str,
    capacity: int = 2,
    *,
    busy: int = 0,
    labels: dict[str, str] | None = None,
    state: p.RunnerState | None = None,
) -> FakePeer:
    peer = FakePeer(
        endpoint=f"tcp://{name}:7000",
        runner_id=name,
        capacity=capacity,
        labels=dict(labels or {}),
        report=state,
        state=LinkState.READY,
    )
    peer.held = {(9000 + n, 1) for n in range(busy)}
    return peer


class Clock:
    """Monotonic time a test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def placing(name: str, signals: Signals | None = None, clock: Clock | None = None) -> Placement:
    return policy(name, signals or Signals(), rng=random.Random(7), clock=clock or Clock())


def take(placement: Placement, peers: Sequence[FakePeer], *jobs: JobRecord) -> list[Verdict]:
    """One round over ``peers``; each placed job's slot reserved as the mesh does."""
    slots = placement.round(peers)
    verdicts = []
    for queued in jobs:
        verdict = slots.take(queued)
        if isinstance(verdict, Placed):
            verdict.peer.held.add((queued.id, queued.attempt))
        verdicts.append(verdict)
    return verdicts


def where(verdicts: Sequence[Verdict]) -> list[str | None]:
    return [v.peer.runner_id if isinstance(v, Placed) else None for v in verdicts]


def checked(signals: Signals, runner_id: str, repo: str, *shas: str) -> None:
    """``runner_id`` checked out ``shas`` of ``repo`` (the first cold, in 4 s; then 1 s each)."""
    for n, sha in enumerate(shas):
        signals.checked_out(
            runner_id, repo, sha, seconds=4.0 if n == 0 else 1.0, cold=n == 0, now=0
        )


# filters, in words


def test_a_job_no_runner_can_take_says_why_runner_by_runner() -> None:
    peers = [
        runner("a", 4, busy=4, labels={"gpu": "yes"}),
        runner("b", 2, busy=2, labels={"gpu": "yes"}),
        runner("c", 2),
    ]
    wanted = job(1, labels={"gpu": "yes"})
    for name in ("affinity", "spread", "pack"):
        placement = placing(name)
        waiting = take(placement, peers, wanted)[0]
        assert waiting == Waiting(
            "full",
            "waiting: 0 of 3 runners can take it: 2 full (4/4, 2/2 slots), 1 lacks label gpu=yes",
        )
        assert placement.explain(wanted, list(peers)) == waiting  # filters alone say the same
    assert take(placing("affinity"), [], wanted) == [
        Waiting("no_runner", "waiting: no runner connected")
    ]


def test_a_label_no_runner_offers_waits_until_one_joins() -> None:
    peers = [runner("a", labels={"zone": "b"}), runner("b", labels={"zone": "c"})]
    verdicts = take(placing("spread"), peers, job(1, labels={"zone": "d", "gpu": "yes"}))
    assert verdicts == [
        Waiting("label", "no runner offers gpu=yes,zone=d: it waits until one joins")
    ]


def test_a_report_offers_its_platform_and_declared_labels_win() -> None:
    linux = runner("linux", state=report(os="linux", arch="arm64"))
    declared = runner("declared", labels={"os": "windows"}, state=report(os="linux"))
    silent = runner("silent")  # no report: no os it did not declare
    windows = job(1, labels={"os": "windows"})
    arm = job(2, labels={"os": "linux", "arch": "arm64"})
    assert where(take(placing("spread"), [linux, declared, silent], windows, arm)) == [
        "declared",
        "linux",
    ]
    waiting = take(placing("spread"), [linux, silent], windows)[0]
    assert waiting == Waiting("platform", "no runner offers os=windows: it waits until one joins")
    explained = placing("spread").explain(job(3, labels={"arch": "s390x"}), [linux, silent])
    assert explained == Waiting("platform", "no runner offers arch=s390x: it waits until one joins")


def test_resources_count_what_the_round_placed_and_say_what_each_runner_has() -> None:
    small = runner("small", 4, state=report(cpus=2, memory=16 * GIB))
    big = runner("big", 4, state=report(cpus=8, memory=6 * GIB))
    unknown = runner("unknown", 1, busy=1)  # no report: not excluded, but full
    jobs = [job(n, cpus=4.0, memory=4 * GIB) for n in (1, 2)]
    verdicts = take(placing("spread"), [small, big, unknown], *jobs)
    assert where(verdicts) == ["big", None]  # 6 GiB less 4 placed leaves 2
    assert verdicts[1] == Waiting(
        "full",
        "waiting: 0 of 3 runners can take it: 1 full (1/1 slots),"
        " 1 has 2 CPUs, it asks 4, 1 has 2.0 GiB free, it asks 4.0 GiB",
    )
    alone = take(placing("spread"), [small], job(3, cpus=4.0))[0]
    assert alone == Waiting(
        "resources", "waiting: 0 of 1 runner can take it: 1 has 2 CPUs, it asks 4"
    )
    needless = take(placing("spread"), [small], job(4))  # no needs: every runner passes
    assert where(needless) == ["small"]


def test_a_runner_short_of_disk_takes_nothing() -> None:
    short = runner("short", state=report(disk=100 * 2**20))
    verdict = take(placing("spread"), [short], job(1))[0]
    assert verdict == Waiting(
        "disk",
        "waiting: 0 of 1 runner can take it: 1 is short of disk (100 MiB free, it needs 512 MiB)",
    )
    assert not placing("spread").round([short])  # and its slots are not offered


def test_a_quarantined_runner_takes_nothing_and_says_why() -> None:
    signals = Signals()
    for repo in ("/a", "/b", "/a"):
        signals.ended("bad", repo, fault="checkout", duration=1.0, now=Clock().now)
    bad = runner("bad")
    full = runner("full", 1, busy=1)
    verdict = take(placing("affinity", signals), [bad, full], job(1))[0]
    assert verdict == Waiting(
        "full",
        "waiting: 0 of 2 runners can take it: 1 full (1/1 slots),"
        " 1 quarantined: 3 checkout failures in a row",
    )
    alone = take(placing("spread", signals), [bad], job(1))[0]
    assert alone.reason == "quarantined"


# the policies


def test_spread_takes_the_most_free_fraction_then_the_least_load() -> None:
    a = runner("a", 4, busy=2, state=report(load=0.0))
    b = runner("b", 2, state=report(cpus=4, load=2.0))
    c = runner("c", 2, state=report(cpus=4, load=1.0))
    verdicts = take(placing("spread"), [a, b, c], *(job(n) for n in range(1, 6)))
    assert where(verdicts) == ["c", "b", "a", "c", "b"]
    assert verdicts[0].text == "placed on c: least loaded (0/2 slots, load 0.2)"  # type: ignore[union-attr]


def test_ties_go_at_random_but_the_same_for_the_same_seed() -> None:
    peers = [runner(name, 1) for name in "abcdefgh"]
    first = where(take(placing("spread"), peers, *(job(n) for n in range(8))))
    for peer in peers:
        peer.held.clear()
    assert where(take(placing("spread"), peers, *(job(n) for n in range(8)))) == first
    assert first != list("abcdefgh") and sorted(first) == list("abcdefgh")  # type: ignore[type-var]


def test_pack_fills_the_fullest_runner_first() -> None:
    a, b = runner("a", 4, busy=1), runner("b", 4, busy=2)
    verdicts = take(placing("pack"), [a, b], *(job(n) for n in range(4)))
    assert where(verdicts) == ["b", "b", "a", "a"]
    assert verdicts[0].text == "placed on b: fullest that fits (2/4 slots)"  # type: ignore[union-attr]


def test_affinity_takes_the_warm_runner_with_the_fewest_commits_behind() -> None:
    signals = Signals()
    checked(signals, "x", "/r", "c1", "c2", "c3", "c4", "c5")
    far = runner("far", state=report(warm={"/r": "c1"}))
    near = runner("near", state=report(warm={"/r": "c4"}))
    cold = runner("cold", 4, state=report(load=0.0))
    unknown = runner("unknown", state=report(warm={"/r": "never-seen"}))
    placement = placing("affinity", signals)
    verdicts = take(placement, [far, near, cold, unknown], job(1, sha="c5"))
    assert verdicts[0].text == (  # type: ignore[union-attr]
        "placed on near: mirror warm, 1 commit behind; 2 others warm, 1 cold"
    )
    assert where(take(placement, [far, cold], job(2))) == ["far"]  # behind, still warm
    assert where(take(placement, [cold, unknown], job(3))) == ["unknown"]
    other = take(placement, [far, near, cold], job(4, repo="/other"))[0]
    assert other.text.startswith(
        "placed on cold: cold, no runner that can take it has its mirror warm"
    )


def test_a_burst_of_one_repository_spreads_over_the_runners() -> None:
    """The share cap: the warm runner takes 1, 2, then at most 40% of the jobs under way + 1."""
    signals = Signals()
    checked(signals, "home", "/r", "c1")
    home = runner("home", 8, state=report(warm={"/r": "c1"}))
    others = [runner(name, 8, state=report()) for name in ("b", "c", "d")]
    verdicts = take(placing("affinity", signals), [home, *others], *(job(n) for n in range(10)))
    on = Counter(where(verdicts))
    assert on["home"] == 5 and sum(on.values()) == 10, on  # 0.4 * 9 + 1 = 4.6 > 4
    capped = next(v for v in verdicts if isinstance(v, Placed) and v.peer is not home)
    assert "cold, home has it warm but runs 2 of the 2 jobs under way" in capped.text
    # One at a time (nothing else under way), every job goes to the warm runner.
    for peer in (home, *others):
        peer.held.clear()
    placement = placing("affinity", signals)
    for n in range(5):
        assert where(take(placement, [home, *others], job(100 + n))) == ["home"]
        home.held.clear()


def test_the_cap_never_makes_a_job_wait() -> None:
    home = runner("home", 8, state=report(warm={"/r": "c1"}))
    verdicts = take(placing("affinity"), [home], *(job(n) for n in range(8)))
    assert where(verdicts) == ["home"] * 8


def test_a_job_waits_for_a_busy_warm_runner_no_longer_than_the_checkout_it_saves() -> None:
    signals, clock = Signals(), Clock()
    checked(signals, "warm", "/r", "c1", "c2")  # cold 4 s, warm 1 s: it saves 3 s
    warm = runner("warm", 1, busy=1, state=report(warm={"/r": "c2"}))
    cold = runner("cold", 2, state=report())
    placement = placing("affinity", signals, clock)
    slots = placement.round([warm, cold])
    held = slots.take(job(1, sha="c2"))
    assert held == Waiting(
        "held",
        "waiting up to 3.0 s for warm (mirror warm, up to date) rather than clone cold on cold",
    )
    assert slots.retry_at() == pytest.approx(103.0)
    clock.now = 102.0  # a later round: the wait counts from the first
    again = placement.round([warm, cold])
    assert again.take(job(1, sha="c2")).text.startswith("waiting up to 1.0 s for warm")
    assert again.retry_at() == pytest.approx(103.0)
    clock.now = 103.0
    spilled = placement.round([warm, cold]).take(job(1, sha="c2"))
    assert isinstance(spilled, Placed) and spilled.peer is cold
    assert spilled.text.startswith("placed on cold: cold after waiting 3.0 s for warm (warm, full)")


def test_no_wait_before_a_saving_was_measured() -> None:
    warm = runner("warm", 1, busy=1, state=report(warm={"/r": "c1"}))
    cold = runner("cold", 1, state=report())
    slots = placing("affinity").round([warm, cold])
    verdict = slots.take(job(1))
    assert isinstance(verdict, Placed) and verdict.peer is cold
    assert verdict.text.startswith("placed on cold: cold, warm has it warm but is full")
    assert slots.retry_at() is None


def test_a_repository_just_placed_cold_is_warming_there_for_the_next_job() -> None:
    a, b = runner("a", 2, state=report()), runner("b", 2, state=report())
    verdicts = take(placing("affinity"), [a, b], job(1), job(2))
    assert where(verdicts)[0] == where(verdicts)[1]  # one clone, the second waits for it there
    assert "mirror warming: a job of it is under way there" in verdicts[1].text


def test_a_runner_that_just_failed_counts_as_cold() -> None:
    signals = Signals()
    signals.ended("warm", "/r", fault="checkout", duration=1.0, now=0.0)
    warm = runner("warm", 2, state=report(warm={"/r": "c1"}))
    cold = runner("cold", 2, state=report())
    assert where(take(placing("affinity", signals), [warm, cold], job(1))) == ["cold"]


def test_a_cold_clone_goes_where_the_mirror_cache_has_room() -> None:
    full = runner("full", 2, state=report(warm={"/x": "c1"}, cache=(10, 10)))
    roomy = runner("roomy", 2, busy=1, state=report(warm={"/x": "c1"}, cache=(5, 10)))
    verdict = take(placing("affinity"), [full, roomy], job(1, repo="/new"))[0]
    assert verdict.text.startswith("placed on roomy: cold, no runner")
    assert "room in its mirror cache" in verdict.text


def test_probation_gives_a_recovering_runner_one_job() -> None:
    health = Health(period=10.0)
    signals, clock = Signals(health), Clock()
    for repo in ("/a", "/b", "/c"):
        signals.ended("sick", repo, fault="engine", duration=1.0, now=clock.now)
    sick = runner("sick", 4)
    clock.now += 10.0
    verdicts = take(placing("spread", signals, clock), [sick], job(1), job(2))
    assert where(verdicts) == ["sick", None]
    assert verdicts[1].reason == "quarantined"
    assert "its probe job is out" in verdicts[1].text


def test_unknown_policies_are_refused() -> None:
    with pytest.raises(ConfigError, match="affinity, spread, pack"):
        policy("random", Signals())


class _Repo:
    """A policy of another kind, to show the protocol fits one: runners by repository."""

    def __init__(self, runner_of: dict[str, str]) -> None:
        self.runner_of = runner_of

    def round(self, peers: Sequence[Peer]) -> Round:
        return _RepoRound({peer.runner_id: peer for peer in peers if peer.free}, self.runner_of)

    def explain(self, job: JobRecord, peers: Sequence[Peer]) -> Waiting | None:
        return None


class _RepoRound:
    def __init__(self, peers: dict[str | None, Peer], runner_of: dict[str, str]) -> None:
        self.peers, self.runner_of = peers, runner_of

    def __bool__(self) -> bool:
        return bool(self.peers)

    def take(self, job: JobRecord) -> Verdict:
        peer = self.peers.get(self.runner_of.get(job.repo))
        return Waiting("label", "not its runner") if peer is None else Placed(peer, "its runner")

    def retry_at(self) -> float | None:
        return None


def test_another_policy_needs_no_change_elsewhere() -> None:
    a, b = runner("a", 1), runner("b", 1)
    placement: Placement = _Repo({"/r/x": "b"})  # type-checked against the protocol
    slots = placement.round([a, b])
    assert where([slots.take(job(1, repo="/r/x")), slots.take(job(2, repo="/r/y"))]) == ["b", None]
    assert "held" in REASONS


# a model of the benchmark: 4 runners, 8 repositories, bounded mirror caches


class _Model:
    """Runners whose mirror caches hold ``cache`` repositories (the least recently
    used goes), jobs in bursts with new commits between, time moved by events.

    A cold clone takes 2 s, a warm fetch 0.1 s, a second job of a repository
    being cloned waits for the clone (the runner's lock on its mirror), a job
    runs 0.1-0.5 s after its checkout.
    """

    def __init__(self, name: str, seed: int, *, cache: int = 3) -> None:
        self.rng = random.Random(seed)
        self.clock = Clock()
        self.signals = Signals()
        self.placement = policy(name, self.signals, rng=random.Random(seed), clock=self.clock)
        self.cache = cache
        self.peers = [runner(f"r{n}", 2, state=report()) for n in range(4)]
        self.mirrors = {f"r{n}": OrderedDict[str, str]() for n in range(4)}
        self.repos = [f"/repo/{n}" for n in range(8)]
        self.commits = {repo: [f"{repo}@0"] for repo in self.repos}
        self.index, self.running = QueueIndex(), Counter[str]()
        self.events: list[tuple[float, int, str, Any]] = []
        self.ids = itertools.count(1)
        self.on: Counter[str] = Counter()
        self.checkout = 0.0
        self.colds = 0
        self.cloning: dict[tuple[str, str], float] = {}

    def at(self, when: float, what: str, data: Any = None) -> None:
        heapq.heappush(self.events, (when, next(self.ids), what, data))

    def run(self, bursts: int = 4, size: int = 20) -> None:
        for n in range(bursts):
            self.at(self.clock.now + 30.0 * n, "burst", (n, size))
        while self.events:
            when, _, what, data = heapq.heappop(self.events)
            self.clock.now = when
            getattr(self, f"_{what}")(data)
            self._round()

    def _burst(self, data: tuple[int, int]) -> None:
        n, size = data
        for repo in self.repos:
            if n and self.rng.random() < 0.7:
                self.commits[repo].append(f"{repo}@{len(self.commits[repo])}")
        for _ in range(size):
            repo = self.rng.choice(self.repos)
            self.index.add(job(next(self.ids), repo=repo, sha=self.commits[repo][-1]))

    def _retry(self, _: None) -> None:
        pass  # the round after it

    def _round(self) -> None:
        slots = self.placement.round(self.peers)
        walk = self.index.walk(self.running)
        placed = []
        for queued in walk:
            if not slots:
                break
            verdict = slots.take(queued)
            if isinstance(verdict, Placed):
                walk.took(queued)
                placed.append((queued, verdict.peer))
        for queued, peer in placed:
            self.index.discard(queued.id)
            peer.held.add((queued.id, 1))  # type: ignore[attr-defined]
            self.running[queued.repo] += 1
            self._start(queued, peer)
        retry = slots.retry_at()
        if retry is not None:
            self.at(max(retry, self.clock.now), "retry")

    def _start(self, queued: JobRecord, peer: Peer) -> None:
        name, now = peer.runner_id or "", self.clock.now
        cloning = self.cloning.get((name, queued.repo), 0.0)
        if cloning > now:
            took, cold = cloning - now + 0.1, False
        elif queued.repo in self.mirrors[name]:
            took, cold = 0.1, False
        else:
            took, cold = 2.0, True
            self.cloning[(name, queued.repo)] = now + took
        self.checkout += took
        self.colds += cold
        self.on[name] += 1
        self.at(now + took, "checked", (queued, peer, took, cold))

    def _checked(self, data: tuple[JobRecord, FakePeer, float, bool]) -> None:
        queued, peer, took, cold = data
        name, sha = peer.runner_id or "", queued.sha or ""
        mirror = self.mirrors[name]
        mirror[queued.repo] = sha
        mirror.move_to_end(queued.repo)
        while len(mirror) > self.cache:
            mirror.popitem(last=False)
        peer.report = report(warm=dict(reversed(mirror.items())), cache=(len(mirror), self.cache))
        now = self.clock.now
        self.signals.checked_out(name, queued.repo, sha, seconds=took, cold=cold, now=now)
        duration = self.rng.uniform(0.1, 0.5)
        self.at(now + duration, "done", (queued, peer, took + duration))

    def _done(self, data: tuple[JobRecord, FakePeer, float]) -> None:
        queued, peer, duration = data
        peer.held.discard((queued.id, 1))
        self.running[queued.repo] -= 1
        name = peer.runner_id or ""
        self.signals.ended(name, queued.repo, fault="", duration=duration, now=self.clock.now)


def test_with_4_runners_and_8_repositories_no_runner_gets_more_than_40_percent() -> None:
    for seed in range(6):
        affinity, spread = _Model("affinity", seed), _Model("spread", seed)
        affinity.run()
        spread.run()
        assert sum(affinity.on.values()) == 80 == sum(spread.on.values())
        assert max(affinity.on.values()) <= 32, affinity.on  # 40% of 80
        assert max(spread.on.values()) <= 32, spread.on
        # And its point: far fewer clones, far less time checking out.
        assert affinity.colds <= spread.colds / 2, (affinity.colds, spread.colds)
        assert affinity.checkout < spread.checkout * 2 / 3, (affinity.checkout, spread.checkout)
