"""What the REST API reads from a request: its JSON body, its fields, its query and path.

Every check raises ``BadRequest`` with a message for the client (a 4xx in
``api._guard``): a value of the wrong type (a bool is not a number here,
though Python counts it as one), out of its range, NaN or infinite, is
refused by name, never turned into a 500.
"""

from __future__ import annotations

import math
import re
from typing import Any

from starlette.requests import Request

from narwhal.dispatcher.guard import JsonError, is_json, parse_json
from narwhal.errors import RepoError
from narwhal.mesh.protocol import MAX_PRIORITY, MIN_PRIORITY
from narwhal.pipeline_containers import MAX_CPUS, MAX_MEMORY, MIN_MEMORY
from narwhal.repos import check_ref

MAX_BODY = 64 * 1024
#: What ``resources: memory`` may say, as in narwhal.yml: bytes, or ``512m``, ``2g``.
_SIZE = re.compile(r"([0-9]{1,15})([kmg]?)b?", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
MIN_CPUS = 0.01
_RESOURCE_KEYS = ("cpus", "memory")


class BadRequest(Exception):
    """The request is malformed; the message goes back to the client."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


async def json_body(request: Request) -> dict[str, Any]:
    """The body as a JSON object (at most ``MAX_BODY`` bytes)."""
    if not is_json(request.headers.get("content-type")):  # the guard said so already
        raise BadRequest("expected a JSON body (Content-Type: application/json)", 415)
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise BadRequest(f"body larger than {MAX_BODY} bytes", 413)
    try:
        data = parse_json(body)
    except JsonError as e:
        raise BadRequest(str(e)) from None
    if not isinstance(data, dict):
        raise BadRequest("body must be a JSON object")
    return data


def field(body: dict[str, Any], name: str, kind: type, *, required: bool = False) -> Any:
    """``body[name]``, a ``kind`` (a non-empty one for strings); None when absent."""
    value = body.get(name)
    if value is None:
        if required:
            raise BadRequest(f"{name}: required")
        return None
    if not isinstance(value, kind) or (isinstance(value, str) and not value.strip()):
        raise BadRequest(f"{name}: expected a {'non-empty string' if kind is str else 'object'}")
    return value


def _shown(value: object) -> str:
    """A value the client sent, quoted in a message (cut short: it can be anything)."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def priority(body: dict[str, Any]) -> int:
    """``priority``: an integer from ``MIN_PRIORITY`` to ``MAX_PRIORITY`` (higher runs first)."""
    value = body.get("priority")
    if value is None:
        return 0
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or not MIN_PRIORITY <= value <= MAX_PRIORITY
    ):
        raise BadRequest(
            f"priority: expected an integer from {MIN_PRIORITY} to {MAX_PRIORITY},"
            f" got {_shown(value)}"
        )
    return value


def resources(body: dict[str, Any]) -> tuple[float | None, int | None]:
    """``resources: {"cpus": 2, "memory": "4g"}``: what a runner must have free; either may go."""
    value = body.get("resources")
    if value is None:
        return None, None
    if not isinstance(value, dict):
        raise BadRequest('resources: expected an object like {"cpus": 2, "memory": "4g"}')
    unknown = sorted(str(key) for key in value if key not in _RESOURCE_KEYS)
    if unknown:
        raise BadRequest(f"resources: unknown key {_shown(unknown[0])}; expected cpus, memory")
    return _cpus(value.get("cpus")), _memory(value.get("memory"))


def _cpus(value: object) -> float | None:
    if value is None:
        return None
    number = (
        float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
    )
    if number is None or not math.isfinite(number) or not MIN_CPUS <= number <= MAX_CPUS:
        raise BadRequest(
            f"resources.cpus: expected a number of CPUs from {MIN_CPUS} to {MAX_CPUS},"
            f" like 0.5 or 2, got {_shown(value)}"
        )
    return number


def _memory(value: object) -> int | None:
    if value is None:
        return None
    size = None
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    elif isinstance(value, str) and (match := _SIZE.fullmatch(value.strip())):
        size = int(match.group(1)) * _UNITS[match.group(2).lower()]
    if size is None or not MIN_MEMORY <= size <= MAX_MEMORY:
        raise BadRequest(
            "resources.memory: expected bytes or a size like 512m or 2g, from 6m to 1024g,"
            f" got {_shown(value)}"
        )
    return size


def query_int(
    raw: str | None, name: str, *, default: int | None, low: int, high: int = 2**62
) -> Any:
    """A query parameter's integer from ``low`` to ``high``; ``default`` when absent."""
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or not low <= int(raw) <= high:
        raise BadRequest(f"{name}: expected an integer from {low} to {high}")
    return int(raw)


def refs(given: list[str]) -> tuple[str, ...]:
    """``ref=`` filters (repeatable: a job of any of them); each a valid git ref."""
    if len(given) > 10:
        raise BadRequest("ref: at most 10 of them")
    try:
        return tuple(check_ref(ref) for ref in given)
    except RepoError as e:
        raise BadRequest(str(e)) from None


def runner(runner_id: str | None) -> str | None:
    if runner_id is not None and not (0 < len(runner_id) <= 200 and runner_id.isprintable()):
        raise BadRequest("runner: expected a runner id")
    return runner_id


def job_id(request: Request) -> int:
    raw = request.path_params["id"]
    if not (raw.isascii() and raw.isdigit()) or int(raw) >= 2**62:
        raise BadRequest(f"not a job id: {raw!r}", 404)
    return int(raw)
