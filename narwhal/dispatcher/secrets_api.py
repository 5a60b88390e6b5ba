"""The REST API of per-repository secrets (admin only; see ``dispatcher.vault``).

    GET    /api/secrets?repo=R            names, times and the fork policy; never values
    POST   /api/secrets {repo, name, value}  set (201 new, 200 replaced)
    DELETE /api/secrets?repo=R&name=N     delete (404 if there is none)
    POST   /api/secrets/forks {repo, allow}  whether pull requests from forks get them

No answer and no error message ever contains a value: errors name the secret
and the rule it broke. ``repo`` is a clone URL or an absolute path (or its
key, ``secret_rules.repo_key``); answers show the key, which carries no
credentials.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from narwhal.dispatcher.api import BadRequest, RouteSpec, _field, _json
from narwhal.dispatcher.core import Dispatcher


class SecretsApi:
    """Request handlers for one dispatcher's secrets."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher

    async def listing(self, request: Request) -> Response:
        return JSONResponse(self.dispatcher.secrets.listing(_query(request, "repo")))

    async def put(self, request: Request) -> Response:
        body = await _json(request)
        repo = _field(body, "repo", str, required=True)
        name = _field(body, "name", str, required=True)
        value = body.get("value")
        if not isinstance(value, str) or not value:
            raise BadRequest("value: expected a non-empty string")
        key, created = await self.dispatcher.secrets.put(repo, name, value)
        answer = {"repo": key, "name": name, "created": created}
        return JSONResponse(answer, status_code=201 if created else 200)

    async def delete(self, request: Request) -> Response:
        name = _query(request, "name")
        key = await self.dispatcher.secrets.delete(_query(request, "repo"), name)
        return JSONResponse({"repo": key, "name": name, "deleted": True})

    async def forks(self, request: Request) -> Response:
        body = await _json(request)
        repo = _field(body, "repo", str, required=True)
        allow = body.get("allow")
        if not isinstance(allow, bool):
            raise BadRequest("allow: expected true or false")
        key = await self.dispatcher.secrets.set_forks(repo, allow)
        return JSONResponse({"repo": key, "forks": allow})


def _query(request: Request, name: str) -> str:
    value = request.query_params.get(name)
    if not value:
        raise BadRequest(f"{name}: required (query parameter)")
    return value


def secret_routes(dispatcher: Dispatcher) -> list[RouteSpec]:
    """The routes above as ``(path, handler, method, scope)``; every one is admin only."""
    api = SecretsApi(dispatcher)
    return [
        ("/api/secrets", api.listing, "GET", "admin"),
        ("/api/secrets", api.put, "POST", "admin"),
        ("/api/secrets", api.delete, "DELETE", "admin"),
        ("/api/secrets/forks", api.forks, "POST", "admin"),
    ]
