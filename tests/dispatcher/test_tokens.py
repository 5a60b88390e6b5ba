"""API tokens over a store: written through, checked in memory, last use written back later."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from narwhal.config import DispatcherConfig
from narwhal.dispatcher.core import Conflict
from narwhal.dispatcher.store.base import JobStore, PutToken, TokenRow, TouchToken
from narwhal.dispatcher.store.memory import MemoryStore
from narwhal.dispatcher.store.sqlite import SqliteStore
from narwhal.dispatcher.tokens import ADMIN, LAST_USED_EVERY, TOKEN_FILE, Tokens
from narwhal.errors import ConfigError, NotFound, StoreError
from tests.dispatcher.store.standin import StoreHost


@pytest.fixture
def runner() -> Iterator[asyncio.Runner]:
    with asyncio.Runner() as running:
        yield running


@pytest.fixture(params=["sqlite", "memory"])
def host(
    request: pytest.FixtureRequest, tmp_path: Path, runner: asyncio.Runner
) -> Iterator[StoreHost]:
    store: JobStore = (
        SqliteStore(tmp_path / "narwhal.db") if request.param == "sqlite" else MemoryStore()
    )
    runner.run(store.open())
    yield StoreHost(store, DispatcherConfig(data_dir=tmp_path))
    runner.run(store.close())


def _names(host: StoreHost, runner: asyncio.Runner) -> list[str]:
    return sorted(row.name for row in runner.run(host.store.tokens()))


def test_the_admin_file_is_written_once_and_rotated_after_a_revoke(
    host: StoreHost, runner: asyncio.Runner, tmp_path: Path
) -> None:
    tokens = runner.run(Tokens.open(host))
    token = (tmp_path / TOKEN_FILE).read_text().strip()
    assert tokens.authorize(f"Bearer {token}", "admin") is None
    assert _names(host, runner) == [ADMIN]
    again = runner.run(Tokens.open(host))  # a restart keeps the file's token
    assert (tmp_path / TOKEN_FILE).read_text().strip() == token
    runner.run(again.revoke(ADMIN))
    assert _names(host, runner) == []
    runner.run(Tokens.open(host))
    rotated = (tmp_path / TOKEN_FILE).read_text().strip()
    assert rotated != token and _names(host, runner) == [ADMIN]


def test_created_tokens_are_stored_and_revoked(host: StoreHost, runner: asyncio.Runner) -> None:
    tokens = runner.run(Tokens.open(host, env_token="t0ken"))
    token = runner.run(tokens.create("ci", "read"))
    assert tokens.authorize(f"Bearer {token}", "read") is None
    refused = tokens.authorize(f"Bearer {token}", "write")
    assert refused is not None and refused.status == 403
    (row,) = [r for r in runner.run(host.store.tokens()) if r.name == "ci"]
    assert row.scope == "read" and token not in repr(row)
    with pytest.raises(Conflict):
        runner.run(tokens.create("ci", "admin"))
    with pytest.raises(ConfigError, match="name"):
        runner.run(tokens.create("no spaces", "read"))
    runner.run(tokens.revoke("ci"))
    assert _names(host, runner) == [ADMIN]
    assert tokens.authorize(f"Bearer {token}", "read") is not None
    with pytest.raises(NotFound):
        runner.run(tokens.revoke("ci"))
    # The environment's token has no row, and its use writes nothing.
    touched = len(host.soon)
    assert tokens.authorize("Bearer t0ken", "admin") is None and len(host.soon) == touched


def test_last_use_is_written_back_soon_and_rarely(host: StoreHost, runner: asyncio.Runner) -> None:
    tokens = runner.run(Tokens.open(host))
    token = runner.run(tokens.create("ci", "write"))
    for _ in range(3):
        assert tokens.authorize(f"Bearer {token}", "read") is None
    assert [type(w) for w in host.soon] == [TouchToken]  # once per LAST_USED_EVERY
    assert LAST_USED_EVERY >= 60
    runner.run(host.flush())
    (row,) = [r for r in runner.run(host.store.tokens()) if r.name == "ci"]
    assert row.last_used is not None
    assert tokens.listing()[-1].last_used is not None


def test_a_refused_write_changes_nothing(tmp_path: Path, runner: asyncio.Runner) -> None:
    store = MemoryStore()
    host = StoreHost(store, DispatcherConfig(data_dir=tmp_path))
    tokens = runner.run(Tokens.open(host))
    store.refuse("database is locked")
    with pytest.raises(StoreError, match="locked"):
        runner.run(tokens.create("ci", "read"))
    assert [info.name for info in tokens.listing()] == [ADMIN]
    store.refuse(None)
    existing = TokenRow(name="ci", digest="d", scope="read", created_at=1.0)
    runner.run(host.write(PutToken(token=existing)))
    assert sorted(info.name for info in runner.run(Tokens.open(host)).listing()) == [ADMIN, "ci"]
