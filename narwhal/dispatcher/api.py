"""The dispatcher's REST API (JSON), served by uvicorn in the dispatcher's loop.

Bad requests get a 4xx with ``{"error": "..."}``; no user mistake produces a
500. Every route but ``/health`` needs ``Authorization: Bearer <token>`` of
a scope (``dispatcher.tokens``): read for reads (unless ``--public-read``),
write to submit, cancel and resubmit, admin to add runners and manage
tokens. ``dispatcher.guard`` checks Host, Origin and Content-Type before
any of this runs.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from narwhal import __version__
from narwhal.config import DispatcherConfig
from narwhal.dispatcher import api_input as given
from narwhal.dispatcher.api_input import BadRequest as BadRequest  # secrets_api uses it
from narwhal.dispatcher.core import Conflict, Dispatcher
from narwhal.dispatcher.mesh import LinkState, Peer
from narwhal.dispatcher.metrics import DispatcherMetrics
from narwhal.dispatcher.records import STATES, JobRecord, JobState, TransitionRecord
from narwhal.dispatcher.store.base import JobQuery, JobStore, NewJob
from narwhal.dispatcher.tokens import Tokens
from narwhal.dispatcher.waiting import Pending
from narwhal.dispatcher.watchers import Watchers
from narwhal.errors import ConfigError, NotFound, RepoError, StoreError
from narwhal.follow import SHUTDOWN_LINE
from narwhal.metrics import CONTENT_TYPE, Registry
from narwhal.redact import redacted
from narwhal.repos import check_ref, check_repo, check_sha

#: What ``secrets_api`` builds on (``api_input`` is their home).
_json, _field = given.json_body, given.field
_NAME = re.compile(r"[A-Za-z0-9_.:/@+-]{1,200}")
_QUEUED = JobState.QUEUED.value

Handler = Callable[[Request], Awaitable[Response]]
#: One route: path, handler, HTTP method, the token scope it needs (None: open).
RouteSpec = tuple[str, Handler, str, str | None]


def _error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class Shutdown:
    """What open log streams learn of a shutdown (``daemons.dispatcher.serve`` sets both).

    ``begun``: narwhal is shutting down; a stream whose job ends from now on
    says so in its last line. ``ending``: streams still open end now, with a
    last line saying why and how to follow the job again.
    """

    def __init__(self) -> None:
        self.begun = asyncio.Event()
        self.ending = asyncio.Event()


class Access:
    """Who may call what: the tokens, and whether reads are open to all."""

    def __init__(self, tokens: Tokens, *, public_read: bool = False) -> None:
        self.tokens = tokens
        self.public_read = public_read

    def refusal(self, request: Request, scope: str | None) -> Response | None:
        if scope is None:
            return None
        public = scope == "read" and self.public_read
        refused = self.tokens.authorize(request.headers.get("authorization"), scope, public=public)
        if refused is None:
            return None
        response = _error(refused.message, refused.status)
        if refused.status == 401:
            response.headers["WWW-Authenticate"] = "Bearer"
        return response


def _guard(handler: Handler, access: Access, scope: str | None) -> Handler:
    """Wrap a handler: the token check for ``scope`` (None: open), errors to 4xx JSON."""

    async def wrapped(request: Request) -> Response:
        refused = access.refusal(request, scope)
        if refused is not None:
            return refused
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


class Desk(Protocol):
    """What the job routes need: the leader's ``Dispatcher``, or a standby's
    ``standby.Standby``, which writes to the shared database and announces it."""

    @property
    def config(self) -> DispatcherConfig: ...

    @property
    def store(self) -> JobStore: ...

    @property
    def watchers(self) -> Watchers: ...

    def pending(self, job_id: int) -> Pending | None:
        """Why a queued job waits (None: not known here)."""
        ...

    async def create(self, job: NewJob) -> JobRecord: ...

    async def resubmit(self, job_id: int) -> JobRecord: ...

    async def cancel_submission(self, job_id: int) -> list[JobRecord]: ...


class JobApi:
    """The job routes' handlers: what every dispatcher of an installation serves."""

    def __init__(self, desk: Desk, access: Access, shutdown: Shutdown) -> None:
        self.desk = desk
        self.access = access
        self.shutdown = shutdown

    async def submit(self, request: Request) -> Response:
        body = await _json(request)
        repo = _field(body, "repo", str, required=True)
        ref = _field(body, "ref", str) or "HEAD"
        sha = _field(body, "sha", str)
        try:
            check_repo(repo, allow_local=self.desk.config.allow_local_repos)
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
        cpus, memory = given.resources(body)
        job = await self.desk.create(
            NewJob(
                repo=repo,
                ref=ref,
                sha=sha,
                event=event,
                labels=labels,
                priority=given.priority(body),
                cpus=cpus,
                memory=memory,
            )
        )
        return JSONResponse({"id": job.id, "state": job.state}, status_code=201)

    async def list_jobs(self, request: Request) -> Response:
        q = request.query_params
        states = q.getlist("state")
        bad = [s for s in states if s not in STATES]
        if bad:
            raise BadRequest(f"unknown state {bad[0]!r}; one of {', '.join(STATES)}")
        limit = given.query_int(q.get("limit"), "limit", default=50, low=1, high=500)
        before = given.query_int(q.get("before"), "before", default=None, low=1)
        parent = given.query_int(q.get("parent"), "parent", default=None, low=1)
        query = JobQuery(
            states=tuple(states),
            repo=q.get("repo"),
            refs=given.refs(q.getlist("ref")),
            runner=given.runner(q.get("runner")),
            parent=parent,
            before=before,
            limit=limit,
        )
        jobs = await self.desk.store.list_jobs(query)
        nxt = jobs[-1].id if len(jobs) == limit else None
        shown = [{**j.to_json(), "pending": self._pending(j)} for j in jobs]
        return JSONResponse({"jobs": shown, "next": nxt})

    def _pending(self, job: JobRecord) -> dict[str, Any] | None:
        """Why a queued job waits (``waiting.Pending``; its text redacted), else None."""
        pending = self.desk.pending(job.id) if job.state == _QUEUED else None
        if pending is None:
            return None
        return {**pending.to_json(), "text": redacted(pending.text)}

    async def get_job(self, request: Request) -> Response:
        job_id = given.job_id(request)
        job = await self.desk.store.get_job(job_id)
        steps = await self.desk.store.steps(job_id, job.attempt)
        usage = await self.desk.store.usage(job_id, job.attempt)
        history = await self.desk.store.transitions(job_id)
        return JSONResponse(
            {
                **job.to_json(),
                "steps": [
                    {**s.to_json(), "usage": u.to_json() if (u := usage.get(s.index)) else None}
                    for s in steps
                ],
                "transitions": [t.to_json() for t in history],  # reasons redacted
                "pending": self._pending(job),
                "placement": _placement(job, history),
            }
        )

    async def logs(self, request: Request) -> Response:
        job_id = given.job_id(request)
        job = await self.desk.store.get_job(job_id)
        if request.query_params.get("follow") in ("1", "true", "yes"):
            stream = _follow(self.desk, job_id, self.shutdown)
            return StreamingResponse(stream, media_type="text/plain")
        chunks = await self.desk.store.read_log(job_id, job.attempt)
        return Response(b"".join(data for _, data in chunks), media_type="text/plain")

    async def cancel(self, request: Request) -> Response:
        """The job and the matrix jobs it spawned; ``jobs``: each one cancelled, as it is now."""
        job_id = given.job_id(request)
        cancelled = await self.desk.cancel_submission(job_id)
        job = await self.desk.store.get_job(job_id)
        return JSONResponse({**_cancelled(job), "jobs": [_cancelled(j) for j in cancelled]}, 202)

    async def resubmit(self, request: Request) -> Response:
        job = await self.desk.resubmit(given.job_id(request))
        return JSONResponse({"id": job.id, "state": job.state}, status_code=201)

    def routes(self) -> list[RouteSpec]:
        return [
            ("/api/jobs", self.list_jobs, "GET", "read"),
            ("/api/jobs", self.submit, "POST", "write"),
            ("/api/jobs/{id}", self.get_job, "GET", "read"),
            ("/api/jobs/{id}/logs", self.logs, "GET", "read"),
            ("/api/jobs/{id}/cancel", self.cancel, "POST", "write"),
            ("/api/jobs/{id}/resubmit", self.resubmit, "POST", "write"),
        ]


class Api(JobApi):
    """Request handlers for the dispatcher that leads (the only one, on SQLite)."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        access: Access,
        shutdown: Shutdown,
        metrics: Registry,
        *,
        role: str | None = None,
    ) -> None:
        super().__init__(dispatcher, access, shutdown)
        self.dispatcher = dispatcher
        self.registry = metrics
        self.role = role

    async def health(self, request: Request) -> Response:
        """Open to all, so it says only "ok" (and the role, with several
        dispatchers); counts and version need a read token."""
        role = {"role": self.role} if self.role is not None else {}
        if self.access.refusal(request, "read") is not None:
            return JSONResponse({"status": "ok", **role})
        mesh = self.dispatcher.mesh
        ready = [peer for peer in mesh.peers() if peer.state == LinkState.READY]
        return JSONResponse(
            {
                "status": "ok",
                **role,
                "version": __version__,
                "runners": len(ready),
                "queued": self.dispatcher.queued(),
                "bad_frames": mesh.stats().bad_frames,
            }
        )

    async def metrics(self, request: Request) -> Response:
        """Prometheus' scrape (``dispatcher.metrics`` lists the names)."""
        return Response(self.registry.render(), media_type=CONTENT_TYPE)

    async def runners(self, request: Request) -> Response:
        mesh = self.dispatcher.mesh
        refused = mesh.refused.items()
        now = time.monotonic()
        return JSONResponse(
            {
                "runners": [self._runner(peer, now) for peer in mesh.peers()],
                "refused": [{"endpoint": e, "reason": reason} for e, reason in refused],
            }
        )

    def _runner(self, peer: Peer, now: float) -> dict[str, Any]:
        """A runner (``links.runner_json``) with its quarantine (``health``), if any."""
        health = self.dispatcher.signals.health
        quarantine = health.to_json(peer.runner_id, now) if peer.runner_id else None
        return {**peer.to_json(), "quarantine": quarantine}

    async def add_runner(self, request: Request) -> Response:
        url = _field(await _json(request), "url", str, required=True)
        link = await self.dispatcher.add_runner(url)
        return JSONResponse(link.to_json(), status_code=201)

    async def list_tokens(self, request: Request) -> Response:
        listing = self.access.tokens.listing()
        return JSONResponse({"tokens": [info.to_json() for info in listing]})

    async def create_token(self, request: Request) -> Response:
        body = await _json(request)
        name = _field(body, "name", str, required=True)
        scope = _field(body, "scope", str, required=True)
        token = await self.access.tokens.create(name, scope)
        return JSONResponse({"name": name, "scope": scope, "token": token}, status_code=201)

    async def gc(self, request: Request) -> Response:
        """Log retention now (``dispatcher.retention``); ``dry_run``: only count."""
        empty = request.headers.get("content-length") == "0"
        body = {} if empty else await _json(request)
        dry_run = body.get("dry_run", False)
        if not isinstance(dry_run, bool):
            raise BadRequest("dry_run: expected true or false")
        collected = await self.dispatcher.retention.collect(dry_run=dry_run)
        return JSONResponse(collected.to_json())

    async def revoke_token(self, request: Request) -> Response:
        name = request.path_params["name"]
        await self.access.tokens.revoke(name)
        return JSONResponse({"name": name, "revoked": True})


def _placement(job: JobRecord, history: list[TransitionRecord]) -> str | None:
    """Why the current attempt went to its runner: its last assignment's reason."""
    for moved in reversed(history):
        if moved.attempt == job.attempt and moved.state == JobState.ASSIGNED:
            return redacted(moved.reason)
    return None


def _cancelled(job: JobRecord) -> dict[str, Any]:
    return {
        "id": job.id,
        "state": job.state,
        "cancel_requested": job.cancel_requested,
        "matrix": job.matrix,
    }


def build_app(
    dispatcher: Dispatcher,
    access: Access,
    shutdown: Shutdown | None = None,
    metrics: Registry | None = None,
    *,
    role: str | None = None,
) -> Starlette:
    """The ASGI app of one dispatcher's API (put ``guard.Guard`` in front of it).

    ``metrics``: what ``GET /metrics`` renders (by default a ``DispatcherMetrics``
    of its own, as the dispatcher's config says). ``role``: said by
    ``/health`` ("leader" when dispatchers share a database).
    """
    # Imported here: secrets_api builds on this module's helpers.
    from narwhal.dispatcher.secrets_api import secret_routes

    if metrics is None:
        per_repo = dispatcher.config.metrics_per_repo
        metrics = DispatcherMetrics(dispatcher, per_repo=per_repo).registry
    api = Api(dispatcher, access, shutdown or Shutdown(), metrics, role=role)
    routes: list[RouteSpec] = [
        ("/health", api.health, "GET", None),
        ("/metrics", api.metrics, "GET", "read"),
        *api.routes(),
        ("/api/runners", api.runners, "GET", "read"),
        ("/api/runners", api.add_runner, "POST", "admin"),
        ("/api/tokens", api.list_tokens, "GET", "admin"),
        ("/api/tokens", api.create_token, "POST", "admin"),
        ("/api/tokens/{name}", api.revoke_token, "DELETE", "admin"),
        ("/api/gc", api.gc, "POST", "admin"),
        *secret_routes(dispatcher),
    ]
    return routed(routes, access)


def routed(routes: list[RouteSpec], access: Access) -> Starlette:
    """The app of ``routes``, each behind its token check; errors as JSON."""
    return Starlette(
        routes=[
            Route(path, _guard(handler, access, scope), methods=[method])
            for path, handler, method, scope in routes
        ],
        exception_handlers={HTTPException: _http_error},
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    detail = exc.detail if isinstance(exc, HTTPException) else "internal error"
    return _error(str(detail), status)


async def _follow(desk: Desk, job_id: int, shutdown: Shutdown) -> AsyncIterator[bytes]:
    """Log chunks as they arrive, until the job has ended and all is sent.

    During a shutdown the stream's last line says why it ends: the job ended
    (the embedded runner cancelled it), or narwhal stops while the job goes on.
    """
    event = desk.watchers.watch(job_id)
    try:
        attempt, after, mid_line = 0, -1, False
        while True:
            event.clear()
            job = await desk.store.get_job(job_id)
            if job.attempt != attempt:
                if attempt:
                    yield f"--- attempt {job.attempt}\n".encode()
                attempt, after = job.attempt, -1
            chunks = await desk.store.read_log(job_id, attempt, after)
            for seq, data in chunks:
                yield data
                after, mid_line = seq, not data.endswith(b"\n")
            if chunks:
                continue
            if job.terminal or shutdown.ending.is_set():
                if shutdown.begun.is_set():
                    yield b"\n" * mid_line + _closing_line(job)
                return
            await _wait(event, shutdown.ending, 5.0)
    finally:
        desk.watchers.unwatch(job_id, event)


def _closing_line(job: JobRecord) -> bytes:
    """The last line of a log stream that ends because narwhal shuts down."""
    if job.terminal:
        why = f": {redacted(job.reason)}" if job.reason else ""
        return f"{SHUTDOWN_LINE} job {job.id} ended {job.state}{why}\n".encode()
    goes_on = "stays queued" if job.state == "queued" else "goes on"
    return f"{SHUTDOWN_LINE} the job {goes_on}: narwhal logs -f {job.id}\n".encode()


async def _wait(event: asyncio.Event, ending: asyncio.Event, timeout: float) -> None:
    """Until ``event`` or ``ending`` is set, or ``timeout`` seconds have passed."""
    waits = {asyncio.ensure_future(event.wait()), asyncio.ensure_future(ending.wait())}
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waits:
            waiter.cancel()
