"""The present, as the dispatcher's metrics feed tells it, and the browsers that hear of it.

The feed's subscriber (``mesh.subscriber``) keeps a ``Replica`` of the
dispatcher's state; ``Live`` reads it for ``GET /api/state`` and the
websocket's first message, and hears of each update once the replica
applied it: every update goes to every browser as it came (``update``),
runner updates also feed the runners' load history, and a new snapshot (a
gap, a dispatcher restart) goes to every browser as a fresh ``state``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from narwhal.backend.hub import Hub, encode
from narwhal.backend.runners import RunnerHistory
from narwhal.mesh.feed import RunnerView, Update


def plain(item: Any) -> Any:
    """A feed record as a JSON map (nested records and tuples as maps and lists)."""
    return dataclasses.asdict(item) if dataclasses.is_dataclass(item) else item


class Live:
    """The replica's state as JSON, and its updates fanned out (module docstring)."""

    def __init__(self, hub: Hub, history: RunnerHistory | None = None) -> None:
        self.hub = hub
        self.history = history or RunnerHistory()
        self.replica: Any = None

    def attach(self, replica: Any) -> None:
        """The replica the subscriber keeps up to date."""
        self.replica = replica

    # what the subscriber tells

    def on_snapshot(self) -> None:
        """The replica starts over from a snapshot: every browser gets the state again."""
        for runner in self._runners():
            self._record(runner)
        self.hub.broadcast(self.state_message())

    def on_update(self, update: Update) -> None:
        if update.topic == b"runner":
            for runner in update.items:
                self._record(runner)
        if not update.items:  # a beat: nothing for the page
            return
        message = {"type": "update", "topic": update.topic.decode(), "items": []}
        message["items"] = [plain(item) for item in update.items]
        self.hub.broadcast(encode(message))

    def _record(self, runner: RunnerView) -> None:
        if runner.id is not None:
            busy = runner.capacity - runner.free if runner.state != "gone" else 0
            self.history.record(runner.id, busy, runner.capacity)

    # what the page asks

    def state(self) -> dict[str, Any]:
        """``GET /api/state`` (docs/backend.md)."""
        replica = self.replica
        return {
            "runners": [plain(r) for r in self._runners()],
            "jobs": [plain(j) for j in _values(getattr(replica, "jobs", None))],
            "steps": [plain(s) for s in _values(getattr(replica, "steps", None))],
            "queue": plain(getattr(replica, "queue", None)),
            "stats": plain(getattr(replica, "stats", None)),
            "feed": self.feed_status(),
        }

    def state_message(self) -> str:
        return encode({"type": "state", "state": self.state()})

    def feed_status(self) -> dict[str, Any]:
        replica = self.replica
        return {
            "connected": bool(getattr(replica, "connected", False)),
            "epoch": getattr(replica, "epoch", "") or "",
            "seq": getattr(replica, "seq", 0) or 0,
            "gaps": getattr(replica, "gaps", 0) or 0,
            "missed": getattr(replica, "missed", 0) or 0,
        }

    def runner(self, runner_id: str) -> dict[str, Any] | None:
        for runner in self._runners():
            if runner.id == runner_id:
                return dict(plain(runner))
        return None

    def _runners(self) -> list[RunnerView]:
        return list(_values(getattr(self.replica, "runners", None)))


def _values(found: Any) -> list[Any]:
    if found is None:
        return []
    if isinstance(found, dict):
        return list(found.values())
    return list(found)
