"""The HTTP API of a dispatcher that waits for the leader lock (``leadership``).

A standby answers at once on its API port, so a load balancer or a user
sees it is alive and why it does not serve: ``GET /health`` says
``role: standby`` (and the lock key it waits on); every other route is 503
with ``Retry-After`` and one line naming the cause. Once the lock is
granted, ``Switch`` hands every new request to the full API.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from narwhal.dispatcher.leadership import Leadership

#: Seconds a client is told to wait before asking a standby again.
RETRY_AFTER = 2


def standby_app(leadership: Leadership) -> ASGIApp:
    """``/health`` with the role; 503 with ``Retry-After`` for the rest."""

    async def health(request: Request) -> Response:
        role = "leader" if leadership.waited is not None else "standby"
        return JSONResponse({"status": "ok", "role": role, "lock_key": leadership.key})

    async def refused(request: Request) -> Response:
        return JSONResponse(
            {"error": "standby dispatcher: waiting for the leader lock; ask the leader"},
            status_code=503,
            headers={"Retry-After": str(RETRY_AFTER)},
        )

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE"]
    return Starlette(
        routes=[
            Route("/health", health),
            Route("/{path:path}", refused, methods=methods),
        ]
    )


class Switch:
    """An ASGI app that serves ``app``, which is replaced when the lock is granted.

    Lets the listening socket answer from the first second (the standby
    API) and go on with the full API on the same port after a takeover.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)
