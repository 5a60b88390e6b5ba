"""Fixtures of the agent tests: a queue of each test's own, a fake forge API."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.broker import own_queue
from tests.support.forge import FakeForge


@pytest.fixture
def queue() -> Iterator[str]:
    with own_queue() as name:
        yield name


@pytest.fixture
def forge() -> Iterator[FakeForge]:
    server = FakeForge()
    yield server
    server.close()
