"""A standby's API: /health says so, the rest is 503 with Retry-After; Switch hands over."""

from __future__ import annotations

import asyncio

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from narwhal.dispatcher.leadership import Leadership
from narwhal.dispatcher.standby import Switch, standby_app
from narwhal.storeurl import StoreUrl

URL = StoreUrl("postgresql", dsn="postgresql://nobody@127.0.0.1:1/none")


def _client(app: ASGIApp) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


async def _jobs(request: Request) -> Response:
    return PlainTextResponse("[]")


def test_a_standby_answers_health_and_refuses_the_rest() -> None:
    async def main() -> None:
        async with _client(standby_app(Leadership(URL))) as client:
            health = await client.get("/health")
            assert health.status_code == 200 and health.json()["role"] == "standby"
            refused = await client.post("/api/jobs", json={})
            assert refused.status_code == 503
            assert refused.headers["Retry-After"] == "2"
            assert "standby" in refused.json()["error"]

    asyncio.run(main())


def test_switch_serves_the_full_api_after_the_takeover() -> None:
    async def main() -> None:
        switch = Switch(standby_app(Leadership(URL)))
        async with _client(switch) as client:
            assert (await client.get("/api/jobs")).status_code == 503
            switch.app = Starlette(routes=[Route("/api/jobs", _jobs)])
            assert (await client.get("/api/jobs")).text == "[]"

    asyncio.run(main())
