"""A forge's status API played by a small real HTTP server that records what it got."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.support.eventually import eventually


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
        eventually(
            lambda: predicate(self),
            timeout=timeout,
            interval=0.02,
            what="the forge to get what was expected",
            detail=lambda: self.requests,
        )

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
