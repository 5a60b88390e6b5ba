"""Placeholder until the mesh branch lands (taken from it at merge)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from narwhal.dispatcher.mesh import Peer
from narwhal.dispatcher.records import JobRecord


class Round(Protocol):
    def __bool__(self) -> bool: ...

    def take(self, job: JobRecord) -> Peer | None: ...


class Placement(Protocol):
    def round(self, peers: Sequence[Peer]) -> Round: ...


class MostFree:
    def round(self, peers: Sequence[Peer]) -> Round:
        raise NotImplementedError
