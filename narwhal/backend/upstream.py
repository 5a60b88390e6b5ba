"""The dispatcher's REST API, as the backend calls it: history, logs, cancel, resubmit.

Every call has a deadline and carries a token: the signed-in browser's, or
the backend's own read token (``--api-token-file``) for ``--public-read``
viewers and the log followers. Whatever goes wrong becomes an
``ApiError`` with a status and a message fit for the page: the
dispatcher's own 4xx answer (its ``error`` text), 502 when it cannot be
reached or answers with a 5xx, 504 when it is too slow. No answer of the
dispatcher is ever passed on as a 500.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import httpx

#: Seconds a call may take (connecting: ``CONNECT_TIMEOUT``).
TIMEOUT = 10.0
CONNECT_TIMEOUT = 3.0
#: Most bytes of a stored log the backend reads for one answer.
MAX_LOG = 64 << 20

Params = Mapping[str, str | int | Sequence[str]]


class ApiError(Exception):
    """The dispatcher refused a call, or could not be asked; ``message`` is for the page."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Upstream:
    """An HTTP client of one dispatcher's API (an async context manager)."""

    def __init__(self, base_url: str, *, timeout: float = TIMEOUT) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout, connect=CONNECT_TIMEOUT),
            # Log followers hold a connection each, for as long as their job runs.
            limits=httpx.Limits(max_connections=400, max_keepalive_connections=20),
            follow_redirects=False,
        )

    async def __aenter__(self) -> Upstream:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def get(self, path: str, token: str | None, params: Params | None = None) -> Any:
        """``GET path``'s JSON answer."""
        response = await self._call("GET", path, token, params=params)
        return _json(response)

    async def post(self, path: str, token: str | None) -> Any:
        """``POST path`` with an empty JSON body (the API wants JSON); its JSON answer."""
        response = await self._call("POST", path, token, json={})
        return _json(response)

    async def text(self, path: str, token: str | None, limit: int = MAX_LOG) -> tuple[bytes, bool]:
        """A text answer's first ``limit`` bytes, and whether there was more."""
        body = b""
        async with self.stream(path, token) as response:
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > limit:
                    return body[:limit], True
        return body, False

    @contextlib.asynccontextmanager
    async def stream(
        self,
        path: str,
        token: str | None,
        params: Params | None = None,
        *,
        timeout: float | None = TIMEOUT,
    ) -> AsyncIterator[httpx.Response]:
        """A streamed answer, once its status said yes (``timeout``: between reads)."""
        request = self._http.build_request(
            "GET",
            path,
            params=params,
            headers=_auth(token),
            timeout=httpx.Timeout(timeout, connect=CONNECT_TIMEOUT),
        )
        try:
            response = await self._http.send(request, stream=True)
        except httpx.HTTPError as e:
            raise self._failure(e) from None
        try:
            if response.status_code >= 400:
                await response.aread()
                raise _refusal(response)
            try:
                yield response
            except httpx.HTTPError as e:
                raise self._failure(e) from None
        finally:
            await response.aclose()

    async def _call(self, method: str, path: str, token: str | None, **kw: Any) -> httpx.Response:
        try:
            response = await self._http.request(method, path, headers=_auth(token), **kw)
        except httpx.HTTPError as e:
            raise self._failure(e) from None
        if response.status_code >= 400:
            raise _refusal(response)
        return response

    def _failure(self, error: httpx.HTTPError) -> ApiError:
        if isinstance(error, httpx.TimeoutException):
            return ApiError(504, f"the dispatcher at {self.base_url} did not answer in time")
        return ApiError(502, f"cannot reach the dispatcher at {self.base_url}: {error}")


def _auth(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        raise ApiError(502, "the dispatcher answered something that is not JSON") from None


def _refusal(response: httpx.Response) -> ApiError:
    """The dispatcher's 4xx as it said it; its 5xx as a 502 (the dispatcher failed)."""
    try:
        message = str(json.loads(response.content)["error"])
    except (ValueError, KeyError, TypeError):
        message = response.reason_phrase or f"HTTP {response.status_code}"
    if response.status_code >= 500:
        return ApiError(502, f"the dispatcher failed: {message}")
    return ApiError(response.status_code, message)
