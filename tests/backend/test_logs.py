"""Log followers against a stand-in dispatcher whose job and log stream the test scripts."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from narwhal.backend.hub import Hub
from narwhal.backend.logs import Followers
from narwhal.backend.upstream import Upstream
from narwhal.httpserver import listen, run_http
from tests.support.eventually import eventually_async

JOB = 7


@dataclass
class StandIn:
    """One job (``JOB``): its attempt and state, and its log streams, fed by the test."""

    attempt: int = 1
    state: str = "running"
    streams: list[asyncio.Queue[bytes | None]] = field(default_factory=list)

    async def job(self, request: Request) -> Response:
        if request.path_params["id"] != str(JOB):
            return JSONResponse({"error": f"no job {request.path_params['id']}"}, 404)
        return JSONResponse({"id": JOB, "attempt": self.attempt, "state": self.state})

    async def logs(self, request: Request) -> Response:
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.streams.append(queue)

        async def chunks() -> AsyncIterator[bytes]:
            while (chunk := await queue.get()) is not None:
                yield chunk

        return StreamingResponse(chunks(), media_type="text/plain")

    def push(self, chunk: bytes | None) -> None:
        """To the stream opened last (None: it ends)."""
        self.streams[-1].put_nowait(chunk)


@contextlib.asynccontextmanager
async def served(stand_in: StandIn) -> AsyncIterator[str]:
    app = Starlette(
        routes=[
            Route("/api/jobs/{id}", stand_in.job),
            Route("/api/jobs/{id}/logs", stand_in.logs),
        ]
    )
    sock = listen("127.0.0.1", 0)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    stop = asyncio.Event()
    task = asyncio.create_task(run_http(app, sock, stop, grace=1))
    try:
        yield url
    finally:
        for queue in stand_in.streams:
            queue.put_nowait(None)
        stop.set()
        await task


class Browser:
    """What a peer of the hub is sent, decoded."""

    def __init__(self, hub: Hub) -> None:
        self.messages: list[dict[str, Any]] = []
        self.peer = hub.join(self._send, None)
        self.pump = asyncio.create_task(self.peer.pump())

    async def _send(self, text: str) -> None:
        self.messages.append(json.loads(text))

    def shown(self) -> tuple[int, list[str]]:
        """The attempt and the lines a page shows, applying resets."""
        attempt, lines = 0, []
        for message in self.messages:
            if message["type"] == "log":
                attempt = message["attempt"]
                lines = message["lines"] if message["reset"] else lines + message["lines"]
        return attempt, lines

    async def shows(self, attempt: int, lines: list[str]) -> None:
        await eventually_async(
            lambda: self.shown() == (attempt, lines),
            timeout=10,
            what=f"attempt {attempt} showing {lines}",
            detail=self.shown,
        )

    async def close(self) -> None:
        self.pump.cancel()
        await asyncio.gather(self.pump, return_exceptions=True)


def test_a_follower_streams_whole_lines_starts_over_on_a_new_attempt_and_ends() -> None:
    async def scenario() -> None:
        stand_in = StandIn()
        async with served(stand_in) as url, Upstream(url) as upstream:
            hub = Hub()
            followers = Followers(upstream, hub, token=None)
            first = Browser(hub)
            assert followers.follow(first.peer, JOB, None) is None
            await eventually_async(lambda: stand_in.streams, what="the stream opened")
            await first.shows(1, [])
            assert first.messages[0]["reset"] and len(first.messages) == 1
            stand_in.push(b"one\ntw")
            await first.shows(1, ["one"])
            stand_in.push(b"o\nthr")
            await first.shows(1, ["one", "two"])
            # The dispatcher shuts down mid-job: the stream ends, the job goes on.
            stand_in.push(b"ee\n")
            stand_in.push(None)
            await eventually_async(lambda: len(stand_in.streams) == 2, what="a new stream")
            stand_in.push(b"one\ntwo\nthree\n")
            await first.shows(1, ["one", "two", "three"])
            # A step printing the dispatcher's mark of an attempt changes nothing.
            stand_in.push(b"--- attempt 2\n")
            await first.shows(1, ["one", "two", "three", "--- attempt 2"])
            followers.job_changed(JOB, 1)  # no news
            stand_in.attempt = 2
            followers.job_changed(JOB, 2)  # the feed tells of attempt 2
            await eventually_async(lambda: len(stand_in.streams) == 3, what="attempt 2's stream")
            await first.shows(2, [])
            stand_in.state = "success"
            stand_in.push(b"again\nend-partial")
            stand_in.push(None)
            await first.shows(2, ["again", "end-partial"])
            late = Browser(hub)
            followers.follow(late.peer, JOB, None)
            await late.shows(2, ["again", "end-partial"])
            assert len(stand_in.streams) == 3  # an ended job's lines are kept, not read again
            followers.follow(late.peer, 8, None)
            await eventually_async(
                lambda: any(
                    m["type"] == "error" and "no job 8" in m["error"] for m in late.messages
                ),
                what="an error for job 8",
            )
            followers.unfollow(first.peer)
            followers.unfollow(late.peer)
            assert len(followers) == 0
            await followers.aclose()
            await first.close()
            await late.close()

    asyncio.run(scenario())
