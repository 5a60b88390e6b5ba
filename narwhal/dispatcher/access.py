"""How the dispatcher reaches its job store: writes on the loop, reads on a thread.

Writes are short group commits (one per scheduling round or frame batch).
Run on the event loop they cost less than a hop to a thread, whose Python
half would contend with the loop for the GIL anyway. Reads (the API,
recovery) can be long (a whole log), so they run on one thread with a
second, read-only connection; WAL lets it read while the writer commits,
and it sees every write committed before the call. Checkpoints, the slow
part of WAL, run on that thread too, so no commit waits for one.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from narwhal.dispatcher.store.sqlite import SqliteStore
from narwhal.errors import NarwhalError

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Seconds between WAL checkpoints (on the reader thread).
CHECKPOINT_INTERVAL = 1.0


class StoreAccess:
    """The dispatcher's two connections to one SQLite job store."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="narwhal-store")
        self._writer: SqliteStore | None = None
        self._reader: SqliteStore | None = None

    async def open(self) -> None:
        await asyncio.to_thread(self._path.parent.mkdir, parents=True, exist_ok=True)
        self._writer = SqliteStore(self._path, autocheckpoint=False)
        self._reader = await self._on_thread(SqliteStore, self._path, readonly=True)

    async def close(self) -> None:
        if self._reader is not None:
            await self._on_thread(self._reader.close)
        self._thread.shutdown(wait=True)
        if self._writer is not None:
            self._writer.close()

    async def read(self, method: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call a reading ``SqliteStore`` method on the reader thread."""
        assert self._reader is not None  # noqa: S101 - set in open()
        return await self._on_thread(method, self._reader, *args, **kwargs)

    def write(self, method: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call a writing ``SqliteStore`` method, here on the loop."""
        assert self._writer is not None  # noqa: S101 - set in open()
        return method(self._writer, *args, **kwargs)

    async def checkpoint_loop(self) -> None:
        while True:
            await asyncio.sleep(CHECKPOINT_INTERVAL)
            try:
                await self.read(SqliteStore.checkpoint)
            except NarwhalError as e:
                log.warning("%s", e)

    async def _on_thread(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, functools.partial(fn, *args, **kwargs))
