"""The agent's HTTP side: webhook endpoints that hand commit events to a sink.

Answers (JSON): 200 ``queued`` once the sink has the event safely (for
RabbitMQ: the broker confirmed it), 200 ``duplicate`` for a delivery, body
or commit already handed on, 200 ``pong`` for a ping, 202 ``ignored`` with the
reason, 4xx ``{"error": ...}`` for a bad request (401 signature, 413 too
large, 415 content type, 400 anything else), 503 when the sink is down so
that the forge can deliver again later. No request produces a 500.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from narwhal.agent.webhooks import READERS, Forge, Ignored, Pong, WebhookError, read_webhook
from narwhal.config import WebhookConfig
from narwhal.errors import RepoError
from narwhal.events import CommitEvent, EventError, Sink, Unavailable
from narwhal.metrics import CONTENT_TYPE, Registry
from narwhal.repos import check_repo

log = logging.getLogger(__name__)

#: Seconds a forge is asked to wait before delivering again after a 503.
RETRY_AFTER = 5


class Deduper:
    """One hand-over per delivery id and per body, and per commit while a hand-over is under way.

    A delivery id is remembered only once the sink took the event, so a
    delivery answered 503 is handed over again when the forge retries.
    So is the digest of the body, for ``window`` seconds: a signed body
    replayed under a new delivery id (the signature covers the body, not
    the id header) is a duplicate too. Concurrent deliveries of the same
    commit wait for the first one's result instead of sending a second
    message. That the commit is already queued or running is the
    dispatcher's to know; it dedupes those.
    """

    def __init__(
        self,
        sink: Sink,
        *,
        remember: int,
        window: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sink = sink
        self._remember = remember
        self._window = window
        self._clock = clock
        self._seen: OrderedDict[str, None] = OrderedDict()
        #: Body digest -> when it was handed on, oldest first.
        self._bodies: OrderedDict[str, float] = OrderedDict()
        self._inflight: dict[object, asyncio.Future[bool]] = {}

    async def send(self, event: CommitEvent, *, body: str | None = None) -> bool:
        """Hand ``event`` on; False if it was a duplicate. Raises ``Unavailable``.

        ``body`` is the digest of the request body the event came in.
        """
        if event.id in self._seen:
            self._seen.move_to_end(event.id)
            return False
        if body is not None and self._replayed(body):
            return False
        for key in (event.id, event.commit_key):
            pending = self._inflight.get(key)
            if pending is not None:
                if not await asyncio.shield(pending):
                    raise Unavailable("an identical delivery failed just now; try again")
                self._mark(event.id, body)
                return False
        return await self._send(event, body)

    async def _send(self, event: CommitEvent, body: str | None) -> bool:
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        keys = (event.id, event.commit_key)
        for key in keys:
            self._inflight[key] = done
        try:
            await self._sink.send(event)
            self._mark(event.id, body)
            done.set_result(True)
            return True
        finally:
            if not done.done():
                done.set_result(False)
            for key in keys:
                self._inflight.pop(key, None)

    def _replayed(self, body: str) -> bool:
        horizon = self._clock() - self._window
        while self._bodies and next(iter(self._bodies.values())) < horizon:
            self._bodies.popitem(last=False)
        return body in self._bodies

    def _mark(self, key: str, body: str | None) -> None:
        self._seen[key] = None
        while len(self._seen) > self._remember:
            self._seen.popitem(last=False)
        if body is not None:
            self._bodies[body] = self._clock()
            self._bodies.move_to_end(body)
            while len(self._bodies) > self._remember:
                self._bodies.popitem(last=False)


def _answer(code: int, **body: object) -> JSONResponse:
    return JSONResponse(body, status_code=code)


#: Told of every webhook answer: the forge's name and the HTTP status code.
OnAnswer = Callable[[str, int], None]


def count_webhooks(registry: Registry) -> OnAnswer:
    """``narwhal_webhooks_total{forge,answer}`` in ``registry``, and the hook that counts it.

    ``answer`` is the status code: the handlers answer a handful of codes
    (module docstring), so the label stays bounded.
    """
    counter = registry.counter(
        "narwhal_webhooks_total",
        "Webhook deliveries answered, by forge and HTTP status code.",
        ["forge", "answer"],
    )

    def on_answer(forge: str, status: int) -> None:
        counter.labels(forge, str(status)).inc()

    return on_answer


class Webhooks:
    """Request handlers for every forge that has a secret configured.

    ``on_answer`` hears each answer (``count_webhooks``): the daemon that
    serves the handlers decides where the count is shown.
    """

    def __init__(
        self, config: WebhookConfig, sink: Sink, *, on_answer: OnAnswer | None = None
    ) -> None:
        self.config = config
        self.dedupe = Deduper(
            sink, remember=config.remember_deliveries, window=config.remember_bodies_for
        )
        self.counts: dict[str, int] = {}
        self._on_answer = on_answer

    def handler(self, forge: Forge) -> Callable[[Request], Awaitable[Response]]:
        async def handle(request: Request) -> Response:
            response = await self._handle(forge, request)
            key = f"{forge.name} {response.status_code}"
            self.counts[key] = self.counts.get(key, 0) + 1
            if self._on_answer is not None:
                self._on_answer(forge.name, response.status_code)
            return response

        return handle

    async def _handle(self, forge: Forge, request: Request) -> Response:
        secret = self.config.secret(forge.name)
        if secret is None:
            return _answer(404, error=f"{forge.name} webhooks are not enabled on this agent")
        try:
            body = await _read_body(request, self.config.max_body)
            outcome = read_webhook(forge, request.headers, body, secret)
        except WebhookError as e:
            log.warning("%s webhook refused (%d): %s", forge.name, e.status, e)
            return _answer(e.status, error=str(e))
        except ClientDisconnect:
            return _answer(400, error="client disconnected before the body was complete")
        if isinstance(outcome, Pong):
            return _answer(200, status="pong")
        if isinstance(outcome, Ignored):
            return _answer(202, status="ignored", reason=outcome.reason)
        return await self._send(outcome, hashlib.sha256(body).hexdigest())

    async def _send(self, event: CommitEvent, body: str) -> Response:
        allow_local = self.config.allow_local_repos
        try:
            if allow_local is not None:
                check_repo(event.repo, allow_local=allow_local)
            fresh = await self.dedupe.send(event, body=body)
        except (RepoError, EventError) as e:
            log.warning("%s webhook refused (400): %s", event.forge, e)
            return _answer(400, error=str(e))
        except Unavailable as e:
            log.warning("%s: cannot queue %s: %s", event.forge, event.id, e)
            response = _answer(503, error=f"cannot queue the event: {e}")
            response.headers["Retry-After"] = str(RETRY_AFTER)
            return response
        if fresh:
            log.info("queued %s %s %s at %s", event.id, event.event, event.ref, event.sha)
        return _answer(
            200,
            status="queued" if fresh else "duplicate",
            id=event.id,
            repo=event.repo,
            ref=event.ref,
            sha=event.sha,
            event=event.event,
        )


async def _read_body(request: Request, limit: int) -> bytes:
    """The raw body (signatures are over exact bytes), refused past ``limit``."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise WebhookError(f"body of {declared} bytes is larger than {limit}", 413)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise WebhookError(f"body larger than {limit} bytes", 413)
        chunks.append(chunk)
    return b"".join(chunks)


def webhook_routes(webhooks: Webhooks) -> list[Route]:
    """``POST /webhooks/{github,gitea,gitlab}``, to serve alone or next to the API."""
    return [
        Route(f"/webhooks/{name}", webhooks.handler(forge), methods=["POST"])
        for name, forge in READERS.items()
    ]


def build_app(
    webhooks: Webhooks,
    *,
    health: Callable[[], dict[str, object]],
    metrics: Registry | None = None,
) -> Starlette:
    """The standalone agent's ASGI app: webhook endpoints, ``GET /health`` and ``GET /metrics``.

    Both are open, as the agent has no tokens: they say only what a
    forge's delivery page shows anyway (answers counted by forge and code).
    """

    async def health_route(request: Request) -> Response:
        return JSONResponse({"status": "ok", **health(), "webhooks": webhooks.counts})

    routes = [*webhook_routes(webhooks), Route("/health", health_route, methods=["GET"])]
    if metrics is not None:
        registry = metrics

        async def metrics_route(request: Request) -> Response:
            return Response(registry.render(), media_type=CONTENT_TYPE)

        routes.append(Route("/metrics", metrics_route, methods=["GET"]))
    return Starlette(routes=routes, exception_handlers={HTTPException: _http_error})


async def _http_error(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    detail = exc.detail if isinstance(exc, HTTPException) else "internal error"
    return _answer(status, error=str(detail))
