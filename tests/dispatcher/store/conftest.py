"""Fixtures of the store tests: each store, opened on a loop the tests drive."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.dispatcher.store.standin import Driven, open_store
from tests.support.postgres import fresh_schema


@pytest.fixture
def runner() -> Iterator[asyncio.Runner]:
    with asyncio.Runner() as running:
        yield running


@pytest.fixture(params=["sqlite", "memory", "postgresql"])
def store(
    request: pytest.FixtureRequest, tmp_path: Path, runner: asyncio.Runner
) -> Iterator[Driven]:
    """Each store; PostgreSQL's in a schema of its own (``tests.support.postgres``)."""
    with ExitStack() as stack:
        url = stack.enter_context(fresh_schema()) if request.param == "postgresql" else None
        driven = open_store(request.param, tmp_path / "db" / "narwhal.db", runner, url)
        yield driven
        runner.run(driven.store.close())
