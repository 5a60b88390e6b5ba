"""The present, as the dispatcher's metrics feed tells it, and the browsers that hear of it.

The feed's subscriber (``mesh.subscriber``) keeps a ``Replica`` of the
dispatcher's state; ``Live`` reads it for ``GET /api/state`` and the
websocket's first message, and hears of each update once the replica
applied it: every update goes to every browser as it came (``update``),
runner updates also feed the runners' load history, job updates tell the
log followers of new attempts, and a new snapshot (a gap, a dispatcher
restart) goes to every browser as a fresh ``state``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from narwhal.backend.hub import Hub, encode
from narwhal.backend.logs import Followers
from narwhal.backend.runners import RunnerHistory
from narwhal.mesh.feed import JobView, RunnerView, Update, to_map
from narwhal.mesh.replica import Replica


class Live:
    """The replica's state as JSON, and its updates fanned out (module docstring)."""

    def __init__(
        self,
        hub: Hub,
        replica: Replica,
        feed_status: Callable[[], dict[str, Any]],
        followers: Followers,
        history: RunnerHistory | None = None,
    ) -> None:
        self.hub = hub
        self.replica = replica
        self._feed_status = feed_status
        self.followers = followers
        self.history = history or RunnerHistory()

    # what the subscriber tells, once the replica applied it

    def on_snapshot(self) -> None:
        """The replica starts over from a snapshot: every browser gets the state again."""
        for runner in self.replica.runners.values():
            self._record(runner)
        for job_id in self.followers.followed():
            if (job := self.replica.job(job_id)) is not None:
                self.followers.job_changed(job.id, job.attempt)
        self.hub.broadcast(self.state_message())

    def on_update(self, update: Update) -> None:
        if update.topic == RunnerView.TOPIC:
            for runner in update.items:
                self._record(runner)
        elif update.topic == JobView.TOPIC:
            for job in update.items:
                self.followers.job_changed(job.id, job.attempt)
        if not update.items:
            return
        items = [to_map(item) for item in update.items]
        self.hub.broadcast(
            encode({"type": "update", "topic": update.topic.decode(), "items": items})
        )

    def _record(self, runner: RunnerView) -> None:
        if runner.id is not None:
            busy = runner.capacity - runner.free if runner.state != "gone" else 0
            self.history.record(runner.id, busy, runner.capacity)

    # what the page asks

    def state(self) -> dict[str, Any]:
        """``GET /api/state`` (docs/backend.md): the replica's maps and the feed's status."""
        return self.replica.render() | {"feed": self._feed_status()}

    def state_message(self) -> str:
        return encode({"type": "state", "state": self.state()})

    def runner(self, runner_id: str) -> dict[str, Any] | None:
        """The feed's view of a runner, by id (None: not connected now)."""
        for runner in self.replica.runners.values():
            if runner.id == runner_id:
                return to_map(runner)
        return None
