"""The leader lock against the real PostgreSQL server: one leader, standbys take over."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from narwhal.dispatcher.leadership import Leadership, lock_key
from narwhal.errors import StoreError
from narwhal.storeurl import StoreUrl
from tests.support.postgres import admin, fresh_schema


@pytest.fixture
def url() -> Iterator[StoreUrl]:
    with fresh_schema() as url:
        yield url


def _terminate(pid: int) -> None:
    with admin() as db:
        db.execute("SELECT pg_terminate_backend(%s)", (pid,))


async def _pid(leader: Leadership) -> int:
    assert leader._db is not None
    return leader._db.info.backend_pid


async def _a_standby_waits_and_takes_the_lock_when_the_leader_closes(url: StoreUrl) -> None:
    async with Leadership(url) as a, Leadership(url) as b:
        await a.acquire()
        waiting = asyncio.create_task(b.acquire())
        await asyncio.sleep(0.5)
        assert not waiting.done()
        await a.aclose()
        await asyncio.wait_for(waiting, 5)
        assert b.key == a.key and not b.lost.is_set()


async def _a_lost_session_sets_lost_and_hands_the_lock_over(url: StoreUrl) -> None:
    async with Leadership(url) as a, Leadership(url) as b:
        await a.acquire()
        waiting = asyncio.create_task(b.acquire())
        await asyncio.sleep(0.2)
        _terminate(await _pid(a))
        await asyncio.wait_for(a.lost.wait(), 5)
        await asyncio.wait_for(waiting, 5)
        assert not b.lost.is_set()


async def _the_lock_session_drops_a_vanished_peer_quickly(url: StoreUrl) -> None:
    async with Leadership(url) as a:
        await a.acquire()
        assert a._db is not None
        row = await (await a._db.execute("SHOW tcp_keepalives_idle")).fetchone()
        assert row is not None and row[0] == "2"


async def _two_schemas_have_two_keys(url: StoreUrl) -> None:
    with fresh_schema() as other:
        async with Leadership(url) as a, Leadership(other) as b:
            await a.acquire()
            await asyncio.wait_for(b.acquire(), 5)
    assert lock_key("a") != lock_key("b")
    assert -(1 << 63) <= lock_key("x") < 1 << 63


def test_a_sqlite_store_has_no_leadership(tmp_path: object) -> None:
    with pytest.raises(StoreError, match="needs a PostgreSQL store"):
        Leadership(StoreUrl.sqlite(tmp_path))  # type: ignore[arg-type]


def test_a_standby_waits_and_takes_the_lock_when_the_leader_closes(url: StoreUrl) -> None:
    asyncio.run(
        asyncio.wait_for(_a_standby_waits_and_takes_the_lock_when_the_leader_closes(url), 30)
    )


def test_a_lost_session_sets_lost_and_hands_the_lock_over(url: StoreUrl) -> None:
    asyncio.run(asyncio.wait_for(_a_lost_session_sets_lost_and_hands_the_lock_over(url), 30))


def test_the_lock_session_drops_a_vanished_peer_quickly(url: StoreUrl) -> None:
    asyncio.run(asyncio.wait_for(_the_lock_session_drops_a_vanished_peer_quickly(url), 30))


def test_two_schemas_have_two_keys(url: StoreUrl) -> None:
    asyncio.run(asyncio.wait_for(_two_schemas_have_two_keys(url), 30))
