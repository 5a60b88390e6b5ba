"""Commit statuses: tell the forge when a job is queued, starts and ends.

The reporter is a dispatcher listener that never blocks: ``on_job`` only
files the job's latest state, and sender tasks of its own post it. Reports
for one job always go through the same sender, in order; a state that is
superseded before it is sent is never sent (the forge only needs the
latest). Failed posts are retried with doubling back-off on connection
errors, 429 and 5xx; a 4xx (bad token, unknown repository) is logged and
given up. Whatever the forge does, dispatching goes on.

Where a job reports to: the intake calls ``remember(event)`` before it
submits the job, which records (clone URL, commit) -> (forge, OWNER/NAME) in
``statuses.db`` next to the job store, so jobs that outlive a dispatcher
restart still report. Jobs for commits no webhook announced (API
submissions) report nothing.

Contexts are ``narwhal/{event}`` (``narwhal/push``, ``narwhal/pull_request``,
``narwhal/tag``), plus ``/k=v,...`` for the extra jobs of a matrix: the
pipeline's name is only known once a runner has checked the commit out,
and a context that changed between "pending" and the final state would
leave a check pending forever. The description carries the pipeline name.

Shutdown order (``aclose``): wait up to ``FLUSH_SECONDS`` for filed reports
to go out, stop the senders, close the HTTP client, close ``statuses.db``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from narwhal import __version__
from narwhal.config import ForgeApi, StatusConfig
from narwhal.dispatcher.records import TERMINAL, JobRecord
from narwhal.errors import StoreError
from narwhal.events import CommitEvent
from narwhal.quietlog import QuietLog
from narwhal.supervise import supervise

log = logging.getLogger(__name__)

FLUSH_SECONDS = 3.0
#: Rows older than this are pruned when the reporter starts.
KEEP_TARGETS_SECONDS = 90 * 24 * 3600
_REPORTED = frozenset({"queued", "running"}) | TERMINAL

_GITHUB_STATES = {
    "queued": "pending",
    "running": "pending",
    "success": "success",
    "failed": "failure",
    "timed_out": "failure",
    "error": "error",
    "cancelled": "error",
    # GitHub and Gitea have no skipped state; the description says skipped.
    "skipped": "success",
}
_GITLAB_STATES = {
    "queued": "pending",
    "running": "running",
    "success": "success",
    "failed": "failed",
    "timed_out": "failed",
    "error": "failed",
    "cancelled": "canceled",
    "skipped": "skipped",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class StatusTarget:
    """The forge repository a commit's statuses go to."""

    forge: str
    full_name: str


@dataclass(frozen=True, slots=True, kw_only=True)
class StatusRequest:
    """One commit status call, ready to send."""

    url: str
    headers: dict[str, str]
    body: dict[str, str]


def context_of(job: JobRecord) -> str:
    context = f"narwhal/{job.event}"
    if job.parent_id is not None and job.matrix:
        context += "/" + ",".join(f"{k}={v}" for k, v in sorted(job.matrix.items()))
    return context[:255]


def describe(job: JobRecord) -> str:
    name = job.pipeline or "build"
    if job.state == "queued":
        text = "queued" if job.attempt == 1 else f"queued again: {job.reason}"
    elif job.state == "running":
        text = f"{name} running on {job.runner_id}"
    elif job.state == "skipped":
        text = f"{name} skipped: {job.reason}"
    elif job.state == "success" and job.started_at and job.finished_at:
        text = f"{name} passed in {job.finished_at - job.started_at:.1f}s"
    else:
        text = f"{name} {job.state.replace('_', ' ')}: {job.reason}"
    # GitHub refuses descriptions over 140 characters.
    return text if len(text) <= 140 else text[:139] + "…"


def build_request(
    api: ForgeApi, target: StatusTarget, job: JobRecord, public_url: str
) -> StatusRequest:
    """The status call for ``job``'s current state on ``api``'s forge."""
    base = api.url.rstrip("/")
    link = f"{public_url.rstrip('/')}/api/jobs/{job.id}"
    agent = f"narwhal/{__version__}"
    if api.forge == "gitlab":
        project = quote(target.full_name, safe="")
        return StatusRequest(
            url=f"{base}/projects/{project}/statuses/{job.sha}",
            headers={"PRIVATE-TOKEN": api.token, "User-Agent": agent},
            body={
                "state": _GITLAB_STATES[job.state],
                "target_url": link,
                "description": describe(job),
                "name": context_of(job),
            },
        )
    auth = f"Bearer {api.token}" if api.forge == "github" else f"token {api.token}"
    return StatusRequest(
        url=f"{base}/repos/{target.full_name}/statuses/{job.sha}",
        headers={
            "Authorization": auth,
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": "2022-11-28",
            "User-Agent": agent,
        },
        body={
            "state": _GITHUB_STATES[job.state],
            "target_url": link,
            "description": describe(job),
            "context": context_of(job),
        },
    )


class TargetBook:
    """(clone URL, commit) -> status target, in ``statuses.db``, off the loop."""

    def __init__(self, path: Path, *, cache_size: int = 10_000) -> None:
        self.path = path
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="narwhal-status")
        self._db: sqlite3.Connection | None = None
        self._cache: OrderedDict[tuple[str, str], StatusTarget] = OrderedDict()
        self._cache_size = cache_size

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def open(self) -> None:
        self._db = await self._run(_open_book, self.path)

    async def aclose(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            await self._run(db.close)
        self._pool.shutdown(wait=True)

    async def put(self, repo: str, sha: str, target: StatusTarget) -> None:
        if self._cache.get((repo, sha)) == target:
            return
        await self._run(_put_target, self._db, repo, sha, target)
        self._cached(repo, sha, target)

    async def get(self, repo: str, sha: str) -> StatusTarget | None:
        target = self._cache.get((repo, sha))
        if target is None:
            target = await self._run(_get_target, self._db, repo, sha)
            if target is not None:
                self._cached(repo, sha, target)
        return target

    def _cached(self, repo: str, sha: str, target: StatusTarget) -> None:
        self._cache[(repo, sha)] = target
        self._cache.move_to_end((repo, sha))
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)


def _open_book(path: Path) -> sqlite3.Connection:
    try:
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(
            "CREATE TABLE IF NOT EXISTS targets (repo TEXT NOT NULL, sha TEXT NOT NULL,"
            " forge TEXT NOT NULL, full_name TEXT NOT NULL, at REAL NOT NULL,"
            " PRIMARY KEY (repo, sha))"
        )
        db.execute("DELETE FROM targets WHERE at < ?", (time.time() - KEEP_TARGETS_SECONDS,))
    except sqlite3.Error as e:
        raise StoreError(f"cannot open {path}: {e}") from e
    return db


def _put_target(db: sqlite3.Connection, repo: str, sha: str, target: StatusTarget) -> None:
    try:
        db.execute(
            "INSERT OR REPLACE INTO targets (repo, sha, forge, full_name, at)"
            " VALUES (?, ?, ?, ?, ?)",
            (repo, sha, target.forge, target.full_name, time.time()),
        )
    except sqlite3.Error as e:
        raise StoreError(f"cannot record the status target: {e}") from e


def _get_target(db: sqlite3.Connection, repo: str, sha: str) -> StatusTarget | None:
    try:
        row = db.execute(
            "SELECT forge, full_name FROM targets WHERE repo = ? AND sha = ?", (repo, sha)
        ).fetchone()
    except sqlite3.Error as e:
        raise StoreError(f"cannot read the status target: {e}") from e
    return StatusTarget(forge=row[0], full_name=row[1]) if row else None


@dataclass(slots=True)
class _Lane:
    """One sender's latest state per job, oldest first."""

    pending: OrderedDict[int, JobRecord] = field(default_factory=OrderedDict)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    idle: asyncio.Event = field(default_factory=asyncio.Event)


class StatusReporter:
    """Posts commit statuses for jobs whose commits came from a forge webhook.

    ``on_result(forge, "sent" | "failed")`` hears how each post ended (for the metrics).
    """

    def __init__(
        self,
        config: StatusConfig,
        *,
        data_dir: Path,
        public_url: str,
        on_result: Callable[[str, str], None] | None = None,
    ) -> None:
        self.config = config
        self._on_result = on_result or (lambda forge, result: None)
        self.public_url = config.public_url or public_url
        self.book = TargetBook(data_dir / "statuses.db")
        self._client: httpx.AsyncClient | None = None
        self._lanes = [_Lane() for _ in range(max(1, config.workers))]
        self._tasks: list[asyncio.Task[None]] = []
        self._quiet = QuietLog(log)
        self._closed = False
        self.sent = 0
        self.failed = 0
        self.dropped = 0

    async def __aenter__(self) -> StatusReporter:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        await self.book.open()
        self._client = httpx.AsyncClient(timeout=self.config.timeout)
        for n, lane in enumerate(self._lanes):
            lane.idle.set()
            work = functools.partial(self._work, lane)
            self._tasks.append(
                asyncio.create_task(supervise(f"status lane {n}", work), name=f"status-{n}")
            )

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            async with asyncio.timeout(FLUSH_SECONDS):
                await asyncio.gather(*(lane.idle.wait() for lane in self._lanes))
        except TimeoutError:
            log.warning("stopping with %d commit status(es) unsent", self.backlog())
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
        await self.book.aclose()

    def backlog(self) -> int:
        return sum(len(lane.pending) for lane in self._lanes)

    async def remember(self, event: CommitEvent) -> None:
        """Record where ``event``'s commit reports, before its job exists."""
        if self.config.api(event.forge) is None:
            return
        target = StatusTarget(forge=event.forge, full_name=event.full_name)
        try:
            await self.book.put(event.repo, event.sha, target)
        except StoreError as e:  # statuses are a courtesy: never refuse the job over them
            self._quiet.warning("book", "%s: no commit statuses for %s: %s", event.id, event.sha, e)

    def on_job(self, job: JobRecord) -> None:
        """Dispatcher listener: file the job's new state (never blocks)."""
        if self._closed or job.sha is None or job.state not in _REPORTED:
            return
        lane = self._lanes[job.id % len(self._lanes)]
        lane.pending[job.id] = job
        if len(lane.pending) > self.config.max_pending // len(self._lanes) + 1:
            lane.pending.popitem(last=False)
            self.dropped += 1
            self._quiet.warning("dropped", "too many commit statuses waiting: oldest dropped")
        lane.idle.clear()
        lane.wake.set()

    async def _work(self, lane: _Lane) -> None:
        while True:
            if not lane.pending:
                lane.idle.set()
                lane.wake.clear()
                await lane.wake.wait()
                continue
            _, job = lane.pending.popitem(last=False)
            try:
                await self._deliver(lane, job)
            except StoreError as e:
                self._quiet.warning("book", "job %d: no commit status: %s", job.id, e)

    async def _deliver(self, lane: _Lane, job: JobRecord) -> None:
        assert job.sha is not None  # noqa: S101 - on_job filed only jobs with a commit
        target = await self.book.get(job.repo, job.sha)
        api = self.config.api(target.forge) if target is not None else None
        if target is None or api is None:
            return
        request = build_request(api, target, job, self.public_url)
        delay = self.config.backoff
        for attempt in range(1, self.config.attempts + 1):
            verdict, wait = await self._post(request, job)
            if verdict != "retry":
                self._count(target.forge, "sent" if verdict == "sent" else "failed")
                return
            if attempt == self.config.attempts or job.id in lane.pending:
                break  # out of tries, or a newer state replaces this one
            await asyncio.sleep(max(delay, wait))
            delay = min(delay * 2, self.config.backoff_max)
        if job.id not in lane.pending:
            self._count(target.forge, "failed")

    def _count(self, forge: str, result: str) -> None:
        if result == "sent":
            self.sent += 1
        else:
            self.failed += 1
        self._on_result(forge, result)

    async def _post(self, request: StatusRequest, job: JobRecord) -> tuple[str, float]:
        """Send once: ("sent" | "refused" | "retry", seconds the forge asks to wait)."""
        assert self._client is not None  # noqa: S101 - set in start()
        try:
            response = await self._client.post(
                request.url, json=request.body, headers=request.headers
            )
        except httpx.HTTPError as e:
            self._quiet.warning(request.url, "job %d: status post failed: %s", job.id, e)
            return "retry", 0.0
        if response.is_success:
            return "sent", 0.0
        if response.status_code == 429 or response.status_code >= 500:
            self._quiet.warning(
                request.url, "job %d: forge answered %d", job.id, response.status_code
            )
            return "retry", _retry_after(response)
        log.warning(
            "job %d: forge refused the status (%d): %s",
            job.id,
            response.status_code,
            response.text[:200],
        )
        return "refused", 0.0


def _retry_after(response: httpx.Response) -> float:
    value = response.headers.get("retry-after", "")
    return min(float(value), 60.0) if value.isdigit() else 0.0
