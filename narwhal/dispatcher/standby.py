"""A hot standby: the REST API of a dispatcher that waits for the leader lock.

Several dispatchers share one PostgreSQL database; one leads
(``leadership``). A standby serves the job routes from the database, so
every dispatcher of an installation answers the same: it lists and shows
jobs, streams logs (polled, ``FOLLOW_POLL``), and takes submissions,
resubmissions and cancels by writing them to the database and announcing
them (``PostgresStore.announce``), for the leader to queue or carry out
(``dispatcher.notices``). Written first, announced next: a submission is
never lost, at worst acted on at the leader's next sweep, or by the next
leader when there is none now.

What only the leader knows or does (runners, ``/metrics``, tokens, secrets,
``gc``) is 503 with ``Retry-After`` and one line saying to ask the leader.
``GET /health`` says ``role: standby``. Tokens are read from the database
again every few seconds (``Tokens.follow``): one created or revoked on the
leader works here within seconds; the standby's own ``admin.token`` is a
token of its own (``tokens.shared_admin``). ``Switch`` hands every new
request to the leader's full API once the lock is granted.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from narwhal.config import DispatcherConfig
from narwhal.dispatcher.api import Access, JobApi, RouteSpec, Shutdown, routed
from narwhal.dispatcher.core import going
from narwhal.dispatcher.leadership import Leadership
from narwhal.dispatcher.notices import notice
from narwhal.dispatcher.records import JobRecord
from narwhal.dispatcher.store.base import CreateJob, NewJob, RequestCancel, Write
from narwhal.dispatcher.store.postgres import PostgresStore
from narwhal.dispatcher.tokens import Tokens, shared_admin
from narwhal.dispatcher.waiting import Pending
from narwhal.dispatcher.watchers import Watchers
from narwhal.errors import StoreError
from narwhal.supervise import spawn

log = logging.getLogger(__name__)

#: Seconds a client is told to wait before asking a standby again.
RETRY_AFTER = 2
#: Seconds between two looks at the logs a standby's followers stream.
FOLLOW_POLL = 1.0


class Standby:
    """The standby's side of the job routes (``api.Desk``) and the tokens' host."""

    def __init__(self, config: DispatcherConfig, store: PostgresStore) -> None:
        self.config = config
        self.store = store
        self.watchers = Watchers()
        self.tokens: Tokens | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Standby:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def open(self) -> None:
        """Open the store (migrating it if this is the first dispatcher), load the
        tokens, and make sure ``<data-dir>/admin.token`` holds one of them."""
        await self.store.open()
        admin = shared_admin(self.config.data_dir)
        self.tokens = await Tokens.open(self, env_token=self.config.api_token, admin=admin)
        spawn(self._tasks, "standby follow loop", self._follow_loop)
        spawn(self._tasks, "standby token loop", self.tokens.follow)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.store.close()

    # api.Desk

    def pending(self, job_id: int) -> Pending | None:
        return None  # the leader's to say; the job's reason says it too

    async def create(self, job: NewJob) -> JobRecord:
        ((record, _new),) = await self.store.apply([CreateJob(job=job)])
        await self._announce(record.id)
        return record  # type: ignore[no-any-return]

    async def resubmit(self, job_id: int) -> JobRecord:
        return await self.create(NewJob.again(await self.store.get_job(job_id)))

    async def cancel_submission(self, job_id: int) -> list[JobRecord]:
        alive = await going(self.store, await self.store.get_job(job_id))
        await self.store.apply([RequestCancel(job_id=j.id) for j in alive])
        for j in alive:
            await self._announce(j.id)
        return [await self.store.get_job(j.id) for j in alive]

    async def _announce(self, job_id: int) -> None:
        try:
            await self.store.announce(notice(job_id))
        except StoreError as e:  # written: the leader's sweep finds it
            log.warning("job %d: written, but the leader was not told: %s", job_id, e)

    # tokens.Host

    async def write(self, *writes: Write) -> list[Any]:
        return await self.store.apply(writes)

    def write_soon(self, write: Write) -> None:
        """Nothing but ``last_used`` comes here: not worth a standby's write."""

    # loops

    async def _follow_loop(self) -> None:
        while True:
            await asyncio.sleep(FOLLOW_POLL)
            self.watchers.notify_all()


def standby_app(standby: Standby, leadership: Leadership, shutdown: Shutdown) -> ASGIApp:
    """The job routes of ``JobApi`` on ``standby``; ``/health``; 503 for the rest."""
    assert standby.tokens is not None  # noqa: S101 - opened by the caller
    access = Access(standby.tokens, public_read=standby.config.public_read)
    jobs = JobApi(standby, access, shutdown)

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "role": "standby", "lock_key": leadership.key})

    async def refused(request: Request) -> Response:
        return JSONResponse(
            {"error": "standby dispatcher: only the leader serves this; ask the leader"},
            status_code=503,
            headers={"Retry-After": str(RETRY_AFTER)},
        )

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE"]
    routes: list[RouteSpec] = [("/health", health, "GET", None), *jobs.routes()]
    app = routed(routes, access)
    app.router.routes.append(Route("/{path:path}", refused, methods=methods))
    return app


class Switch:
    """An ASGI app that serves ``app``, which is replaced when the lock is granted.

    Lets the listening socket answer from the first second (the standby
    API) and go on with the full API on the same port after a takeover.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)
