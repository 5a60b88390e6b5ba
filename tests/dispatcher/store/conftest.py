"""Fixtures of the store tests: each store, opened on a loop the tests drive."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.dispatcher.store.standin import Driven, open_store


@pytest.fixture
def runner() -> Iterator[asyncio.Runner]:
    with asyncio.Runner() as running:
        yield running


@pytest.fixture(params=["sqlite", "memory"])
def store(
    request: pytest.FixtureRequest, tmp_path: Path, runner: asyncio.Runner
) -> Iterator[Driven]:
    driven = open_store(request.param, tmp_path / "db" / "narwhal.db", runner)
    yield driven
    runner.run(driven.store.close())
