"""The PostgreSQL job store's schema, as an ordered list of its own migrations.

Version numbers count *PostgreSQL* migrations, not SQLite's
(``migrations``): the PG schema started at SQLite's shape of its
migration 4 as one migration here. ``schema_version`` holds how many a
store has had; opening a store runs the ones it lacks, each in its own
transaction, under ``pg_advisory_xact_lock`` keyed by the schema, so two
dispatchers starting at once take turns and the second finds the work
done. A store newer than this code is refused. Append-only: a released
migration is never edited, and none drops anything.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import psycopg

from narwhal.errors import StoreError

log = logging.getLogger(__name__)

_TABLES = (
    """CREATE TABLE jobs (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        repo TEXT NOT NULL,
        ref TEXT NOT NULL,
        sha TEXT,
        event TEXT NOT NULL,
        labels JSONB NOT NULL,
        matrix JSONB,
        parent_id BIGINT,
        source_key TEXT UNIQUE,
        pipeline TEXT,
        state TEXT NOT NULL,
        reason TEXT NOT NULL DEFAULT '',
        attempt INTEGER NOT NULL DEFAULT 1,
        runner_id TEXT,
        cancel_requested BOOLEAN NOT NULL DEFAULT FALSE,
        created_at TIMESTAMPTZ NOT NULL,
        updated_at TIMESTAMPTZ NOT NULL,
        started_at TIMESTAMPTZ,
        finished_at TIMESTAMPTZ,
        fork_of TEXT,
        priority INTEGER NOT NULL DEFAULT 0,
        cpus DOUBLE PRECISION,
        memory BIGINT,
        checkout_seconds DOUBLE PRECISION,
        checkout_cold BOOLEAN,
        checkout_bytes BIGINT
    )""",
    "CREATE INDEX jobs_state ON jobs (state, id)",
    "CREATE INDEX jobs_repo ON jobs (repo, id)",
    "CREATE INDEX jobs_parent ON jobs (parent_id, id)",
    "CREATE INDEX jobs_commit ON jobs (repo, sha, event)",
    """CREATE TABLE transitions (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        job_id BIGINT NOT NULL,
        attempt INTEGER NOT NULL,
        state TEXT NOT NULL,
        reason TEXT NOT NULL,
        runner_id TEXT,
        at TIMESTAMPTZ NOT NULL
    )""",
    "CREATE INDEX transitions_job ON transitions (job_id, id)",
    """CREATE TABLE steps (
        job_id BIGINT NOT NULL,
        attempt INTEGER NOT NULL,
        idx INTEGER NOT NULL,
        name TEXT NOT NULL,
        status TEXT NOT NULL,
        exit_code INTEGER,
        started_at TIMESTAMPTZ,
        duration DOUBLE PRECISION,
        PRIMARY KEY (job_id, attempt, idx)
    )""",
    """CREATE TABLE logs (
        job_id BIGINT NOT NULL,
        attempt INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        codec SMALLINT NOT NULL,
        data BYTEA NOT NULL,
        size INTEGER NOT NULL,
        PRIMARY KEY (job_id, attempt, seq)
    )""",
    """CREATE TABLE usage (
        job_id BIGINT NOT NULL,
        attempt INTEGER NOT NULL,
        idx INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        samples JSONB NOT NULL,
        peak_memory BIGINT NOT NULL,
        peak_cpu DOUBLE PRECISION NOT NULL,
        memory_limit BIGINT,
        PRIMARY KEY (job_id, attempt, idx)
    )""",
    """CREATE TABLE endpoints (
        url TEXT PRIMARY KEY,
        added_at TIMESTAMPTZ NOT NULL
    )""",
    """CREATE TABLE secrets (
        repo TEXT NOT NULL,
        name TEXT NOT NULL,
        key_version INTEGER NOT NULL,
        nonce BYTEA NOT NULL,
        ciphertext BYTEA NOT NULL,
        created_at TIMESTAMPTZ NOT NULL,
        updated_at TIMESTAMPTZ NOT NULL,
        PRIMARY KEY (repo, name)
    )""",
    """CREATE TABLE secret_policies (
        repo TEXT PRIMARY KEY,
        forks BOOLEAN NOT NULL DEFAULT FALSE,
        updated_at TIMESTAMPTZ NOT NULL
    )""",
    """CREATE TABLE tokens (
        name TEXT PRIMARY KEY,
        digest TEXT NOT NULL UNIQUE,
        scope TEXT NOT NULL,
        created_at TIMESTAMPTZ NOT NULL,
        last_used TIMESTAMPTZ
    )""",
)

#: One migration: a description, and the statements that make it.
Migration = tuple[str, Sequence[str]]

MIGRATIONS: tuple[Migration, ...] = (
    # SQLite's schema at its migration 4, with PostgreSQL's types, and logs
    # stored compressed (``logcodec``).
    ("the tables of jobs, history, steps, logs, usage, endpoints, secrets, tokens", _TABLES),
    (
        "the leader's epoch, which fences off a deposed leader's writes",
        (
            """CREATE TABLE leader (
                id SMALLINT PRIMARY KEY CHECK (id = 1),
                epoch BIGINT NOT NULL
            )""",
            "INSERT INTO leader (id, epoch) VALUES (1, 0)",
        ),
    ),
)

LATEST = len(MIGRATIONS)

_LOCK = "SELECT pg_advisory_xact_lock(hashtext('narwhal-migrate:' || current_schema()))"
_VERSION_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_version"
    " (id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL)"
)
_SET_VERSION = (
    "INSERT INTO schema_version (id, version) VALUES (1, %s)"
    " ON CONFLICT (id) DO UPDATE SET version = excluded.version"
)


async def migrate(
    db: psycopg.AsyncConnection[tuple[object, ...]],
    name: str,
    migrations: Sequence[Migration] = MIGRATIONS,
) -> int:
    """Bring the store of ``db`` (named ``name`` in errors) up; its version.

    ``db`` is in autocommit mode: each migration is its own transaction.
    ``StoreError`` if the store is newer than ``migrations``; psycopg's
    errors pass through.
    """
    while True:
        async with db.transaction():
            await db.execute(_LOCK)
            await db.execute(_VERSION_TABLE)
            row = await (await db.execute("SELECT version FROM schema_version")).fetchone()
            version = int(row[0]) if row is not None else 0  # type: ignore[call-overload]
            if version > len(migrations):
                raise StoreError(
                    f"job store {name} has PostgreSQL schema version {version}, newer than"
                    f" this narwhal knows ({len(migrations)}): run a newer narwhal"
                )
            if version == len(migrations):
                return version
            description, statements = migrations[version]
            for statement in statements:
                await db.execute(statement)
            await db.execute(_SET_VERSION, (version + 1,))
        log.info("job store %s: migration %d (%s) made", name, version + 1, description)
