"""Stores driven from plain tests, and a stand-in for the dispatcher's side of them."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from narwhal.config import DispatcherConfig
from narwhal.dispatcher.records import JobRecord
from narwhal.dispatcher.store.base import CreateJob, JobStore, NewJob, Write
from narwhal.dispatcher.store.memory import MemoryStore
from narwhal.dispatcher.store.open import store_for
from narwhal.dispatcher.store.sqlite import SqliteStore
from narwhal.storeurl import StoreUrl


class Driven:
    """A store whose coroutines run to completion on one loop, so tests read plainly."""

    def __init__(self, store: JobStore, runner: asyncio.Runner) -> None:
        self.store = store
        self.runner = runner

    def write(self, *writes: Write) -> list[Any]:
        """One unit of work: ``writes`` in one transaction; their results."""
        return self.runner.run(self.store.apply(writes))

    def one(self, write: Write) -> Any:
        return self.write(write)[0]

    def job(self, **fields: Any) -> JobRecord:
        """A new queued job (repo /r, ref refs/heads/main, push unless given)."""
        new = NewJob(
            **{"repo": "/r", "ref": "refs/heads/main", "sha": None, "event": "push"} | fields
        )
        job, created = self.one(CreateJob(job=new))
        assert created
        return job  # type: ignore[no-any-return]

    def __getattr__(self, name: str) -> Any:
        read = getattr(self.store, name)
        return lambda *args, **kwargs: self.runner.run(read(*args, **kwargs))


def open_store(
    kind: str, path: Path, runner: asyncio.Runner, url: StoreUrl | None = None
) -> Driven:
    """``kind`` sqlite (at ``path``), memory, or postgresql (at ``url``)."""
    store: JobStore
    if kind == "postgresql":
        assert url is not None
        store = store_for(url)
    else:
        store = SqliteStore(path) if kind == "sqlite" else MemoryStore()
    runner.run(store.open())
    return Driven(store, runner)


class StoreHost:
    """What the dispatcher offers its store's users (``store``, ``write``, ``write_soon``).

    ``write_soon`` keeps the writes until ``flush``, where the dispatcher
    would add them to its next unit of work.
    """

    def __init__(self, store: JobStore, config: DispatcherConfig) -> None:
        self.store = store
        self.config = config
        self.soon: list[Write] = []

    async def write(self, *writes: Write) -> list[Any]:
        return await self.store.apply(writes)

    def write_soon(self, write: Write) -> None:
        self.soon.append(write)

    async def flush(self) -> None:
        writes, self.soon = self.soon, []
        await self.store.apply(writes)
