"""The dispatcher's REST API (JSON), served by uvicorn in the dispatcher's loop.

Bad requests get a 4xx with ``{"error": "..."}``; no user mistake produces a
500. When an API token is configured, every mutating endpoint needs
``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from narwhal import __version__
from narwhal.dispatcher.core import Conflict, Dispatcher
from narwhal.dispatcher.records import STATES
from narwhal.dispatcher.store import SqliteStore
from narwhal.errors import ConfigError, NotFound, RepoError, StoreError
from narwhal.repos import check_ref, check_repo, check_sha

MAX_BODY = 64 * 1024
_NAME = re.compile(r"[A-Za-z0-9_.:/@+-]{1,200}")

Handler = Callable[[Request], Awaitable[Response]]


class BadRequest(Exception):
    """The request is malformed; the message goes back to the client."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _guard(handler: Handler, token: str | None, *, mutating: bool = False) -> Handler:
    """Wrap a handler: token check for mutations, errors to 4xx JSON."""

    async def wrapped(request: Request) -> Response:
        if mutating and token is not None and not _authorized(request, token):
            return _error("missing or wrong API token", 401)
        try:
            return await handler(request)
        except BadRequest as e:
            return _error(str(e), e.status)
        except NotFound as e:
            return _error(str(e), 404)
        except StoreError as e:  # locked or failing storage: not the client's fault
            response = _error(f"job store unavailable: {e}", 503)
            response.headers["Retry-After"] = "1"
            return response
        except Conflict as e:
            return _error(str(e), 409)
        except ConfigError as e:
            return _error(str(e), 400)

    return wrapped


class Api:
    """Request handlers for one dispatcher."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher

    async def health(self, request: Request) -> Response:
        ready = [link for link in self.dispatcher.links() if link.state == "ready"]
        return JSONResponse(
            {
                "status": "ok",
                "version": __version__,
                "runners": len(ready),
                "queued": self.dispatcher.queued(),
                "bad_frames": self.dispatcher.runners.bad_frames,
            }
        )

    async def submit(self, request: Request) -> Response:
        body = await _json(request)
        repo = _field(body, "repo", str, required=True)
        ref = _field(body, "ref", str) or "HEAD"
        sha = _field(body, "sha", str)
        try:
            check_repo(repo, allow_local=self.dispatcher.config.allow_local_repos)
            check_ref(ref)
            if sha is not None:
                check_sha(sha)
        except RepoError as e:
            raise BadRequest(str(e)) from None
        event = _field(body, "event", str) or "push"
        labels = _field(body, "labels", dict) or {}
        for name, value in [("event", event), *labels.items()]:
            if not isinstance(value, str) or not _NAME.fullmatch(value):
                raise BadRequest(f"{name}: not a valid name: {value!r}")
        job = await self.dispatcher.submit(repo=repo, ref=ref, sha=sha, event=event, labels=labels)
        return JSONResponse({"id": job.id, "state": job.state}, status_code=201)

    async def list_jobs(self, request: Request) -> Response:
        q = request.query_params
        states = q.getlist("state")
        bad = [s for s in states if s not in STATES]
        if bad:
            raise BadRequest(f"unknown state {bad[0]!r}; one of {', '.join(STATES)}")
        limit = _int(q.get("limit"), "limit", default=50, low=1, high=500)
        before = _int(q.get("before"), "before", default=None, low=1)
        jobs = await self.dispatcher.db(
            SqliteStore.list_jobs, states=states, repo=q.get("repo"), before=before, limit=limit
        )
        nxt = jobs[-1].id if len(jobs) == limit else None
        return JSONResponse({"jobs": [j.to_json() for j in jobs], "next": nxt})

    async def get_job(self, request: Request) -> Response:
        job_id = _job_id(request)
        job = await self.dispatcher.db(SqliteStore.get_job, job_id)
        steps = await self.dispatcher.db(SqliteStore.steps, job_id, attempt=job.attempt)
        history = await self.dispatcher.db(SqliteStore.transitions, job_id)
        return JSONResponse(
            {**job.to_json(), "steps": [s.to_json() for s in steps], "transitions": history}
        )

    async def logs(self, request: Request) -> Response:
        job_id = _job_id(request)
        job = await self.dispatcher.db(SqliteStore.get_job, job_id)
        if request.query_params.get("follow") in ("1", "true", "yes"):
            return StreamingResponse(_follow(self.dispatcher, job_id), media_type="text/plain")
        chunks = await self.dispatcher.db(SqliteStore.read_log, job_id, attempt=job.attempt)
        return Response(b"".join(data for _, data in chunks), media_type="text/plain")

    async def cancel(self, request: Request) -> Response:
        job = await self.dispatcher.cancel(_job_id(request))
        return JSONResponse({"id": job.id, "state": job.state}, status_code=202)

    async def resubmit(self, request: Request) -> Response:
        job = await self.dispatcher.resubmit(_job_id(request))
        return JSONResponse({"id": job.id, "state": job.state}, status_code=201)

    async def runners(self, request: Request) -> Response:
        refused = self.dispatcher.runners.refused.items()
        return JSONResponse(
            {
                "runners": [link.to_json() for link in self.dispatcher.links()],
                "refused": [{"endpoint": e, "reason": reason} for e, reason in refused],
            }
        )

    async def add_runner(self, request: Request) -> Response:
        url = _field(await _json(request), "url", str, required=True)
        link = await self.dispatcher.add_runner(url)
        return JSONResponse(link.to_json(), status_code=201)


def build_app(dispatcher: Dispatcher, *, token: str | None = None) -> Starlette:
    """The ASGI app of one dispatcher's API."""
    api = Api(dispatcher)
    routes = [
        Route("/health", _guard(api.health, token)),
        Route("/api/jobs", _guard(api.list_jobs, token), methods=["GET"]),
        Route("/api/jobs", _guard(api.submit, token, mutating=True), methods=["POST"]),
        Route("/api/jobs/{id}", _guard(api.get_job, token)),
        Route("/api/jobs/{id}/logs", _guard(api.logs, token)),
        Route("/api/jobs/{id}/cancel", _guard(api.cancel, token, mutating=True), methods=["POST"]),
        Route(
            "/api/jobs/{id}/resubmit", _guard(api.resubmit, token, mutating=True), methods=["POST"]
        ),
        Route("/api/runners", _guard(api.runners, token), methods=["GET"]),
        Route("/api/runners", _guard(api.add_runner, token, mutating=True), methods=["POST"]),
    ]
    return Starlette(routes=routes, exception_handlers={HTTPException: _http_error})


async def _http_error(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    detail = exc.detail if isinstance(exc, HTTPException) else "internal error"
    return _error(str(detail), status)


def _authorized(request: Request, token: str) -> bool:
    given = request.headers.get("authorization", "")
    return hmac.compare_digest(given.encode(), f"Bearer {token}".encode())


async def _json(request: Request) -> dict[str, Any]:
    if "application/json" not in request.headers.get("content-type", "application/json"):
        raise BadRequest("expected a JSON body (Content-Type: application/json)", 415)
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise BadRequest(f"body larger than {MAX_BODY} bytes", 413)
    try:
        data = json.loads(body)
    except ValueError as e:
        raise BadRequest(f"body is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise BadRequest("body must be a JSON object")
    return data


def _field(body: dict[str, Any], name: str, kind: type, *, required: bool = False) -> Any:
    value = body.get(name)
    if value is None:
        if required:
            raise BadRequest(f"{name}: required")
        return None
    if not isinstance(value, kind) or (isinstance(value, str) and not value.strip()):
        raise BadRequest(f"{name}: expected a {'non-empty string' if kind is str else 'object'}")
    return value


def _int(raw: str | None, name: str, *, default: int | None, low: int, high: int = 2**62) -> Any:
    if raw is None:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise BadRequest(f"{name}: expected an integer from {low} to {high}")
    return int(raw)


def _job_id(request: Request) -> int:
    raw = request.path_params["id"]
    if not raw.isdigit() or int(raw) >= 2**62:
        raise BadRequest(f"not a job id: {raw!r}", 404)
    return int(raw)


async def _follow(dispatcher: Dispatcher, job_id: int) -> AsyncIterator[bytes]:
    """Log chunks as they arrive, until the job has ended and all is sent."""
    event = dispatcher.watch(job_id)
    try:
        attempt, after = 0, -1
        while True:
            event.clear()
            job = await dispatcher.db(SqliteStore.get_job, job_id)
            if job.attempt != attempt:
                if attempt:
                    yield f"--- attempt {job.attempt}\n".encode()
                attempt, after = job.attempt, -1
            chunks = await dispatcher.db(SqliteStore.read_log, job_id, attempt=attempt, after=after)
            for seq, data in chunks:
                yield data
                after = seq
            if job.terminal and not chunks:
                return
            if not chunks:
                await _wait(event, 5.0)
    finally:
        dispatcher.unwatch(job_id, event)


async def _wait(event: asyncio.Event, timeout: float) -> None:
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        pass
