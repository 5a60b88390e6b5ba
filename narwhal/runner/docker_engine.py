"""Talking to a Docker engine: connecting, labels, removing what carries them.

Shared by the Docker executor and the CLI (which asks whether an engine
answers). Third-party exceptions of the SDK, requests and urllib3 are
named here (``ENGINE_ERRORS``) and become ``ExecutorError`` in ``call``
(every SDK call of a job, off the loop) or in the callers that block.
"""

from __future__ import annotations

import asyncio
import functools
import os
import socket
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import docker  # type: ignore[import-untyped,unused-ignore]
import requests
import urllib3
from docker.errors import DockerException, NotFound  # type: ignore[import-untyped,unused-ignore]
from docker.models.containers import Container  # type: ignore[import-untyped,unused-ignore]
from docker.models.volumes import Volume  # type: ignore[import-untyped,unused-ignore]

from narwhal.errors import ExecutorError

DEFAULT_SOCKET = "unix:///var/run/docker.sock"
LABEL_RUNNER = "narwhal.runner"
LABEL_INSTANCE = "narwhal.instance"
LABEL_HOST = "narwhal.host"
LABEL_PID = "narwhal.pid"
LABEL_JOB = "narwhal.job"
LABEL_SESSION = "narwhal.session"
ENGINE_ERRORS = (DockerException, requests.RequestException, urllib3.exceptions.HTTPError, OSError)

T = TypeVar("T")


async def call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a blocking SDK call off the loop; engine errors become ExecutorError."""
    try:
        return await asyncio.to_thread(functools.partial(fn, *args, **kwargs))
    except ENGINE_ERRORS as e:
        raise ExecutorError(f"docker: {engine_message(e)}") from e


def engine_message(error: BaseException) -> str:
    """The engine's own words for an SDK error, on one line."""
    text = getattr(error, "explanation", None) or str(error) or type(error).__name__
    return " ".join(str(text).split())


def connect(base_url: str | None, *, timeout: float = 60.0) -> Any:
    """A docker client talking to a live engine (blocking). Raises ExecutorError."""
    try:
        _probe(base_url or os.environ.get("DOCKER_HOST") or DEFAULT_SOCKET, timeout)
        if base_url:
            return docker.DockerClient(base_url=base_url, timeout=timeout)
        return docker.from_env(timeout=timeout)
    except ENGINE_ERRORS as e:
        raise ExecutorError(f"docker engine not reachable: {engine_message(e)}") from e


def _probe(url: str, timeout: float) -> None:
    """Fail fast, and without leaking a socket as the SDK does, when a unix socket is dead."""
    if not url.startswith("unix://"):
        return
    path = url.removeprefix("unix://")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(timeout)
        try:
            probe.connect(path)
        except OSError as e:
            raise OSError(f"{path}: {e.strerror or e}") from None


def engine_problem(base_url: str | None = None) -> str | None:
    """None when a Docker engine answers, else why not (blocking, a few seconds at most)."""
    try:
        client = connect(base_url, timeout=3.0)
    except ExecutorError as e:
        return str(e)
    client.close()
    return None


def nothing(labels: Mapping[str, str]) -> bool:
    return False


def process_alive(pid: str) -> bool:
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_labelled(
    client: Any, selector: dict[str, str], *, keep: Callable[[Mapping[str, str]], bool]
) -> int:
    """Remove what matches a label filter, containers before networks (blocking)."""
    removed = 0
    for kind in (client.containers, client.networks, client.volumes):
        for item in _listing(kind)(filters=selector):
            if not keep(_labels_of(item)):
                discard(item)
                removed += 1
    return removed


def _listing(kind: Any) -> Callable[..., list[Any]]:
    if kind.model is Container:
        return functools.partial(kind.list, all=True)  # stopped ones too
    return kind.list  # type: ignore[no-any-return]


def _labels_of(item: Any) -> dict[str, str]:
    attrs = item.attrs
    labels = attrs.get("Labels") or attrs.get("Config", {}).get("Labels") or {}
    return dict(labels)


def discard(item: Any) -> None:
    """Remove a container (with its anonymous volumes), network or volume; gone is fine."""
    try:
        if isinstance(item, Container):
            item.remove(force=True, v=True)
        elif isinstance(item, Volume):
            item.remove(force=True)
        else:
            item.remove()
    except NotFound:
        pass
