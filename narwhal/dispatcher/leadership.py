"""Which of several dispatchers on one PostgreSQL database leads: a session advisory lock.

The leader is the dispatcher whose lock session holds
``pg_advisory_lock(key)``; the others wait for it in ``acquire`` (the server
queues them, so the first standby is granted the lock the moment the
leader's session ends). The lock lives exactly as long as that session, so
the session is watched: a cheap query every ``WATCH_INTERVAL`` seconds
that must answer within ``WATCH_TIMEOUT``; when it does not, ``lost`` is set
and the leader must stop leading at once (the daemon exits non-zero; a
supervisor restarts it as a standby). The server side drops a vanished
leader's session within a few seconds too: its TCP keepalives and
``tcp_user_timeout`` are set low on that session (``SESSION``), so a
standby is not kept waiting by a machine that is gone.

The session has its own connection (autocommit), never the store's: a
store reconnect must not release the lock.

The key is ``BASE_KEY`` mixed with the schema the URL's connections use
(``current_schema()``), so two installations in two schemas of one
database do not collide.

The leader also LISTENs on that session (``listen``) for what standbys
announce (``PostgresStore.announce``: the jobs they created or asked to
cancel). psycopg hands a notification over when the connection next talks
to the server, so the watch's query every ``WATCH_INTERVAL`` delivers them:
no connection of their own, and no notification outlives the leadership.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from narwhal.dispatcher.store.postgres import CHANNEL_SQL
from narwhal.errors import StoreError
from narwhal.storeurl import StoreUrl

log = logging.getLogger(__name__)

Db = psycopg.AsyncConnection[tuple[Any, ...]]

#: The advisory lock key before the schema is mixed in ("narwhal" in ASCII).
BASE_KEY = 0x6E61727768616C
#: Seconds between two checks of the lock session.
WATCH_INTERVAL = 0.5
#: Seconds a check may take before the session counts as lost.
WATCH_TIMEOUT = 2.0
#: Seconds since the last answered check after which this dispatcher stops
#: leading, whatever the check says next: shorter than the server's
#: ``idle_session_timeout`` (``SESSION``), so a leader that was frozen
#: knows it may have been replaced before it does anything else.
LEASE = 3.0
#: Seconds to open the lock connection.
CONNECT_TIMEOUT = 5.0
#: libpq's keepalives on the client side: a dead server is noticed within ~5 s.
KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 2,
    "keepalives_interval": 1,
    "keepalives_count": 3,
}
#: The server side of the lock session: a vanished leader's session (and
#: so its lock) is dropped within about 5 s. ``idle_session_timeout`` covers
#: a leader whose machine still answers TCP but whose process does not run
#: (frozen, swapping to death): its watch queries stop, so the server ends
#: the session after 5 s idle; the leader's watch fails when it runs again.
SESSION = {
    "tcp_keepalives_idle": "2",
    "tcp_keepalives_interval": "1",
    "tcp_keepalives_count": "3",
    "tcp_user_timeout": "5000",
    "idle_in_transaction_session_timeout": "5000",
    "idle_session_timeout": "5000",
}


def lock_key(schema: str) -> int:
    """``BASE_KEY`` mixed with ``schema``: a signed 64-bit value, as PostgreSQL's bigint."""
    digest = hashlib.blake2b(schema.encode(), digest_size=8).digest()
    mixed = BASE_KEY ^ int.from_bytes(digest, "big")
    return mixed - (1 << 64) if mixed >= 1 << 63 else mixed


class Leadership:
    """The leader lock on its own session; ``acquire``, then watch ``lost``.

    An async context manager: leaving it closes the session, which releases
    the lock (or leaves the server's queue of waiters).
    """

    def __init__(self, url: StoreUrl) -> None:
        if url.kind != "postgresql" or url.dsn is None:
            raise StoreError(f"leadership needs a PostgreSQL store, not {url.shown}")
        self.url = url
        #: Set when the lock session is gone or stopped answering.
        self.lost = asyncio.Event()
        self.key: int | None = None
        #: Seconds ``acquire`` waited for the lock.
        self.waited: float | None = None
        #: The NOTIFY channel of this schema (``PostgresStore.announce``).
        self.channel: str | None = None
        self._db: Db | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._confirmed = 0.0

    async def __aenter__(self) -> Leadership:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def acquire(self) -> None:
        """Connect and wait (on the server, not blocking the loop) for the lock; then watch.

        ``StoreError`` if the server cannot be reached or the session fails
        while waiting.
        """
        started = time.monotonic()
        try:
            self._db = await self._connect()
            self.key = await self._key(self._db)
            log.info(
                "standby: waiting for the leader lock (key %d on %s)", self.key, self.url.shown
            )
            await self._db.execute("SELECT pg_advisory_lock(%s)", (self.key,))
        except (psycopg.Error, OSError, TimeoutError) as e:
            await self.aclose()
            raise StoreError(f"leader lock on {self.url.shown}: {e}") from e
        self.waited = time.monotonic() - started
        self._confirmed = time.monotonic()
        self._watcher = asyncio.create_task(self._watch(), name="leadership-watch")

    async def aclose(self) -> None:
        """Stop watching and close the session (the server releases the lock). Idempotent."""
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        db, self._db = self._db, None
        if db is not None:
            with contextlib.suppress(psycopg.Error, OSError):
                await db.close()

    async def _connect(self) -> Db:
        # Ours win over the URL's: the lock session's keepalives must be short.
        conninfo = make_conninfo(
            self.url.dsn or "",
            connect_timeout=int(CONNECT_TIMEOUT),
            application_name="narwhal-leadership",
            **KEEPALIVES,
        )
        async with asyncio.timeout(CONNECT_TIMEOUT + 1):
            db: Db = await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
        # Set after connecting: the URL may carry its own ``options`` (the schema).
        for name, value in SESSION.items():
            await db.execute("SELECT set_config(%s, %s, false)", (name, value))
        return db

    async def listen(self, on_notice: Callable[[str], None]) -> None:
        """Hand every payload announced on this schema's channel to ``on_notice``.

        Called by the leader, after ``acquire``; ``StoreError`` if the session fails.
        """
        db = self._db
        if db is None or self.channel is None:
            raise StoreError("leader lock: not held, so nothing to listen on")
        db.add_notify_handler(lambda notice: on_notice(notice.payload))
        try:
            async with asyncio.timeout(WATCH_TIMEOUT):
                # The channel is ours (CHANNEL_SQL): a plain identifier.
                await db.execute(f'LISTEN "{self.channel}"')
        except (psycopg.Error, OSError, TimeoutError) as e:
            raise StoreError(f"leader lock on {self.url.shown}: cannot LISTEN: {e}") from e

    async def _key(self, db: Db) -> int:
        cursor = await db.execute(f"SELECT current_schema(), {CHANNEL_SQL}")
        row = await cursor.fetchone()
        schema = str(row[0]) if row is not None and row[0] is not None else ""
        self.channel = str(row[1]) if row is not None else None
        return lock_key(schema)

    async def _watch(self) -> None:
        """Check the session until it fails or the lease ran out; then set ``lost``."""
        db = self._db
        assert db is not None  # noqa: S101 - started by acquire, after connecting
        while True:
            await asyncio.sleep(WATCH_INTERVAL)
            unconfirmed = time.monotonic() - self._confirmed
            if unconfirmed > LEASE:  # this process did not run (frozen, stalled)
                self._step_down(f"not confirmed for {unconfirmed:.1f} s")
                return
            try:
                async with asyncio.timeout(WATCH_TIMEOUT):
                    await db.execute("SELECT 1")
            except (psycopg.Error, OSError, TimeoutError) as e:
                self._step_down(str(e) or "no answer")
                return
            self._confirmed = time.monotonic()

    def _step_down(self, why: str) -> None:
        log.error("leader: lost the lock session (%s); stepping down", why)
        self.lost.set()
