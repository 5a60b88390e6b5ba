"""History from the dispatcher's REST API: jobs, a job, its log, a runner; cancel and resubmit.

Query parameters are checked here before anything is asked of the
dispatcher (a mistake is a 400 naming the parameter), and the answers are
the dispatcher's, with what the page needs added: a job's matrix siblings,
a runner's view from the feed, its load over the last hour, and what it
reports of itself and its quarantine (the dispatcher's ``GET /api/runners``:
the feed does not carry them). A job's pending explanation, placement and
checkout time come with the dispatcher's job as they are.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from narwhal.backend.access import Access, Viewer
from narwhal.backend.live import Live
from narwhal.backend.states import STATES
from narwhal.backend.upstream import ApiError, Upstream
from narwhal.errors import RepoError
from narwhal.repos import check_ref

MAX_LIMIT = 200
DEFAULT_LIMIT = 50
#: A runner page's recent jobs.
RUNNER_JOBS = 20
#: Largest id the dispatcher's store hands out (its API refuses larger ones).
MAX_ID = 2**62 - 1
_JOB_PARAMS = frozenset({"state", "repo", "branch", "before", "limit"})
_SIBLING_FIELDS = ("id", "state", "matrix", "parent_id", "attempt")


def positive_int(raw: str | None, name: str, *, high: int = MAX_ID) -> int | None:
    """A query or path integer from 1 to ``high``; None if absent; 400 if anything else."""
    if raw is None:
        return None
    if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= high:
        raise ApiError(400, f"{name}: expected an integer from 1 to {high}")
    return int(raw)


def _text(raw: str | None, name: str, longest: int) -> str | None:
    if raw is None or raw == "":
        return None
    if len(raw) > longest or not raw.isprintable():
        raise ApiError(400, f"{name}: expected printable text of at most {longest} characters")
    return raw


def branch_refs(branch: str) -> list[str]:
    """The refs a branch filter matches: ``main`` and ``refs/heads/main``."""
    try:
        check_ref(branch)
    except RepoError as e:
        raise ApiError(400, f"branch: {e}") from None
    if branch.startswith("refs/") or branch == "HEAD":
        return [branch]
    return [branch, f"refs/heads/{branch}"]


def job_query(request: Request) -> dict[str, Any]:
    """``GET /api/jobs``'s parameters as the dispatcher's (``branch`` -> ``ref``)."""
    q = request.query_params
    unknown = sorted(set(q.keys()) - _JOB_PARAMS)
    if unknown:
        raise ApiError(400, f"unknown parameter {unknown[0][:40]!r}; one of {sorted(_JOB_PARAMS)}")
    params: dict[str, Any] = {}
    states = q.getlist("state")
    bad = [s for s in states if s not in STATES]
    if bad:
        raise ApiError(400, f"state: unknown state {bad[0][:40]!r}; one of {', '.join(STATES)}")
    if states:
        params["state"] = states
    if (repo := _text(q.get("repo"), "repo", 2000)) is not None:
        params["repo"] = repo
    if (branch := _text(q.get("branch"), "branch", 255)) is not None:
        params["ref"] = branch_refs(branch)
    if (before := positive_int(q.get("before"), "before")) is not None:
        params["before"] = before
    params["limit"] = positive_int(q.get("limit"), "limit", high=MAX_LIMIT) or DEFAULT_LIMIT
    return params


def path_id(request: Request) -> int:
    raw = request.path_params["id"]
    if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= MAX_ID:
        raise ApiError(404, f"not a job id: {raw[:40]!r}")
    return int(raw)


def runner_link(listing: dict[str, Any], runner_id: str) -> dict[str, Any] | None:
    """The dispatcher's entry for ``runner_id`` in ``GET /api/runners`` (a ready one first)."""
    links = listing.get("runners")
    found = [
        link
        for link in (links if isinstance(links, list) else [])
        if isinstance(link, dict) and link.get("id") == runner_id
    ]
    found.sort(key=lambda link: link.get("state") != "ready")
    return found[0] if found else None


class History:
    """The REST handlers that read from (or act through) the dispatcher."""

    def __init__(self, access: Access, upstream: Upstream, live: Live) -> None:
        self.access = access
        self.upstream = upstream
        self.live = live

    async def _viewer(self, request: Request) -> Viewer:
        viewer = await self.access.viewer(request)
        if viewer is None:
            raise ApiError(401, "sign in to see this (POST /session with an API token)")
        return viewer

    async def jobs(self, request: Request) -> Response:
        params = job_query(request)
        viewer = await self._viewer(request)
        return JSONResponse(await self._read("/api/jobs", viewer, params))

    async def job(self, request: Request) -> Response:
        job_id = path_id(request)
        viewer = await self._viewer(request)
        job = await self._read(f"/api/jobs/{job_id}", viewer)
        job["siblings"] = await self._siblings(job, viewer)
        return JSONResponse(job)

    async def _siblings(self, job: dict[str, Any], viewer: Viewer) -> list[dict[str, Any]]:
        """The jobs of the same matrix submission (its first job and those it spawned)."""
        root = job.get("parent_id") or job.get("id")
        if not isinstance(root, int):
            return []
        page = await self._read("/api/jobs", viewer, {"parent": root, "limit": 500})
        children = page.get("jobs") or []
        if not children:
            return []
        first = job if root == job.get("id") else await self._read(f"/api/jobs/{root}", viewer)
        return [{k: j.get(k) for k in _SIBLING_FIELDS} for j in [first, *reversed(children)]]

    async def log(self, request: Request) -> Response:
        job_id = path_id(request)
        viewer = await self._viewer(request)
        body, cut = await self._call(
            viewer, self.upstream.text(f"/api/jobs/{job_id}/logs", viewer.token)
        )
        if cut:
            body += b"\n[the log goes on: narwhal logs %d shows all of it]\n" % job_id
        return Response(body, media_type="text/plain; charset=utf-8")

    async def cancel(self, request: Request) -> Response:
        return await self._act(request, "cancel", "cancel jobs")

    async def resubmit(self, request: Request) -> Response:
        return await self._act(request, "resubmit", "resubmit jobs")

    async def _act(self, request: Request, action: str, what: str) -> Response:
        """A change, made with the signed-in browser's own token, never the backend's."""
        job_id = path_id(request)
        session = await self.access.session(request)
        if session is None:
            raise ApiError(401, f"sign in with an API token to {what}")
        try:
            answer = await self.upstream.post(f"/api/jobs/{job_id}/{action}", session.token)
        except ApiError as e:
            if e.status == 403:
                raise ApiError(
                    403, f"this token may only read: to {what}, sign in with a token of scope write"
                ) from None
            if e.status == 401:
                self.access.sessions.drop(session)
                raise ApiError(401, "your token is no longer valid: sign in again") from None
            raise
        return JSONResponse(answer, status_code=202 if action == "cancel" else 201)

    async def runner(self, request: Request) -> Response:
        runner_id = _text(request.path_params["id"], "runner id", 200)
        viewer = await self._viewer(request)
        view = self.live.runner(runner_id or "")
        history = self.live.history.series(runner_id or "")
        page = await self._read("/api/jobs", viewer, {"runner": runner_id, "limit": RUNNER_JOBS})
        link = runner_link(await self._read("/api/runners", viewer), runner_id or "")
        if view is None and link is None and not history and not page.get("jobs"):
            raise ApiError(404, f"no runner {runner_id!r}")
        return JSONResponse(
            {
                "id": runner_id,
                "runner": view,
                "jobs": page.get("jobs") or [],
                "history": history,
                "report": (link or {}).get("report"),
                "quarantine": (link or {}).get("quarantine"),
            }
        )

    async def _read(self, path: str, viewer: Viewer, params: Any = None) -> dict[str, Any]:
        answer = await self._call(viewer, self.upstream.get(path, viewer.token, params))
        if not isinstance(answer, dict):
            raise ApiError(502, "the dispatcher answered something unexpected")
        return answer

    async def _call(self, viewer: Viewer, call: Any) -> Any:
        """A read; a token the dispatcher no longer takes ends its session."""
        try:
            return await call
        except ApiError as e:
            if e.status == 401 and viewer.session is not None:
                self.access.sessions.drop(viewer.session)
                raise ApiError(401, "your token is no longer valid: sign in again") from None
            if e.status == 401:
                raise ApiError(502, "the backend's own API token was refused") from None
            raise
