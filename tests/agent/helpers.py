"""Test helpers for the agent and the AMQP path: the real broker, signed
webhooks built from recorded GitHub payloads, and a small real HTTP server
that plays a forge's status API and records what it got."""

from __future__ import annotations

import asyncio
import copy
import hashlib
import hmac
import json
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import aio_pika
import pytest

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
#: Recorded GitHub payloads (octokit/webhooks, MIT: see the LICENSE file
#: beside them), kept in the repository so the tests need nothing outside it.
TESTDATA = Path(__file__).resolve().parent / "testdata" / "github"
SECRET = "It's a Secret to Everybody"


def require_broker() -> None:
    """Fail (never skip) when RabbitMQ is not there: the tests need the real one."""
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=2).close()
    except OSError as e:
        pytest.fail(
            f"RabbitMQ does not answer on 127.0.0.1:5672 ({e}); scripts/test starts it,"
            " or run: rabbitmq-server -detached"
        )


def new_queue_name() -> str:
    return f"narwhal.test.{uuid.uuid4().hex[:12]}"


async def _with_channel(fn: Callable[[aio_pika.abc.AbstractChannel], Any]) -> Any:
    connection = await aio_pika.connect(AMQP_URL, timeout=10)
    async with connection:
        channel = await connection.channel()
        return await fn(channel)


def delete_queues(*names: str) -> None:
    async def delete(channel: aio_pika.abc.AbstractChannel) -> None:
        for name in names:
            await channel.queue_delete(name)

    asyncio.run(_with_channel(delete))


def queue_depth(name: str) -> int:
    """Messages ready in a queue (0 if it does not exist)."""

    async def depth(channel: aio_pika.abc.AbstractChannel) -> int:
        try:
            queue = await channel.declare_queue(name, passive=True)
        except aio_pika.exceptions.ChannelClosed:
            return 0
        count = queue.declaration_result.message_count
        return int(count or 0)

    return int(asyncio.run(_with_channel(depth)))


async def take_all(name: str) -> list[aio_pika.abc.AbstractIncomingMessage]:
    """Every message ready in a queue, removed from it."""

    async def take(channel: aio_pika.abc.AbstractChannel) -> list[Any]:
        queue = await channel.get_queue(name)
        messages = []
        while (message := await queue.get(no_ack=True, fail=False)) is not None:
            messages.append(message)
        return messages

    return list(await _with_channel(take))


@contextmanager
def own_queue() -> Iterator[str]:
    """A queue name of one test's own; it and its dead-letter queue are deleted after."""
    require_broker()
    name = new_queue_name()
    try:
        yield name
    finally:
        if not broker_answers():
            start_broker()
        delete_queues(name, f"{name}.dead")


def broker_answers() -> bool:
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=1).close()
    except OSError:
        return False
    return True


def stop_broker() -> None:
    subprocess.run(["rabbitmqctl", "-q", "stop_app"], check=True, capture_output=True, timeout=60)


def start_broker() -> None:
    subprocess.run(["rabbitmqctl", "-q", "start_app"], check=True, capture_output=True, timeout=60)
    deadline = time.monotonic() + 30
    while not broker_answers():
        if time.monotonic() > deadline:
            raise AssertionError("RabbitMQ did not come back within 30s")
        time.sleep(0.1)


@contextmanager
def broker_stopped() -> Iterator[None]:
    """The broker's application stopped for the block; always started again."""
    stop_broker()
    try:
        yield
    finally:
        start_broker()


# webhooks


def recorded(name: str) -> dict[str, Any]:
    """A recorded GitHub payload from tests/agent/testdata (octokit/webhooks, MIT)."""
    data = json.loads((TESTDATA / name).read_text())
    assert isinstance(data, dict)
    return data


def push_payload(repo: str, sha: str, ref: str = "refs/heads/main") -> dict[str, Any]:
    """The recorded push to a new branch, pointed at a local repository and commit."""
    payload = copy.deepcopy(recorded("push_with-new-branch.payload.json"))
    payload.update(ref=ref, after=sha)
    payload["repository"]["clone_url"] = repo
    payload["head_commit"]["id"] = sha
    return payload


def pr_payload(repo: str, sha: str, branch: str = "main", action: str = "opened") -> dict[str, Any]:
    """The recorded pull_request opened, pointed at a local repository and commit."""
    payload = copy.deepcopy(recorded("pull_request_opened.payload.json"))
    payload["action"] = action
    head = payload["pull_request"]["head"]
    head.update(sha=sha, ref=branch)
    head["repo"]["clone_url"] = repo
    return payload


def sign(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def github_request(
    event: str, payload: dict[str, Any] | bytes, *, delivery: str | None = None
) -> tuple[bytes, dict[str, str]]:
    """Body and headers of a signed GitHub webhook delivery."""
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    headers = {
        "Content-Type": "application/json",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
        "X-Hub-Signature-256": sign(body),
        "User-Agent": "GitHub-Hookshot/test",
    }
    return body, headers


# a forge's status API


@dataclass(frozen=True)
class Recorded:
    """One request the fake forge got."""

    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


class FakeForge:
    """A real HTTP server on 127.0.0.1 that answers status calls and records them.

    ``fail`` answers that many requests with ``fail_status`` first, to
    exercise retries.
    """

    def __init__(self, *, fail: int = 0, fail_status: int = 502) -> None:
        self.requests: list[Recorded] = []
        self.fail = fail
        self.fail_status = fail_status
        self.answered: list[int] = []
        self._lock = threading.Lock()
        forge = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length", "0"))
                raw = self.rfile.read(length)
                status = forge.record(self, raw)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"id": 1}')

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-forge")
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def record(self, handler: BaseHTTPRequestHandler, raw: bytes) -> int:
        with self._lock:
            status = 201
            if self.fail > 0:
                self.fail -= 1
                status = self.fail_status
            else:
                body = json.loads(raw) if raw else {}
                headers = {k.lower(): v for k, v in handler.headers.items()}
                self.requests.append(Recorded(handler.command, handler.path, headers, body))
            self.answered.append(status)
            return status

    def statuses(self, sha: str | None = None) -> list[tuple[str, str]]:
        """(context, state) of every recorded status, in order."""
        with self._lock:
            return [
                (r.body.get("context") or r.body.get("name", ""), r.body["state"])
                for r in self.requests
                if sha is None or r.path.endswith(f"/statuses/{sha}")
            ]

    def wait_for(self, predicate: Callable[[FakeForge], bool], timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not predicate(self):
            if time.monotonic() > deadline:
                raise AssertionError(f"the forge never got what was expected: {self.requests}")
            time.sleep(0.02)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
