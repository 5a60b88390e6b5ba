"""A recording ``MeshEvents``: what a mesh (``RunnerPool``, ``FakeMesh``) reports, in order."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from narwhal.dispatcher.mesh import Key, Peer
from narwhal.errors import NarwhalError
from narwhal.mesh import protocol as p


class RecordingEvents:
    """A ``MeshEvents`` that records each report, in order, in ``log``.

    ``stray``: what ``on_stray`` answers; ``fail``: raised by the next
    ``on_frames`` (then cleared), as a store that refuses a write would.
    """

    def __init__(self, *, stray: bool = True) -> None:
        self.stray = stray
        self.fail: NarwhalError | None = None
        self.log: list[tuple[Any, ...]] = []
        self.released = 0
        #: Per ``on_frames`` call: each frame, with whether its runner then held its slot.
        self.batches: list[list[tuple[Peer, p.Message, bool]]] = []

    async def on_ready(self, peer: Peer, ready: p.Ready) -> None:
        self.log.append(("ready", peer.runner_id, ready.active))

    async def on_frames(self, frames: list[tuple[Peer, p.Message]]) -> None:
        if self.fail is not None:
            error, self.fail = self.fail, None
            self.log.append(("refused", len(frames)))
            raise error
        self.batches.append(
            [(peer, m, (m.job_id, m.attempt) in peer.held) for peer, m in frames]  # type: ignore[attr-defined]
        )
        self.log.append(("frames", [m.KIND for _, m in frames]))

    async def on_stray(self, peer: Peer, message: p.Message) -> bool:
        self.log.append(("stray", message.KIND, self.stray))
        return self.stray

    async def on_lost(self, peer: Peer, held: Sequence[Key], reason: str) -> None:
        self.log.append(("lost", peer.runner_id, list(held), reason))

    def on_released(self) -> None:
        self.released += 1
        self.log.append(("released",))

    def kinds(self) -> list[str]:
        """The reports so far, by name."""
        return [entry[0] for entry in self.log]
