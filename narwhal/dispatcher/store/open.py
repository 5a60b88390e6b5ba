"""The store a ``--db`` URL names: SQLite's, or PostgreSQL's (psycopg loaded only then)."""

from __future__ import annotations

from narwhal.config import DispatcherConfig
from narwhal.dispatcher.store.base import JobStore
from narwhal.dispatcher.store.sqlite import SqliteStore
from narwhal.storeurl import StoreUrl


def store_for(url: StoreUrl, *, lead: bool = False) -> JobStore:
    """A closed store for ``url``; its ``open`` connects.

    ``lead``: the store of the dispatcher that leads (PostgreSQL: its writes
    fenced by the epoch it bumps; SQLite has one dispatcher, its flock).
    """
    if url.kind == "postgresql":
        # Imported here: SQLite users never load psycopg.
        from narwhal.dispatcher.store.postgres import PostgresStore

        return PostgresStore(url, lead=lead)
    assert url.path is not None  # noqa: S101 - a SQLite URL names its file
    return SqliteStore(url.path)


def store_url(dconf: DispatcherConfig) -> StoreUrl:
    """The store the dispatcher opens: ``--db``, or the data dir's SQLite file."""
    return dconf.db if dconf.db is not None else StoreUrl.sqlite(dconf.db_path)
