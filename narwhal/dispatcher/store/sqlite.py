"""The SQLite job store: one file in WAL mode, the embedded default.

Two connections, each used from one place only:

- the writer, on the event loop. ``apply`` runs its transaction right
  inside the coroutine, with no ``await`` and no hop to a thread. A unit of
  work is a short group commit (one per scheduling round or frame batch,
  well under a millisecond): handing it to a thread would cost more than
  the commit itself, and the Python half of it would contend with the loop
  for the GIL anyway. That, and never waiting for a checkpoint, is what
  keeps dispatching fast. Nothing else writes, so the writer waits for a
  stranger's lock only briefly (``WRITE_WAIT_MS``) and the dispatcher
  retries.
- a read-only connection on one reader thread, for every read method:
  reads can be long (a whole log, recovery's lists), WAL lets them run
  while the writer commits, and each sees every write committed before it
  was called. WAL checkpoints, the slow part of WAL, run there too
  (``maintain``), so no commit waits for one.

The SQL lives beside this module: ``sqlite_jobs`` (job writes, with the
fenced UPDATE that enforces the state rules), ``sqlite_reads``,
``sqlite_tables`` (side tables), ``sqlite_usage`` (steps' samples),
``migrations`` (the schema, versioned).
sqlite3's errors become ``StoreError`` here and nowhere else.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar, assert_never

from narwhal.dispatcher.records import JobRecord, StepRecord, TransitionRecord
from narwhal.dispatcher.store import sqlite_jobs as jobs
from narwhal.dispatcher.store import sqlite_reads as reads
from narwhal.dispatcher.store import sqlite_tables as tables
from narwhal.dispatcher.store import sqlite_usage as usage
from narwhal.dispatcher.store.base import (
    AddEndpoint,
    AppendLog,
    AppendUsage,
    CreateJob,
    CreateJobs,
    DeleteSecret,
    DeleteToken,
    DropLogs,
    Holding,
    JobQuery,
    LogFootprint,
    Moves,
    PutSecret,
    PutToken,
    RequestCancel,
    SecretRow,
    SetCheckout,
    SetForks,
    SetReasons,
    StepFinished,
    StepStarted,
    TokenRow,
    TouchToken,
    Transition,
    UsageRecord,
    Write,
)
from narwhal.dispatcher.store.migrations import migrate
from narwhal.errors import NarwhalError, StoreError

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Bytes the WAL file is cut back to when it is reused after a checkpoint.
WAL_SIZE_LIMIT = 32 << 20

#: How long a write waits for another connection's lock before it fails.
WRITE_WAIT_MS = 250

#: How long a read waits for a lock (only a checkpoint's restart can hold one).
READ_WAIT_MS = 5000

#: Seconds between WAL checkpoints (on the reader thread).
CHECKPOINT_INTERVAL = 1.0

#: The writes ``_make_job`` leaves to ``_make_other``.
_OtherWrite = (
    RequestCancel
    | DropLogs
    | AppendUsage
    | AddEndpoint
    | PutToken
    | DeleteToken
    | TouchToken
    | PutSecret
    | DeleteSecret
    | SetForks
)


class SqliteStore:
    """Jobs, their history, steps and logs, and the side tables, in one SQLite file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._thread: ThreadPoolExecutor | None = None
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None

    # lifecycle

    async def open(self) -> None:
        """Open both connections, the schema brought up to date (``migrations``).

        ``StoreError`` if the file cannot be opened or its schema is newer
        than this code.
        """
        await asyncio.to_thread(self.path.parent.mkdir, parents=True, exist_ok=True)
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="narwhal-store")
        try:
            self._writer = _connect(self.path, readonly=False)
            self._reader = await self._on_thread(_connect, self.path, readonly=True)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Close both connections; idempotent."""
        if self._reader is not None:
            await self._on_thread(self._reader.close)
            self._reader = None
        if self._thread is not None:
            self._thread.shutdown(wait=True)
            self._thread = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    async def maintain(self) -> None:
        """Run until cancelled: a WAL checkpoint every ``CHECKPOINT_INTERVAL`` seconds."""
        while True:
            await asyncio.sleep(CHECKPOINT_INTERVAL)
            try:
                await self.checkpoint()
            except NarwhalError as e:
                log.warning("%s", e)

    async def checkpoint(self) -> None:
        """Copy what the WAL holds back into the database, without blocking the writer."""
        await self._read(lambda db: db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall())

    # writes

    async def apply(self, writes: Sequence[Write]) -> list[Any]:
        """Make ``writes`` in one transaction, here on the loop (see the module docstring)."""
        db = self._writer
        if db is None:
            raise StoreError(f"job store {self.path} is not open")
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:  # busy past WRITE_WAIT_MS, read-only, disk gone
            raise StoreError(str(e)) from e
        try:
            results = [_make(db, write) for write in writes]
        except sqlite3.Error as e:
            db.execute("ROLLBACK")
            raise StoreError(str(e)) from e
        except BaseException:
            db.execute("ROLLBACK")
            raise
        try:
            db.execute("COMMIT")
        except sqlite3.Error as e:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise StoreError(str(e)) from e
        return results

    # reads, on the reader thread

    async def get_job(self, job_id: int) -> JobRecord:
        return await self._read(reads.get_job, job_id)

    async def list_jobs(self, query: JobQuery) -> list[JobRecord]:
        return await self._read(reads.list_jobs, query)

    async def steps(self, job_id: int, attempt: int) -> list[StepRecord]:
        return await self._read(reads.steps, job_id, attempt)

    async def transitions(self, job_id: int) -> list[TransitionRecord]:
        return await self._read(reads.transitions, job_id)

    async def usage(self, job_id: int, attempt: int) -> dict[int, UsageRecord]:
        return await self._read(usage.usage, job_id, attempt)

    async def read_log(self, job_id: int, attempt: int, after: int = -1) -> list[tuple[int, bytes]]:
        return await self._read(reads.read_log, job_id, attempt, after)

    async def find_active(self, *, repo: str, sha: str, event: str) -> JobRecord | None:
        return await self._read(reads.find_active, repo, sha, event)

    async def holders(
        self, runner_id: str, keys: Sequence[tuple[int, int]]
    ) -> dict[tuple[int, int], Holding]:
        return await self._read(reads.holders, runner_id, keys)

    async def log_footprints(self) -> list[LogFootprint]:
        return await self._read(reads.log_footprints)

    async def endpoints(self) -> list[str]:
        return await self._read(tables.endpoints)

    async def tokens(self) -> list[TokenRow]:
        return await self._read(tables.tokens)

    async def secrets(self) -> list[SecretRow]:
        return await self._read(tables.secrets)

    async def fork_repos(self) -> set[str]:
        return await self._read(tables.fork_repos)

    async def _read(self, query: Callable[..., T], *args: Any) -> T:
        db = self._reader
        if db is None:
            raise StoreError(f"job store {self.path} is not open")
        try:
            return await self._on_thread(query, db, *args)
        except sqlite3.Error as e:
            raise StoreError(str(e)) from e

    async def _on_thread(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        assert self._thread is not None  # noqa: S101 - made in open()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, functools.partial(fn, *args, **kwargs))


def _connect(path: Path, *, readonly: bool) -> sqlite3.Connection:
    """A connection set up for its role; the writer also brings the schema up."""
    try:
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    except sqlite3.Error as e:
        raise StoreError(f"cannot open job store {path}: {e}") from e
    try:
        _set_up(db, path, readonly=readonly)
    except sqlite3.Error as e:
        db.close()
        raise StoreError(f"cannot open job store {path}: {e}") from e
    except BaseException:  # a schema newer than this code
        db.close()
        raise
    return db


def _set_up(db: sqlite3.Connection, path: Path, *, readonly: bool) -> None:
    db.row_factory = sqlite3.Row
    # The writer runs on the event loop and is the only writer by design: it
    # must not sit out a stranger's lock for long (its callers retry), while
    # a reader may wait.
    db.execute(f"PRAGMA busy_timeout={READ_WAIT_MS if readonly else WRITE_WAIT_MS}")
    if readonly:
        db.execute("PRAGMA query_only=1")
        return
    db.execute("PRAGMA journal_mode=WAL")
    # NORMAL is durable across process crashes in WAL mode; only a power loss
    # can drop the last transactions.
    db.execute("PRAGMA synchronous=NORMAL")
    # Checkpoints are the reader thread's (``maintain``): commits never wait
    # for one.
    db.execute("PRAGMA wal_autocheckpoint=0")
    # After a burst (a big log) the WAL file shrinks back to this size once
    # it is checkpointed, instead of keeping its peak.
    db.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
    migrate(db, str(path))


def _make(db: sqlite3.Connection, write: Write) -> Any:
    """Make one write; its result. The hot ones (frame batches) are matched first."""
    match write:
        case Moves():
            return jobs.moves(db, write)
        case AppendLog():
            return jobs.append_log(db, write)
        case StepStarted():
            return jobs.step_started(db, write)
        case StepFinished():
            return jobs.step_finished(db, write)
        case Transition():
            return jobs.transition(db, write)
        case SetCheckout():
            return jobs.set_checkout(db, write)
        case CreateJobs():
            return jobs.create_jobs(db, write)
        case CreateJob():
            return jobs.create_job(db, write)
        case SetReasons():
            return jobs.set_reasons(db, write)
        case _:
            return _make_other(db, write)


def _make_other(db: sqlite3.Connection, write: _OtherWrite) -> Any:
    match write:
        case DropLogs():  # retention, now and then
            return jobs.drop_logs(db, write)
        case RequestCancel():
            jobs.request_cancel(db, write)
        case AppendUsage():  # a few a minute per running step: not among the hot ones
            usage.append_usage(db, write)
        case (
            AddEndpoint()
            | PutToken()
            | DeleteToken()
            | TouchToken()
            | PutSecret()
            | DeleteSecret()
            | SetForks()
        ):
            tables.make(db, write)
        case _:
            assert_never(write)
