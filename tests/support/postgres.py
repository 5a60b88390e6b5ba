"""A fresh schema on the test PostgreSQL per test: tests run at once on one server.

The server is the one ``scripts/services/postgresql.sh`` starts (trust
auth, user postgres, database ``test``). No server: the test fails, it
never skips.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

from narwhal.storeurl import StoreUrl

#: The test server's database, without a schema chosen.
SERVER = "postgresql://postgres@127.0.0.1:5432/test"


def admin() -> psycopg.Connection[tuple[object, ...]]:
    """A plain connection to the test database (autocommit)."""
    return psycopg.connect(SERVER, autocommit=True, connect_timeout=5)


def url_of(schema: str) -> StoreUrl:
    """The store URL whose connections use ``schema``."""
    return StoreUrl("postgresql", dsn=f"{SERVER}?options=-c%20search_path%3D{schema}")


@contextmanager
def fresh_schema() -> Iterator[StoreUrl]:
    """A store URL on a newly created, randomly named schema, dropped afterwards."""
    schema = f"t_{secrets.token_hex(6)}"
    with admin() as db:
        db.execute(f"CREATE SCHEMA {schema}")
    try:
        yield url_of(schema)
    finally:
        with admin() as db:
            db.execute(f"DROP SCHEMA {schema} CASCADE")
