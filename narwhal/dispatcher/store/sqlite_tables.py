"""The SQL of the side tables: runner endpoints, API tokens, sealed secrets, fork policies.

``dispatcher.tokens`` and ``dispatcher.vault`` own what these rows mean;
the store only keeps them, beside the jobs so one backup holds everything.
"""

from __future__ import annotations

import sqlite3
from typing import assert_never

from narwhal.dispatcher.store.base import (
    AddEndpoint,
    DeleteSecret,
    DeleteToken,
    PutSecret,
    PutToken,
    SecretRow,
    SetForks,
    SideWrite,
    TokenRow,
    TouchToken,
)

# writes


def make(db: sqlite3.Connection, write: SideWrite) -> None:
    """One write to a side table."""
    match write:
        case AddEndpoint():
            add_endpoint(db, write)
        case PutToken():
            put_token(db, write)
        case DeleteToken():
            delete_token(db, write)
        case TouchToken():
            touch_token(db, write)
        case PutSecret():
            put_secret(db, write)
        case DeleteSecret():
            delete_secret(db, write)
        case SetForks():
            set_forks(db, write)
        case _:
            assert_never(write)


def add_endpoint(db: sqlite3.Connection, write: AddEndpoint) -> None:
    db.execute(
        "INSERT INTO endpoints (url, added_at) VALUES (?, ?) ON CONFLICT (url) DO NOTHING",
        (write.url, write.at),
    )


def put_token(db: sqlite3.Connection, write: PutToken) -> None:
    t = write.token
    db.execute(
        "INSERT INTO tokens (name, digest, scope, created_at, last_used) VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT (name) DO UPDATE SET digest = excluded.digest, scope = excluded.scope,"
        " created_at = excluded.created_at, last_used = excluded.last_used",
        (t.name, t.digest, t.scope, t.created_at, t.last_used),
    )


def delete_token(db: sqlite3.Connection, write: DeleteToken) -> None:
    db.execute("DELETE FROM tokens WHERE name = ?", (write.name,))


def touch_token(db: sqlite3.Connection, write: TouchToken) -> None:
    db.execute("UPDATE tokens SET last_used = ? WHERE name = ?", (write.at, write.name))


def put_secret(db: sqlite3.Connection, write: PutSecret) -> None:
    s = write.secret
    db.execute(
        "INSERT INTO secrets (repo, name, key_version, nonce, ciphertext, created_at,"
        " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (repo, name) DO UPDATE"
        " SET key_version = excluded.key_version, nonce = excluded.nonce,"
        " ciphertext = excluded.ciphertext, updated_at = excluded.updated_at",
        (s.repo, s.name, s.key_version, s.nonce, s.ciphertext, s.created_at, s.updated_at),
    )


def delete_secret(db: sqlite3.Connection, write: DeleteSecret) -> None:
    db.execute("DELETE FROM secrets WHERE repo = ? AND name = ?", (write.repo, write.name))


def set_forks(db: sqlite3.Connection, write: SetForks) -> None:
    db.execute(
        "INSERT INTO secret_policies (repo, forks, updated_at) VALUES (?, ?, ?)"
        " ON CONFLICT (repo) DO UPDATE SET forks = excluded.forks,"
        " updated_at = excluded.updated_at",
        (write.repo, int(write.allowed), write.at),
    )


# reads


def endpoints(db: sqlite3.Connection) -> list[str]:
    return [r[0] for r in db.execute("SELECT url FROM endpoints ORDER BY added_at")]


def tokens(db: sqlite3.Connection) -> list[TokenRow]:
    rows = db.execute("SELECT name, digest, scope, created_at, last_used FROM tokens")
    return [TokenRow.of(r) for r in rows]


def secrets(db: sqlite3.Connection) -> list[SecretRow]:
    rows = db.execute(
        "SELECT repo, name, key_version, nonce, ciphertext, created_at, updated_at FROM secrets"
    )
    return [SecretRow.of(r) for r in rows]


def fork_repos(db: sqlite3.Connection) -> set[str]:
    return {r[0] for r in db.execute("SELECT repo FROM secret_policies WHERE forks")}
