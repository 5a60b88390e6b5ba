"""The PostgreSQL job store (``--db postgresql://...``), on psycopg 3's asyncio API.

Connections, each used from one place:

- the writer, for ``apply``: one transaction per call. A call is bounded
  (``APPLY_TIMEOUT``) and the session has ``lock_timeout`` and
  ``statement_timeout``, so a stalled database (a stranger's lock, a full
  disk, a dead server) shows as ``StoreError`` soon, the API answers 503
  with Retry-After and the dispatcher retries, as it does for SQLite's
  lock. Nothing blocks the loop: all I/O goes through the async driver.
- a reader, for every read, so a long read (a whole log, recovery's lists)
  never waits behind a write; each sees every write committed before it
  was called (autocommit, read committed).

Several dispatchers may share the database (docs/ha.md); the one that
leads opens its store with ``lead=True``. Opening then bumps the epoch
(table ``leader``), and every transaction of its writer first checks, with
a share lock on that row, that the epoch is still its own: the next
leader's bump waits for the transactions in flight and fences off every
later one, so a deposed leader (frozen, cut off, not yet aware) can write
nothing once another leads (``Deposed``). Standbys' writes (submissions,
cancel requests) are not fenced: they are meant to go in under any leader.

A connection that failed (lost, timed out mid-statement) is dropped and
opened again by the next call; the failed call itself raises
``StoreError``. TCP keepalives make a vanished server noticed. The SQL is
beside this module: ``pg_jobs``, ``pg_reads``, ``pg_tables``,
``pg_migrations``. psycopg's errors become ``StoreError`` here and
nowhere else, never with the DSN's password (``StoreUrl.shown``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any, TypeVar, assert_never

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from narwhal.dispatcher.records import JobRecord, StepRecord, TransitionRecord
from narwhal.dispatcher.store import pg_jobs as jobs
from narwhal.dispatcher.store import pg_reads as reads
from narwhal.dispatcher.store import pg_tables as tables
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
from narwhal.dispatcher.store.pg_migrations import migrate
from narwhal.errors import StoreError
from narwhal.storeurl import StoreUrl

log = logging.getLogger(__name__)

T = TypeVar("T")
Db = psycopg.AsyncConnection[tuple[Any, ...]]

#: Seconds one ``apply`` may take before it fails (and the writer reconnects).
APPLY_TIMEOUT = 2.0
#: Seconds one read may take.
READ_TIMEOUT = 30.0
#: Seconds to open a connection (libpq's ``connect_timeout``, and ours).
CONNECT_TIMEOUT = 5.0
#: Session settings (milliseconds): the server gives up first, so the
#: connection usually survives a stall; ``APPLY_TIMEOUT`` is the backstop.
#: A writer never sits in a transaction between statements unless its
#: process stopped running: the server then ends that transaction (and
#: frees the rows it locked for the next leader) after
#: ``idle_in_transaction_session_timeout``.
WRITER_SESSION = {
    "lock_timeout": 1000,
    "statement_timeout": 1500,
    "idle_in_transaction_session_timeout": 5000,
}
#: Milliseconds a new leader's epoch bump waits for the transactions in flight
#: of the leader before it (a frozen one's end after 5 s idle, above).
BUMP_LOCK_TIMEOUT = 10_000
READER_SESSION = {"lock_timeout": 5000, "statement_timeout": int(READ_TIMEOUT * 1000)}
#: libpq's TCP keepalives: a dead server is noticed within about 20 s.
KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 5,
    "keepalives_count": 3,
}

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


#: The NOTIFY channel of the schema a connection uses, as SQL: what standbys
#: announce on (``announce``) and the leader listens to (``leadership``).
#: One per schema, as the leader lock is; a plain identifier.
CHANNEL_SQL = "'narwhal_' || left(md5(coalesce(current_schema(), '')), 12)"


class Deposed(StoreError):
    """A write of a leader that another dispatcher has replaced: refused."""


class PostgresStore:
    """Jobs, their history, steps and logs, and the side tables, in one PostgreSQL schema."""

    def __init__(self, url: StoreUrl, *, lead: bool = False) -> None:
        if url.kind != "postgresql" or url.dsn is None:
            raise StoreError(f"not a PostgreSQL URL: {url.shown}")
        self.url = url
        self.lead = lead
        #: The leader's epoch this store writes under (``lead``), once open.
        self.epoch: int | None = None
        self._password = _password(url.dsn)
        self._writer: Db | None = None
        self._reader: Db | None = None
        self._write_lock = asyncio.Lock()
        self._read_lock = asyncio.Lock()
        self._open = False

    # lifecycle

    async def open(self) -> None:
        """Connect, bringing the schema up to date (``pg_migrations``).

        ``StoreError`` if the server cannot be reached or the schema is newer
        than this code.
        """
        try:
            writer = await self._connect(WRITER_SESSION)
            try:
                await self._guard(migrate(writer, self.url.shown), READ_TIMEOUT)
                if self.lead:
                    # Waits for a deposed leader's transactions in flight, if any.
                    self.epoch = await self._guard(_next_epoch(writer), READ_TIMEOUT)
                    log.info("job store %s: leading at epoch %d", self.url.shown, self.epoch)
            except BaseException:
                await writer.close()
                raise
            self._writer = writer
            self._reader = await self._connect(READER_SESSION)
            self._open = True
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Close the connections; idempotent."""
        for db in (self._writer, self._reader):
            if db is not None:
                await db.close()
        self._writer = self._reader = None
        self._open = False

    async def maintain(self) -> None:
        """Run until cancelled: PostgreSQL's housekeeping is autovacuum's, not ours."""
        await asyncio.Event().wait()

    # writes

    async def apply(self, writes: Sequence[Write]) -> list[Any]:
        """Make ``writes`` in one transaction, within ``APPLY_TIMEOUT``."""
        async with self._write_lock:
            db = await self._connection("writer")
            try:
                return await self._guard(_transaction(db, writes, self.epoch), APPLY_TIMEOUT)
            except StoreError:
                await self._drop_if_broken("writer", db)
                raise

    async def announce(self, payload: str) -> None:
        """NOTIFY the leader (on this schema's channel, ``CHANNEL_SQL``) of ``payload``.

        Standbys announce what they wrote for the leader to act on; a lost
        announcement only delays it (the leader sweeps the store too).
        """
        async with self._write_lock:
            db = await self._connection("writer")
            notify = db.execute(f"SELECT pg_notify({CHANNEL_SQL}, %s)", (payload,))
            try:
                await self._guard(notify, APPLY_TIMEOUT)
            except StoreError:
                await self._drop_if_broken("writer", db)
                raise

    # reads, on the reader

    async def get_job(self, job_id: int) -> JobRecord:
        return await self._read(reads.get_job, job_id)

    async def list_jobs(self, query: JobQuery) -> list[JobRecord]:
        return await self._read(reads.list_jobs, query)

    async def steps(self, job_id: int, attempt: int) -> list[StepRecord]:
        return await self._read(reads.steps, job_id, attempt)

    async def transitions(self, job_id: int) -> list[TransitionRecord]:
        return await self._read(reads.transitions, job_id)

    async def usage(self, job_id: int, attempt: int) -> dict[int, UsageRecord]:
        return await self._read(tables.usage, job_id, attempt)

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

    async def _read(self, query: Callable[..., Awaitable[T]], *args: Any) -> T:
        async with self._read_lock:
            db = await self._connection("reader")
            try:
                return await self._guard(query(db, *args), READ_TIMEOUT)
            except StoreError:
                await self._drop_if_broken("reader", db)
                raise

    # connections

    async def _connection(self, role: str) -> Db:
        """The open connection of ``role``, opened again if it was lost."""
        if not self._open:
            raise StoreError(f"job store {self.url.shown} is not open")
        db = self._writer if role == "writer" else self._reader
        if db is None or db.closed:
            log.warning("job store %s: reconnecting the %s", self.url.shown, role)
            db = await self._connect(WRITER_SESSION if role == "writer" else READER_SESSION)
            if role == "writer":
                self._writer = db
            else:
                self._reader = db
        return db

    async def _drop_if_broken(self, role: str, db: Db) -> None:
        """After a failure: keep a connection that is idle and well, close any other
        (the next call opens a new one)."""
        if db.closed or db.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            if role == "writer" and self._writer is db:
                self._writer = None
            elif role == "reader" and self._reader is db:
                self._reader = None
            await db.close()

    async def _connect(self, session: dict[str, int]) -> Db:
        assert self.url.dsn is not None  # noqa: S101 - checked in __init__
        # The URL's own settings win: ours are defaults.
        given = _conninfo(self.url.dsn)
        defaults = {"connect_timeout": int(CONNECT_TIMEOUT), **KEEPALIVES}
        conninfo = make_conninfo(
            self.url.dsn, **{k: v for k, v in defaults.items() if k not in given}
        )
        db: Db = await self._guard(
            psycopg.AsyncConnection.connect(conninfo, autocommit=True),
            CONNECT_TIMEOUT + 1,
        )
        try:
            for name, value in session.items():
                await self._guard(db.execute(f"SET {name} = {int(value)}"), CONNECT_TIMEOUT)
        except BaseException:
            await db.close()
            raise
        return db

    async def _guard(self, work: Awaitable[T], timeout: float) -> T:
        """``work`` within ``timeout``; psycopg's errors and the timeout as ``StoreError``."""
        try:
            async with asyncio.timeout(timeout):
                return await work
        except TimeoutError as e:
            raise StoreError(f"job store {self.url.shown}: no answer within {timeout:g} s") from e
        except psycopg.Error as e:
            raise StoreError(f"job store {self.url.shown}: {self._hidden(str(e))}") from e

    def _hidden(self, text: str) -> str:
        text = text.strip().splitlines()[0] if text.strip() else "database error"
        return text.replace(self._password, "***") if self._password else text


def _conninfo(dsn: str) -> dict[str, Any]:
    try:
        return conninfo_to_dict(dsn)
    except psycopg.Error:
        return {}


def _password(dsn: str) -> str | None:
    password = _conninfo(dsn).get("password")
    return str(password) if password else None


async def _next_epoch(db: Db) -> int:
    async with db.transaction():
        await db.execute(f"SET LOCAL lock_timeout = {BUMP_LOCK_TIMEOUT}")
        await db.execute(f"SET LOCAL statement_timeout = {BUMP_LOCK_TIMEOUT + 1000}")
        cursor = await db.execute(
            "UPDATE leader SET epoch = epoch + 1 WHERE id = 1 RETURNING epoch"
        )
        row = await cursor.fetchone()
    assert row is not None  # noqa: S101 - migration 2 inserts the one row
    return int(row[0])


async def _transaction(db: Db, writes: Sequence[Write], epoch: int | None) -> list[Any]:
    async with db.transaction():
        if epoch is not None:
            cursor = await db.execute(
                "SELECT epoch FROM leader WHERE id = 1 FOR SHARE", prepare=True
            )
            row = await cursor.fetchone()
            if row is None or int(row[0]) != epoch:
                now = row[0] if row is not None else "?"
                raise Deposed(f"another dispatcher leads now (epoch {now}, this one {epoch})")
        results: list[Any] = []
        for run in _runs(writes):
            if isinstance(run, list):  # log chunks in a row: one round trip for them all
                await jobs.append_logs(db, run)
                results += [None] * len(run)
            else:
                results.append(await _make(db, run))
        return results


def _runs(writes: Sequence[Write]) -> Iterator[Write | list[AppendLog]]:
    """``writes`` in order, with each run of two or more ``AppendLog`` as one list."""
    run: list[AppendLog] = []
    for write in writes:
        if isinstance(write, AppendLog):
            run.append(write)
            continue
        yield from _flushed(run)
        run = []
        yield write
    yield from _flushed(run)


def _flushed(run: list[AppendLog]) -> Iterator[Write | list[AppendLog]]:
    if len(run) > 1:
        yield run
    elif run:
        yield run[0]


async def _make(db: Db, write: Write) -> Any:
    """Make one write; its result. The hot ones (frame batches) are matched first."""
    match write:
        case Moves():
            return await jobs.moves(db, write)
        case AppendLog():
            return await jobs.append_log(db, write)
        case StepStarted():
            return await jobs.step_started(db, write)
        case StepFinished():
            return await jobs.step_finished(db, write)
        case Transition():
            return await jobs.transition(db, write)
        case SetCheckout():
            return await jobs.set_checkout(db, write)
        case CreateJobs():
            return await jobs.create_jobs(db, write)
        case CreateJob():
            return await jobs.create_job(db, write)
        case SetReasons():
            return await jobs.set_reasons(db, write)
        case _:
            return await _make_other(db, write)


async def _make_other(db: Db, write: _OtherWrite) -> Any:
    match write:
        case DropLogs():
            return await jobs.drop_logs(db, write)
        case RequestCancel():
            await jobs.request_cancel(db, write)
        case AppendUsage():
            await tables.append_usage(db, write)
        case (
            AddEndpoint()
            | PutToken()
            | DeleteToken()
            | TouchToken()
            | PutSecret()
            | DeleteSecret()
            | SetForks()
        ):
            await tables.make(db, write)
        case _:
            assert_never(write)
    return None
