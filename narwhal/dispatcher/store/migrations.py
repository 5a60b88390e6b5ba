"""The SQLite job store's schema, as an ordered list of migrations.

``schema_version`` holds the number of migrations a store has had. Opening
a store runs the ones it lacks, each in its own transaction, so a crash
half-way leaves the store at the last migration that committed. A store
made by a newer narwhal (a version beyond ``LATEST``) is refused: this code
cannot know what the newer columns mean, and writing to it could break the
newer code's rules.

Stores made before ``schema_version`` existed hold the tables of migration
1, perhaps with the column of migration 2: they are recognised by their
``jobs`` table and brought up from there. Migrations are append-only: a
released one is never edited, a change of schema is a new one.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence

from narwhal.errors import StoreError

log = logging.getLogger(__name__)

#: The tables as first released. ``IF NOT EXISTS``: a store made before
#: ``schema_version`` may lack only the side tables added since.
_TABLES = (
    """CREATE TABLE IF NOT EXISTS jobs (
        id INTEGER PRIMARY KEY,
        repo TEXT NOT NULL,
        ref TEXT NOT NULL,
        sha TEXT,
        event TEXT NOT NULL,
        labels TEXT NOT NULL,
        matrix TEXT,
        parent_id INTEGER,
        source_key TEXT UNIQUE,
        pipeline TEXT,
        state TEXT NOT NULL,
        reason TEXT NOT NULL DEFAULT '',
        attempt INTEGER NOT NULL DEFAULT 1,
        runner_id TEXT,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        started_at REAL,
        finished_at REAL
    )""",
    "CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, id)",
    "CREATE INDEX IF NOT EXISTS jobs_repo ON jobs (repo, id)",
    "CREATE INDEX IF NOT EXISTS jobs_parent ON jobs (parent_id, id)",
    """CREATE TABLE IF NOT EXISTS transitions (
        id INTEGER PRIMARY KEY,
        job_id INTEGER NOT NULL,
        attempt INTEGER NOT NULL,
        state TEXT NOT NULL,
        reason TEXT NOT NULL,
        runner_id TEXT,
        at REAL NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS transitions_job ON transitions (job_id, id)",
    """CREATE TABLE IF NOT EXISTS steps (
        job_id INTEGER NOT NULL,
        attempt INTEGER NOT NULL,
        idx INTEGER NOT NULL,
        name TEXT NOT NULL,
        status TEXT NOT NULL,
        exit_code INTEGER,
        started_at REAL,
        duration REAL,
        PRIMARY KEY (job_id, attempt, idx)
    )""",
    """CREATE TABLE IF NOT EXISTS logs (
        job_id INTEGER NOT NULL,
        attempt INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        data BLOB NOT NULL,
        PRIMARY KEY (job_id, attempt, seq)
    )""",
    """CREATE TABLE IF NOT EXISTS endpoints (
        url TEXT PRIMARY KEY,
        added_at REAL NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS secrets (
        repo TEXT NOT NULL,
        name TEXT NOT NULL,
        key_version INTEGER NOT NULL,
        nonce BLOB NOT NULL,
        ciphertext BLOB NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (repo, name)
    )""",
    """CREATE TABLE IF NOT EXISTS secret_policies (
        repo TEXT PRIMARY KEY,
        forks INTEGER NOT NULL DEFAULT 0,
        updated_at REAL NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS tokens (
        name TEXT PRIMARY KEY,
        digest TEXT NOT NULL UNIQUE,
        scope TEXT NOT NULL,
        created_at REAL NOT NULL,
        last_used REAL
    )""",
)

#: One migration: a description, and the statements that make it.
Migration = tuple[str, Sequence[str]]

MIGRATIONS: tuple[Migration, ...] = (
    ("the tables of jobs, history, steps, logs, endpoints, secrets, tokens", _TABLES),
    # The repository whose fork policy decides a pull request's secrets.
    ("jobs.fork_of", ("ALTER TABLE jobs ADD COLUMN fork_of TEXT",)),
    # Steps' CPU and memory samples (sqlite_usage): a table of their own, not
    # columns of ``steps``, so reading a job's steps never drags them along.
    (
        "usage",
        (
            """CREATE TABLE usage (
                job_id INTEGER NOT NULL,
                attempt INTEGER NOT NULL,
                idx INTEGER NOT NULL,
                seq INTEGER NOT NULL,
                samples TEXT NOT NULL,
                peak_memory INTEGER NOT NULL,
                peak_cpu REAL NOT NULL,
                memory_limit INTEGER,
                PRIMARY KEY (job_id, attempt, idx)
            )""",
        ),
    ),
    # Placement: a job's priority and resource requests, what its checkout cost.
    (
        "jobs.priority, cpus, memory, checkout_seconds, checkout_cold, checkout_bytes",
        (
            "ALTER TABLE jobs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE jobs ADD COLUMN cpus REAL",
            "ALTER TABLE jobs ADD COLUMN memory INTEGER",
            "ALTER TABLE jobs ADD COLUMN checkout_seconds REAL",
            "ALTER TABLE jobs ADD COLUMN checkout_cold INTEGER",
            "ALTER TABLE jobs ADD COLUMN checkout_bytes INTEGER",
        ),
    ),
    # Log chunks stored compressed (``logcodec``): the codec of each, and its
    # length as output. Chunks written before stay raw (codec 0, size NULL:
    # their stored length) and read as ever.
    (
        "logs.codec, logs.size",
        (
            "ALTER TABLE logs ADD COLUMN codec INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE logs ADD COLUMN size INTEGER",
        ),
    ),
)

LATEST = len(MIGRATIONS)

_VERSION_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_version"
    " (id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL)"
)
_SET_VERSION = (
    "INSERT INTO schema_version (id, version) VALUES (1, ?)"
    " ON CONFLICT (id) DO UPDATE SET version = excluded.version"
)


def migrate(db: sqlite3.Connection, name: str, migrations: Sequence[Migration] = MIGRATIONS) -> int:
    """Bring the store of connection ``db`` (named ``name`` in errors) up; its version.

    ``db`` is in autocommit mode (``isolation_level=None``). ``StoreError``
    if the store is newer than ``migrations``; sqlite3 errors pass through.
    """
    version = _version(db, migrations)
    if version > len(migrations):
        raise StoreError(
            f"job store {name} has schema version {version}, newer than this narwhal"
            f" knows ({len(migrations)}): run a newer narwhal, or another data directory"
        )
    for number in range(version + 1, len(migrations) + 1):
        description, statements = migrations[number - 1]
        _commit(db, statements, number)
        log.info("job store %s: migration %d (%s) made", name, number, description)
    return len(migrations)


def _version(db: sqlite3.Connection, migrations: Sequence[Migration]) -> int:
    """The store's version; a store older than ``schema_version`` gets one here."""
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "schema_version" in tables:
        row = db.execute("SELECT version FROM schema_version").fetchone()
        return int(row[0]) if row is not None else 0
    if "jobs" not in tables:
        return 0
    # Made before versions: migration 1's tables (the side tables it lacks
    # are created here), and migration 2's column if that code added it.
    columns = {row[1] for row in db.execute("PRAGMA table_info(jobs)")}
    version = 2 if "fork_of" in columns else 1
    _commit(db, migrations[0][1], version)
    return version


def _commit(db: sqlite3.Connection, statements: Sequence[str], version: int) -> None:
    """Run ``statements`` and record ``version``, in one transaction.

    DDL is transactional in SQLite: a migration commits whole or not at all.
    """
    db.execute("BEGIN IMMEDIATE")
    try:
        for statement in (*statements, _VERSION_TABLE):
            db.execute(statement)
        db.execute(_SET_VERSION, (version,))
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
