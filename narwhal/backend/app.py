"""The dashboard's ASGI app: the page, its static files, sign-in, the JSON API and ``/ws``.

Routes and message shapes are docs/backend.md's. Every answer of the JSON
API is JSON, errors too (``{"error": "..."}``, 4xx for a mistake of the
browser's, 502/504 when the dispatcher failed or is slow); nothing a
browser sends produces a 500. The guard (``narwhal.httpguard``) runs before
any of it, websocket handshakes included.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from narwhal.backend.access import Access
from narwhal.backend.history import History
from narwhal.backend.live import Live
from narwhal.backend.sessions import COOKIE
from narwhal.backend.upstream import ApiError
from narwhal.backend.websocket import Sockets
from narwhal.httpguard import Guard, HostPolicy, JsonError, is_json, parse_json

STATIC = Path(__file__).parent / "static"
MAX_BODY = 64 * 1024
#: Paths of the single page: the script routes by path.
PAGES = ("/", "/jobs", "/jobs/{id}", "/runners/{id}")
#: On every answer: no framing by other sites, no sniffing, no referrer, no caching of data.
_HEADERS = [
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]
_NO_STORE = (b"cache-control", b"no-store")

Handler = Callable[[Request], Awaitable[Response]]


def _error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _answering(handler: Handler) -> Handler:
    """A handler whose ApiError becomes its JSON answer."""

    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except ApiError as e:
            response = _error(e.message, e.status)
            if e.status == 401:
                response.delete_cookie(COOKIE, path="/")
            return response

    return wrapped


class SignIn:
    """``GET``, ``POST`` and ``DELETE /session``."""

    def __init__(self, access: Access, on_sign_out: Callable[..., None]) -> None:
        self.access = access
        self.on_sign_out = on_sign_out

    async def status(self, request: Request) -> Response:
        """Whether this browser is signed in, and whether it must be to see anything."""
        session = await self.access.session(request)
        body = {"signed_in": session is not None, "public_read": self.access.public_read}
        return JSONResponse(body)

    async def sign_in(self, request: Request) -> Response:
        token = _token(await _json_body(request))
        try:
            session_id = await self.access.sign_in(token)
        except ApiError as e:
            if e.status in (401, 403):
                raise ApiError(401, "the dispatcher does not accept this token") from None
            raise
        response = JSONResponse({"signed_in": True})
        response.set_cookie(
            COOKIE,
            session_id,
            max_age=self.access.sessions.max_age(),
            path="/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    async def sign_out(self, request: Request) -> Response:
        session = await self.access.session(request)
        if session is not None:
            self.access.sessions.drop(session)
            self.on_sign_out(session)
        response = JSONResponse({"signed_in": False})
        response.delete_cookie(COOKIE, path="/")
        return response


def _token(body: object) -> str:
    token = body.get("token") if isinstance(body, dict) else None
    if not isinstance(token, str) or not 0 < len(token) <= 512 or not token.isprintable():
        raise ApiError(400, 'expected {"token": "<an API token of the dispatcher>"}')
    return token.strip()


async def _json_body(request: Request) -> object:
    if not is_json(request.headers.get("content-type")):  # the guard said so already
        raise ApiError(415, "expected a JSON body (Content-Type: application/json)")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise ApiError(413, f"body larger than {MAX_BODY} bytes")
    try:
        return parse_json(body)
    except JsonError as e:
        raise ApiError(400, str(e)) from None


def build_app(
    *,
    access: Access,
    history: History,
    live: Live,
    sockets: Sockets,
    policy: HostPolicy,
    static: Path = STATIC,
) -> ASGIApp:
    """The guarded app of one backend (``policy``: the names it answers to)."""

    async def page(request: Request) -> Response:
        return FileResponse(static / "index.html", headers={"cache-control": "no-cache"})

    async def state(request: Request) -> Response:
        if await access.viewer(request) is None:
            raise ApiError(401, "sign in to see this (POST /session with an API token)")
        return JSONResponse(live.state())

    sign = SignIn(access, sockets.hub.sign_out)
    api: list[tuple[str, Handler, str]] = [
        ("/session", sign.status, "GET"),
        ("/session", sign.sign_in, "POST"),
        ("/session", sign.sign_out, "DELETE"),
        ("/api/state", state, "GET"),
        ("/api/jobs", history.jobs, "GET"),
        ("/api/jobs/{id}", history.job, "GET"),
        ("/api/jobs/{id}/log", history.log, "GET"),
        ("/api/jobs/{id}/cancel", history.cancel, "POST"),
        ("/api/jobs/{id}/resubmit", history.resubmit, "POST"),
        ("/api/runners/{id}", history.runner, "GET"),
    ]
    routes = [
        *(Route(path, page, methods=["GET"]) for path in PAGES),
        *(Route(path, _answering(h), methods=[method]) for path, h, method in api),
        WebSocketRoute("/ws", sockets.endpoint),
        Mount("/static", app=StaticFiles(directory=static, check_dir=False)),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: _http_error})
    return Guard(_Headers(app), policy, server="this dashboard", websocket_origin=True)


async def _http_error(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    detail = exc.detail if isinstance(exc, HTTPException) else "internal error"
    return _error(str(detail), status)


class _Headers:
    """ASGI middleware: ``_HEADERS`` on every HTTP answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        extra = _HEADERS if scope["path"].startswith("/static/") else [*_HEADERS, _NO_STORE]

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                named = {name.lower() for name, _ in headers}
                message["headers"] = headers + [h for h in extra if h[0] not in named]
            await send(message)

        await self.app(scope, receive, with_headers)
