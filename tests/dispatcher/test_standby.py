"""A standby's API, without a database: /health says so, what only the leader
serves is 503 with Retry-After, the token check comes first; Switch hands over.

What a standby does with a real database (reads, submissions, cancels, the
leader acting on them) is ``test_ha``'s.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from narwhal.config import DispatcherConfig
from narwhal.dispatcher.api import Shutdown
from narwhal.dispatcher.leadership import Leadership
from narwhal.dispatcher.standby import Standby, Switch, standby_app
from narwhal.dispatcher.store.postgres import PostgresStore
from narwhal.dispatcher.tokens import Tokens
from narwhal.storeurl import StoreUrl

URL = StoreUrl("postgresql", dsn="postgresql://nobody@127.0.0.1:1/none")
TOKEN = "nw_standby_test"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _standby_app() -> ASGIApp:
    """A standby whose store is never opened: every read of it is refused."""
    standby = Standby(DispatcherConfig(data_dir=Path("/nonexistent")), PostgresStore(URL))
    standby.tokens = Tokens.loaded(standby, [], env_token=TOKEN)
    return standby_app(standby, Leadership(URL), Shutdown())


def _client(app: ASGIApp) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


async def _jobs(request: Request) -> Response:
    return PlainTextResponse("[]")


def test_a_standby_answers_health_and_refuses_the_rest() -> None:
    async def main() -> None:
        async with _client(_standby_app()) as client:
            health = await client.get("/health")
            assert health.status_code == 200 and health.json()["role"] == "standby"
            for path in ("/api/runners", "/metrics", "/api/tokens", "/api/secrets/x"):
                refused = await client.get(path, headers=AUTH)
                assert refused.status_code == 503, path
                assert refused.headers["Retry-After"] == "2"
                assert "leader" in refused.json()["error"]
            assert (await client.post("/api/gc", headers=AUTH, json={})).status_code == 503
            # The job routes check the token first, then read the store.
            assert (await client.get("/api/jobs")).status_code == 401
            unavailable = await client.get("/api/jobs", headers=AUTH)
            assert unavailable.status_code == 503
            assert "job store unavailable" in unavailable.json()["error"]
            bad = await client.post("/api/jobs", headers=AUTH, json={"repo": "x", "ref": "-f"})
            assert bad.status_code == 400, bad.text

    asyncio.run(main())


def test_switch_serves_the_full_api_after_the_takeover() -> None:
    async def main() -> None:
        switch = Switch(_standby_app())
        async with _client(switch) as client:
            assert (await client.get("/api/runners", headers=AUTH)).status_code == 503
            switch.app = Starlette(routes=[Route("/api/runners", _jobs)])
            assert (await client.get("/api/runners")).text == "[]"

    asyncio.run(main())
