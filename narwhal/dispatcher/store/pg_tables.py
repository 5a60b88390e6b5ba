"""The PostgreSQL store's side tables (endpoints, tokens, secrets, fork policies)
and steps' usage samples: the rules of ``sqlite_tables`` and ``sqlite_usage``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, assert_never

from psycopg import AsyncConnection

from narwhal.dispatcher.store.base import (
    AddEndpoint,
    AppendUsage,
    DeleteSecret,
    DeleteToken,
    PutSecret,
    PutToken,
    SecretRow,
    SetForks,
    SideWrite,
    TokenRow,
    TouchToken,
    UsageRecord,
    UsageSample,
)
from narwhal.dispatcher.store.pg_reads import epoch

Db = AsyncConnection[tuple[Any, ...]]


async def make(db: Db, write: SideWrite) -> None:
    """One write to a side table."""
    match write:
        case AddEndpoint():
            await db.execute(
                "INSERT INTO endpoints (url, added_at) VALUES (%s, to_timestamp(%s))"
                " ON CONFLICT (url) DO NOTHING",
                (write.url, write.at),
            )
        case PutToken():
            t = write.token
            await db.execute(
                "INSERT INTO tokens (name, digest, scope, created_at, last_used)"
                " VALUES (%s, %s, %s, to_timestamp(%s), to_timestamp(%s))"
                " ON CONFLICT (name) DO UPDATE SET digest = excluded.digest,"
                " scope = excluded.scope, created_at = excluded.created_at,"
                " last_used = excluded.last_used",
                (t.name, t.digest, t.scope, t.created_at, t.last_used),
            )
        case DeleteToken():
            await db.execute("DELETE FROM tokens WHERE name = %s", (write.name,))
        case TouchToken():
            await db.execute(
                "UPDATE tokens SET last_used = to_timestamp(%s) WHERE name = %s",
                (write.at, write.name),
            )
        case PutSecret() | DeleteSecret() | SetForks():
            await _make_secret(db, write)
        case _:
            assert_never(write)


async def _make_secret(db: Db, write: PutSecret | DeleteSecret | SetForks) -> None:
    match write:
        case PutSecret():
            s = write.secret
            await db.execute(
                "INSERT INTO secrets (repo, name, key_version, nonce, ciphertext, created_at,"
                " updated_at) VALUES (%s, %s, %s, %s, %s, to_timestamp(%s), to_timestamp(%s))"
                " ON CONFLICT (repo, name) DO UPDATE SET key_version = excluded.key_version,"
                " nonce = excluded.nonce, ciphertext = excluded.ciphertext,"
                " updated_at = excluded.updated_at",
                (s.repo, s.name, s.key_version, s.nonce, s.ciphertext, s.created_at, s.updated_at),
            )
        case DeleteSecret():
            await db.execute(
                "DELETE FROM secrets WHERE repo = %s AND name = %s", (write.repo, write.name)
            )
        case SetForks():
            await db.execute(
                "INSERT INTO secret_policies (repo, forks, updated_at)"
                " VALUES (%s, %s, to_timestamp(%s)) ON CONFLICT (repo) DO UPDATE"
                " SET forks = excluded.forks, updated_at = excluded.updated_at",
                (write.repo, write.allowed, write.at),
            )
        case _:
            assert_never(write)


async def endpoints(db: Db) -> list[str]:
    cur = await db.execute("SELECT url FROM endpoints ORDER BY added_at")
    return [r[0] for r in await cur.fetchall()]


async def tokens(db: Db) -> list[TokenRow]:
    cur = await db.execute(
        f"SELECT name, digest, scope, {epoch('created_at')}, {epoch('last_used')} FROM tokens"
    )
    return [TokenRow.of(r) for r in await cur.fetchall()]


async def secrets(db: Db) -> list[SecretRow]:
    cur = await db.execute(
        "SELECT repo, name, key_version, nonce, ciphertext,"
        f" {epoch('created_at')}, {epoch('updated_at')} FROM secrets"
    )
    return [SecretRow.of(r) for r in await cur.fetchall()]


async def fork_repos(db: Db) -> set[str]:
    cur = await db.execute("SELECT repo FROM secret_policies WHERE forks")
    return {r[0] for r in await cur.fetchall()}


# steps' CPU and memory samples


async def append_usage(db: Db, write: AppendUsage) -> None:
    """Read the step's row, append (``UsageRecord.appended`` thins), write it back."""
    key = (write.job_id, write.attempt, write.index)
    cur = await db.execute(
        "SELECT samples, peak_memory, peak_cpu, memory_limit, seq FROM usage"
        " WHERE job_id = %s AND attempt = %s AND idx = %s FOR UPDATE",
        key,
    )
    row = await cur.fetchone()
    record = UsageRecord.appended(_record(row) if row is not None else None, write)
    if record is None:  # resent after a reconnect: taken already
        return
    await db.execute(
        "INSERT INTO usage (job_id, attempt, idx, seq, samples, peak_memory, peak_cpu,"
        " memory_limit) VALUES (%s, %s, %s, %s, %s::jsonb, %s, %s, %s)"
        " ON CONFLICT (job_id, attempt, idx) DO UPDATE SET seq = excluded.seq,"
        " samples = excluded.samples, peak_memory = excluded.peak_memory,"
        " peak_cpu = excluded.peak_cpu, memory_limit = excluded.memory_limit",
        (
            *key,
            record.seq,
            json.dumps(record.samples, separators=(",", ":")),
            record.peak_memory,
            record.peak_cpu,
            record.memory_limit,
        ),
    )


async def usage(db: Db, job_id: int, attempt: int) -> dict[int, UsageRecord]:
    cur = await db.execute(
        "SELECT idx, samples, peak_memory, peak_cpu, memory_limit, seq FROM usage"
        " WHERE job_id = %s AND attempt = %s",
        (job_id, attempt),
    )
    return {row[0]: _record(row[1:]) for row in await cur.fetchall()}


def _record(row: Sequence[Any]) -> UsageRecord:
    samples: tuple[UsageSample, ...] = tuple(
        (float(t), float(cpu), int(memory)) for t, cpu, memory in row[0]
    )
    return UsageRecord(
        samples=samples, peak_memory=row[1], peak_cpu=row[2], memory_limit=row[3], seq=row[4]
    )
