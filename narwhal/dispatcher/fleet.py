"""Which runners can take a job: placement's filters, why each runner fails them, in
words, and the verdicts (``Placed``, ``Waiting``) that carry those words.

A runner is judged by the filters in this order; the first it fails is what
a pending explanation says of it (``REASONS`` names them):

- label: it offers each of the job's labels but ``os`` and ``arch``;
- platform: it offers the job's ``os=`` and ``arch=`` (a runner's report
  adds ``os=<its os>`` and ``arch=<its arch>`` to its labels; labels it
  declares win), so a job asking ``os=windows`` finds no linux runner;
- resources: the job's ``cpus`` are at most its CPUs and its ``memory`` at
  most its available memory (less what this round already placed there);
- disk: at least ``MIN_DISK`` free in its work folder;
- quarantined: ``Health`` does not block it;
- full: a free slot.

A runner that reported nothing of itself passes resources and disk:
unknown is not excluded (a runner before its first report would otherwise
take nothing). It offers no ``os=``/``arch=`` it did not declare, though:
a job that asks for a platform goes where the platform is known.

A ``Fleet`` is the ready runners of one round or one look, judged once per
(label set, needs): the queue holds many jobs of few kinds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from narwhal.dispatcher.health import Health
from narwhal.dispatcher.mesh import LinkState, Peer
from narwhal.dispatcher.records import JobRecord

#: Why a job waits: the ``reason`` of a ``Waiting`` (the label of the pending
#: jobs metric), the first that applies to every runner in this order.
REASONS = (
    "no_runner",  # no runner is connected and ready
    "label",  # no runner offers one of its labels
    "platform",  # no runner offers its os= or arch=
    "resources",  # no runner has the CPUs or memory its resources: ask for
    "disk",  # every runner that could take it is short of disk
    "quarantined",  # the runners that could take it are quarantined
    "full",  # the runners that could take it have no free slot
    "held",  # held for a busy runner with its repository warm (bounded)
)
NO_RUNNER, LABEL, PLATFORM, RESOURCES, DISK, QUARANTINED, FULL, HELD = range(len(REASONS))

#: Free disk below which a runner takes no job. A checkout writes the
#: repository's work tree beside its mirror, and the build writes more;
#: short of room git or the engine fails with ENOSPC, a fault of the
#: runner's side that would quarantine it for what the operator fixes by
#: freeing disk (or the mirror cache's bound does). 512 MiB holds the work
#: tree of a large repository and a build's usual output.
MIN_DISK = 512 * 2**20
#: The labels a runner's report supplies.
PLATFORM_LABELS = ("os", "arch")

NO_RUNNER_TEXT = "waiting: no runner connected"


@dataclass(frozen=True, slots=True)
class Placed:
    """The job goes to ``peer``; ``text`` says why, in words (recorded as the
    assignment's reason): ``placed on runner-b: mirror warm, 3 commits behind;
    2 others cold``."""

    peer: Peer
    text: str


@dataclass(frozen=True, slots=True)
class Waiting:
    """The job waits this round: ``reason`` one of ``REASONS``, ``text`` in words,
    runner by runner: ``waiting: 0 of 3 runners can take it: 2 full (4/4, 2/2
    slots), 1 lacks label gpu=yes``."""

    reason: str
    text: str


Verdict = Placed | Waiting

#: What jobs are judged by: their labels and resource needs.
Key = tuple[frozenset[tuple[str, str]], float | None, int | None]


class Failure(NamedTuple):
    """One runner failing one filter for one kind of job."""

    stage: int
    runner: int
    #: label, platform: the label it lacks (``gpu=yes``); resources: ``cpus``
    #: or ``memory``; quarantined: why, in words.
    what: str = ""
    #: platform: its value (None: not known); resources: its CPUs or bytes
    #: available; disk: bytes free; full: free slots this round.
    has: float | str | None = None
    #: resources: what the job asks.
    asked: float = 0.0


#: What a runner's report says for placement: its labels with the report's
#: os= and arch=, CPUs, memory available, disk free, load per CPU.
Static = tuple[Mapping[str, str], int | None, int | None, int | None, float]
#: Per peer (by id): the report and labels that ``Static`` was read from.
Known = dict[int, tuple[object, object, Static]]


def key_of(job: JobRecord) -> Key:
    return (frozenset(job.labels.items()), job.cpus, job.memory)


def size(n: float) -> str:
    """Bytes in words: ``1.5 GiB``, ``300 MiB``."""
    if n >= 2**30:
        return f"{n / 2**30:.1f} GiB"
    return f"{n / 2**20:.0f} MiB"


@dataclass(slots=True)
class Runner:
    """One ready runner as placement judges it (a snapshot taken for one round)."""

    peer: Peer
    name: str
    capacity: int
    free: int
    #: Its labels with its report's os= and arch= (declared ones win).
    labels: Mapping[str, str]
    cpus: int | None
    #: Bytes of memory available, and free on disk (None: not reported).
    memory: int | None
    disk: int | None
    #: The one-minute load average per CPU (0.0: not reported).
    load: float
    #: Why health blocks it now (None: it does not).
    blocked: str | None
    #: Its current streak of faults of its side.
    faults: int

    @classmethod
    def of(cls, peer: Peer, health: Health, now: float, known: Known | None = None) -> Runner:
        """``known``: what earlier rounds read from reports, by peer (reports change seldom)."""
        report, labels = peer.report, peer.labels
        name = peer.runner_id or peer.endpoint
        if report is None:
            static: Static = (labels, None, None, None, 0.0)
        else:
            seen = None if known is None else known.get(id(peer))
            if seen is not None and seen[0] is report and seen[1] is labels:
                static = seen[2]
            else:
                offered = {"os": report.os, "arch": report.arch, **labels}
                load = report.load / max(1, report.cpus)
                static = (offered, report.cpus, report.memory_available, report.disk_free, load)
                if known is not None:
                    if len(known) >= 65536:  # peers replaced: the old ones go
                        known.clear()
                    known[id(peer)] = (report, labels, static)
        offers, cpus, memory, disk, load = static
        blocked, faults = health.blocked(name, now), health.faults(name)
        return cls(
            peer, name, peer.capacity, peer.free, offers, cpus, memory, disk, load, blocked, faults
        )

    def judge(
        self, i: int, labels: Sequence[tuple[str, str]], cpus: float | None, memory: int | None
    ) -> Failure | None:
        """The first filter it (runner ``i``) fails for a job, free slots aside; None: none."""
        own = self.labels
        for name, value in labels:
            if own.get(name) != value:
                stage = PLATFORM if name in PLATFORM_LABELS else LABEL
                return Failure(stage, i, f"{name}={value}", own.get(name))
        if cpus is not None and self.cpus is not None and cpus > self.cpus:
            return Failure(RESOURCES, i, "cpus", self.cpus, cpus)
        if memory and self.memory is not None and memory > self.memory:
            return Failure(RESOURCES, i, "memory", self.memory, memory)
        if self.disk is not None and self.disk < MIN_DISK:
            return Failure(DISK, i, "", self.disk)
        if self.blocked is not None:
            return Failure(QUARANTINED, i, self.blocked)
        return None


def _ordered(labels: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """Labels before platform, each in name order: the words name the first missing."""
    return tuple(sorted(labels, key=lambda kv: (kv[0] in PLATFORM_LABELS, kv)))


class Sorting:
    """The runners of a fleet that pass every filter but the slot for one kind of job.

    Built from the runners that offer its labels (shared by every kind with
    that label set); why each other runner fails (``failed``) is worked out
    only when a job of the kind waits.
    """

    __slots__ = ("_failed", "_key", "_runners", "capable", "passing", "passes", "reached", "stage")

    def __init__(
        self, runners: Sequence[Runner], key: Key, labelled: tuple[list[int], int]
    ) -> None:
        self._runners, self._key = runners, key
        self._failed: list[Failure] | None = None
        _, cpus, memory = key
        offering, reached = labelled
        #: Indices of the runners that pass; of those that pass label,
        #: platform and resources (they could take it once free or healthy).
        self.passing: list[int] = []
        self.capable: list[int] = []
        for i in offering:
            runner = runners[i]
            if (cpus is not None and runner.cpus is not None and cpus > runner.cpus) or (
                memory and runner.memory is not None and memory > runner.memory
            ):
                reached = max(reached, RESOURCES)
                continue
            self.capable.append(i)
            if runner.disk is not None and runner.disk < MIN_DISK:
                reached = max(reached, DISK)
            elif runner.blocked is not None:
                reached = max(reached, QUARANTINED)
            else:
                self.passing.append(i)
        self.passes = frozenset(self.passing)
        #: The furthest filter a runner that fails one reached; and of all
        #: (``FULL``: some pass every filter).
        self.reached = reached
        self.stage = FULL if self.passing else reached

    @property
    def failed(self) -> list[Failure]:
        """Each runner that fails a filter, and the first it fails."""
        if self._failed is None:
            labels, cpus, memory = self._key
            ordered = _ordered(labels)
            judged = (r.judge(i, ordered, cpus, memory) for i, r in enumerate(self._runners))
            self._failed = [f for f in judged if f is not None]
        return self._failed


class Fleet:
    """The ready runners among ``peers``, judged once per kind of job."""

    def __init__(
        self, peers: Iterable[Peer], health: Health, now: float, known: Known | None = None
    ) -> None:
        ready = LinkState.READY
        self.runners = [
            Runner.of(peer, health, now, known) for peer in peers if peer.state == ready
        ]
        self._sorted: dict[Key, Sorting] = {}
        self._labelled: dict[frozenset[tuple[str, str]], tuple[list[int], int]] = {}

    def sort(self, key: Key) -> Sorting:
        sorting = self._sorted.get(key)
        if sorting is None:
            labelled = self._labelled.get(key[0])
            if labelled is None:
                labelled = self._labelled[key[0]] = self._offering(key[0])
            sorting = self._sorted[key] = Sorting(self.runners, key, labelled)
        return sorting

    def _offering(self, labels: frozenset[tuple[str, str]]) -> tuple[list[int], int]:
        """The runners that offer ``labels``, and how far the others got (label, platform)."""
        ordered = _ordered(labels)
        offering, stage = [], NO_RUNNER
        for i, runner in enumerate(self.runners):
            own = runner.labels
            missing = next((name for name, value in ordered if own.get(name) != value), None)
            if missing is None:
                offering.append(i)
            else:
                stage = max(stage, PLATFORM if missing in PLATFORM_LABELS else LABEL)
        return offering, stage

    def why(self, sorting: Sorting, key: Key, more: Sequence[Failure] = ()) -> tuple[str, str]:
        """(reason, text) for a job none of whose runners can take it now.

        ``more``: what the runners that pass every filter lack now (``FULL``: a
        slot; ``RESOURCES``: the memory this round's jobs took; ``QUARANTINED``:
        its probe job is out).
        """
        if not self.runners:
            return REASONS[NO_RUNNER], NO_RUNNER_TEXT
        stage = max([sorting.reached, *(f.stage for f in more)]) if more else sorting.stage
        if stage in (LABEL, PLATFORM):
            return REASONS[stage], self._nobody(sorting, key, stage)
        failures = [*sorting.failed, *more]
        parts = []
        for shown in range(FULL, NO_RUNNER, -1):  # the runners nearest to taking it first
            group = [f for f in failures if f.stage == shown]
            if group:
                parts.append(_WORDS[shown](self, group))
        n = len(self.runners)
        text = f"waiting: 0 of {n} runner{'s' if n != 1 else ''} can take it: "
        return REASONS[stage], text + ", ".join(parts)

    def _nobody(self, sorting: Sorting, key: Key, stage: int) -> str:
        """``no runner offers os=windows: it waits until one joins``."""
        platform = stage == PLATFORM
        wanted = [f"{k}={v}" for k, v in sorted(key[0]) if (k in PLATFORM_LABELS) == platform]
        reached = [self.runners[f.runner].labels for f in sorting.failed if f.stage >= stage]
        missing = [w for w in wanted if not any(_offers(labels, w) for labels in reached)]
        return f"no runner offers {','.join(missing or wanted)}: it waits until one joins"


def _offers(labels: Mapping[str, str], label: str) -> bool:
    name, _, value = label.partition("=")
    return labels.get(name) == value


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _most(failures: Sequence[Failure]) -> float:
    return max(float(f.has) for f in failures if isinstance(f.has, int | float))


def _full(fleet: Fleet, failures: list[Failure]) -> str:
    slots = []
    for failure in failures[:3]:
        runner = fleet.runners[failure.runner]
        free = failure.has if isinstance(failure.has, int) else runner.free
        slots.append(f"{runner.capacity - free}/{runner.capacity}")
    more = ", ..." if len(failures) > 3 else ""
    return f"{len(failures)} full ({', '.join(slots)}{more} slots)"


def _quarantined(fleet: Fleet, failures: list[Failure]) -> str:
    reasons = list(dict.fromkeys(f.what for f in failures))
    more = "; ..." if len(reasons) > 2 else ""
    return f"{len(failures)} quarantined: {'; '.join(reasons[:2])}{more}"


def _disk(fleet: Fleet, failures: list[Failure]) -> str:
    lead = "" if len(failures) == 1 else "at most "
    free = f"{lead}{size(_most(failures))} free, it needs {size(MIN_DISK)}"
    return f"{_count(len(failures), 'is', 'are')} short of disk ({free})"


def _resources(fleet: Fleet, failures: list[Failure]) -> str:
    parts = []
    for what in ("cpus", "memory"):
        found = [f for f in failures if f.what == what]
        if not found:
            continue
        has = _count(len(found), "has", "have") + ("" if len(found) == 1 else " at most")
        most, asked = _most(found), found[0].asked
        if what == "cpus":
            parts.append(f"{has} {most:g} CPUs, it asks {asked:g}")
        else:
            parts.append(f"{has} {size(most)} free, it asks {size(asked)}")
    return ", ".join(parts)


def _labels(fleet: Fleet, failures: list[Failure]) -> str:
    groups: dict[str, int] = {}
    for failure in failures:
        groups[failure.what] = groups.get(failure.what, 0) + 1
    return ", ".join(f"{_count(n, 'lacks', 'lack')} label {label}" for label, n in groups.items())


def _platforms(fleet: Fleet, failures: list[Failure]) -> str:
    groups: dict[tuple[str, str], int] = {}
    for failure in failures:
        shown = (failure.what, str(failure.has or "not reported"))
        groups[shown] = groups.get(shown, 0) + 1
    return ", ".join(f"{_count(n, 'lacks', 'lack')} {w} ({has})" for (w, has), n in groups.items())


_WORDS: dict[int, Callable[[Fleet, list[Failure]], str]] = {
    FULL: _full,
    QUARANTINED: _quarantined,
    DISK: _disk,
    RESOURCES: _resources,
    PLATFORM: _platforms,
    LABEL: _labels,
}
