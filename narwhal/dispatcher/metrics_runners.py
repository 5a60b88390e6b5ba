"""The runner half of the dispatcher's metrics: gauges read from the mesh at scrape time.

Links by state, each ready runner's slots, what each reports of itself
(``RunnerState``: load, memory, disk, mirror cache) and whether it is
quarantined (``health``). The names and their HELP are listed in
``dispatcher.metrics``' docstring.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from narwhal.dispatcher.core import Dispatcher
from narwhal.dispatcher.mesh import LinkState, Peer
from narwhal.mesh.protocol import RunnerState
from narwhal.metrics import Registry, Sample

#: Per-runner gauges read from its report: name, HELP, what of the report.
_REPORTED: tuple[tuple[str, str, Callable[[RunnerState], float]], ...] = (
    (
        "narwhal_runner_load",
        "One-minute load average each ready runner reports.",
        lambda report: report.load,
    ),
    (
        "narwhal_runner_memory_available_bytes",
        "Memory each ready runner reports available.",
        lambda report: report.memory_available,
    ),
    (
        "narwhal_runner_disk_free_bytes",
        "Bytes free in each ready runner's work folder, as it reports.",
        lambda report: report.disk_free,
    ),
    (
        "narwhal_runner_warm_repositories",
        "Repositories in each ready runner's mirror cache, as it reports.",
        lambda report: len(report.mirrors),
    ),
)


class RunnerMetrics:
    """The scrape-time readers of one dispatcher's runners."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self._dispatcher = dispatcher

    def register(self, r: Registry) -> None:
        """Add the runner metrics to ``r`` (``metrics``' docstring lists them)."""
        r.collected("narwhal_runners", "Runner links by state.", self._runners, labels=["state"])
        r.collected(
            "narwhal_runner_slots",
            "Slots each ready runner offers.",
            self._slots,
            labels=["runner"],
        )
        r.collected(
            "narwhal_runner_slots_busy",
            "Slots of each ready runner that hold a job.",
            self._busy,
            labels=["runner"],
        )
        for name, help_text, read in _REPORTED:
            r.collected(name, help_text, self._reported(read), labels=["runner"])
        r.collected(
            "narwhal_runner_quarantined",
            "1 while a ready runner is quarantined for its own faults (its probe job"
            " included), else 0.",
            self._quarantined,
            labels=["runner"],
        )
        r.collected(
            "narwhal_bad_frames_total",
            "Frames from runners refused: malformed, oversized, unknown, or out of place.",
            self._bad_frames,
            kind="counter",
        )

    def _runners(self) -> Iterable[Sample]:
        counts = dict.fromkeys(LinkState, 0)
        for peer in self._dispatcher.mesh.peers():
            counts[peer.state] += 1
        return [((str(state),), n) for state, n in counts.items()]

    def _ready_slots(self) -> dict[str, tuple[int, int]]:
        """(slots, busy) per ready runner id; one id on two links is summed, not repeated."""
        slots: dict[str, tuple[int, int]] = {}
        for peer in self._dispatcher.mesh.peers():
            if peer.state != LinkState.READY or peer.runner_id is None:
                continue
            total, busy = slots.get(peer.runner_id, (0, 0))
            slots[peer.runner_id] = (
                total + peer.capacity,
                busy + max(0, peer.capacity - peer.free),
            )
        return slots

    def _slots(self) -> Iterable[Sample]:
        return [((runner,), total) for runner, (total, _) in self._ready_slots().items()]

    def _busy(self) -> Iterable[Sample]:
        return [((runner,), busy) for runner, (_, busy) in self._ready_slots().items()]

    def _ready(self) -> dict[str, Peer]:
        """Each ready runner id's first link (one id on two links is shown once)."""
        ready: dict[str, Peer] = {}
        for peer in self._dispatcher.mesh.peers():
            if peer.state == LinkState.READY and peer.runner_id is not None:
                ready.setdefault(peer.runner_id, peer)
        return ready

    def _reported(self, read: Callable[[RunnerState], float]) -> Callable[[], Iterable[Sample]]:
        def collect() -> Iterable[Sample]:
            return [
                ((runner,), read(peer.report))
                for runner, peer in self._ready().items()
                if peer.report is not None
            ]

        return collect

    def _quarantined(self) -> Iterable[Sample]:
        health, now = self._dispatcher.signals.health, time.monotonic()
        return [
            ((runner,), int(health.to_json(runner, now) is not None)) for runner in self._ready()
        ]

    def _bad_frames(self) -> Iterable[Sample]:
        return [((), self._dispatcher.mesh.stats().bad_frames)]
