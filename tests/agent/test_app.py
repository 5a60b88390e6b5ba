"""The agent over real HTTP, publishing to the real RabbitMQ."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

from narwhal.agent.app import Deduper
from narwhal.agent.server import serve_agent
from narwhal.config import AgentConfig, AmqpConfig, WebhookConfig
from narwhal.events import CommitEvent, decode
from tests.support.broker import AMQP_URL, broker_stopped, take_all
from tests.support.eventually import eventually_async
from tests.support.webhooks import SECRET, github_request, push_payload, recorded

SHA = "a" * 40


@asynccontextmanager
async def agent(
    queue: str, *, url: str = AMQP_URL, max_body: int = 25 * 1024 * 1024
) -> AsyncIterator[httpx.AsyncClient]:
    """``serve_agent`` in this loop; yields an HTTP client pointed at it."""
    config = AgentConfig(
        http_host="127.0.0.1",
        http_port=0,
        amqp=AmqpConfig(url=url, queue=queue, confirm_timeout=2.0, reconnect_max=0.3),
        webhooks=WebhookConfig(github_secret=SECRET, max_body=max_body),
    )
    stop = asyncio.Event()
    lines: list[str] = []
    announced = asyncio.Event()

    def announce(line: str) -> None:
        lines.append(line)
        announced.set()

    task = asyncio.create_task(serve_agent(config, stop=stop, announce=announce))
    try:
        await announced.wait()
        match = re.search(r"http://\S+", lines[0])
        assert match, lines
        async with httpx.AsyncClient(base_url=match.group(0), timeout=30) as client:
            if url == AMQP_URL:
                await until_connected(client)
            yield client
    finally:
        stop.set()
        await task


async def until_connected(client: httpx.AsyncClient, timeout: float = 20) -> None:
    async def connected() -> bool:
        return bool((await client.get("/health")).json()["broker"] == "connected")

    await eventually_async(connected, timeout=timeout, what="the agent's broker link")


async def post(
    client: httpx.AsyncClient, event: str, payload: dict[str, Any] | bytes, **kw: Any
) -> httpx.Response:
    body, headers = github_request(event, payload, **kw)
    return await client.post("/webhooks/github", content=body, headers=headers)


def test_recorded_payloads_queue_exactly_the_builds(queue: str) -> None:
    async def main() -> list[Any]:
        async with agent(queue) as client:
            pushed = await post(client, "push", recorded("push_with-new-branch.payload.json"))
            assert pushed.status_code == 200, pushed.text
            assert pushed.json()["status"] == "queued"
            opened = await post(
                client, "pull_request", recorded("pull_request_opened.payload.json")
            )
            assert opened.status_code == 200 and opened.json()["event"] == "pull_request"
            deleted = await post(client, "push", recorded("push_payload.json"))
            assert deleted.status_code == 202
            assert deleted.json() == {
                "status": "ignored",
                "reason": "push deletes refs/tags/simple-tag",
            }
            labeled = await post(
                client, "pull_request", recorded("pull_request_labeled.payload.json")
            )
            assert labeled.status_code == 202 and "labeled" in labeled.json()["reason"]
            ping = await post(client, "ping", recorded("ping_payload.json"))
            assert (ping.status_code, ping.json()) == (200, {"status": "pong"})
            other = await post(client, "star", {"action": "created"})
            assert other.status_code == 202 and "'star' is not built" in other.json()["reason"]
        return await take_all(queue)

    messages = asyncio.run(main())
    events = [decode(m.body) for m in messages]
    assert [(e.event, e.sha) for e in events] == [
        ("push", "6113728f27ae82c7b1a177c8d03f9e96e0adf246"),
        ("pull_request", "ec26c3e57ca3a959ca5aad62de7213c562f8c821"),
    ]
    for message, event in zip(messages, events, strict=True):
        assert message.message_id == event.id
        assert message.delivery_mode == 2  # persistent
        assert message.content_type == "application/json"


def test_bad_requests_are_4xx_and_queue_nothing(queue: str) -> None:
    async def main() -> list[Any]:
        async with agent(queue, max_body=16384) as client:
            body, headers = github_request("push", push_payload("/srv/repo.git", SHA))
            wrong = {**headers, "X-Hub-Signature-256": "sha256=" + "0" * 64}
            answers = {
                "wrong signature": await client.post(
                    "/webhooks/github", content=body, headers=wrong
                ),
                "no signature": await client.post(
                    "/webhooks/github",
                    content=body,
                    headers={k: v for k, v in headers.items() if k != "X-Hub-Signature-256"},
                ),
                "too large": await post(client, "push", b"{" + b" " * 20000 + b"}"),
                "too large, chunked": await client.post(
                    "/webhooks/github", content=_chunks(20000), headers=headers
                ),
                "not json": await post(client, "push", b"{nope"),
                "wrong type": await client.post(
                    "/webhooks/github",
                    content=body,
                    headers={**headers, "Content-Type": "text/xml"},
                ),
                "disabled forge": await client.post("/webhooks/gitlab", content=b"{}"),
                "GET": await client.get("/webhooks/github"),
            }
            codes = {name: r.status_code for name, r in answers.items()}
            assert codes == {
                "wrong signature": 401,
                "no signature": 401,
                "too large": 413,
                "too large, chunked": 413,
                "not json": 400,
                "wrong type": 415,
                "disabled forge": 404,
                "GET": 405,
            }
            for response in answers.values():
                assert json.loads(response.text)["error"]
        return await take_all(queue)

    assert asyncio.run(main()) == []


async def _chunks(size: int) -> AsyncIterator[bytes]:
    yield b"{"
    for _ in range(size // 100):
        yield b" " * 100
    yield b"}"


def test_redelivery_and_concurrent_duplicates_publish_once(queue: str) -> None:
    async def main() -> list[Any]:
        async with agent(queue) as client:
            payload = push_payload("/srv/repo.git", SHA)
            first = await post(client, "push", payload, delivery="same-id")
            again = await post(client, "push", payload, delivery="same-id")
            assert (first.json()["status"], again.json()["status"]) == ("queued", "duplicate")
            other = push_payload("/srv/repo.git", "b" * 40)
            burst = await asyncio.gather(
                *(post(client, "push", other, delivery=f"d-{n}") for n in range(10))
            )
            states = sorted(r.json()["status"] for r in burst)
            assert states.count("queued") >= 1
            assert all(r.status_code == 200 for r in burst)
        return await take_all(queue)

    messages = asyncio.run(main())
    shas = [decode(m.body).sha for m in messages]
    assert shas.count(SHA) == 1
    # Concurrent deliveries of one commit share one hand-over; the dispatcher
    # dedupes the rest by commit while the job is active.
    assert 1 <= shas.count("b" * 40) <= 10


def test_broker_down_is_503_then_recovers_by_itself(queue: str) -> None:
    async def main() -> list[Any]:
        async with agent(queue) as client:
            with broker_stopped():
                down = await post(client, "push", push_payload("/srv/repo.git", SHA), delivery="x")
                assert down.status_code == 503, down.text
                assert down.headers["retry-after"]
                assert "RabbitMQ" in down.json()["error"]
            await until_connected(client)
            retried = await post(client, "push", push_payload("/srv/repo.git", SHA), delivery="x")
            assert (retried.status_code, retried.json()["status"]) == (200, "queued")
        return await take_all(queue)

    messages = asyncio.run(main())
    assert [decode(m.body).id for m in messages] == ["github:x"]


def test_unreachable_broker_is_503_never_500(queue: str) -> None:
    async def main() -> None:
        async with agent(queue, url="amqp://guest:guest@127.0.0.1:1/") as client:
            answer = await post(client, "push", push_payload("/srv/repo.git", SHA))
            assert answer.status_code == 503
            health = (await client.get("/health")).json()
            assert health["broker"] == "disconnected"

    asyncio.run(main())


def test_a_signed_body_replayed_under_new_delivery_ids_is_queued_once(queue: str) -> None:
    async def main() -> list[Any]:
        async with agent(queue) as client:
            payload = recorded("push_with-new-branch.payload.json")
            first = await post(client, "push", payload, delivery="original")
            assert first.json()["status"] == "queued"
            for n in range(3):
                replay = await post(client, "push", payload, delivery=f"replayed-{n}")
                assert (replay.status_code, replay.json()["status"]) == (200, "duplicate")
        return await take_all(queue)

    assert len(asyncio.run(main())) == 1


class ListSink:
    """Keeps what it is sent: the Sink protocol without a broker."""

    def __init__(self) -> None:
        self.sent: list[CommitEvent] = []

    async def send(self, event: CommitEvent) -> None:
        self.sent.append(event)


def _event(delivery: str, sha: str = SHA) -> CommitEvent:
    return CommitEvent(
        id=f"github:{delivery}",
        forge="github",
        delivery=delivery,
        repo="https://github.com/octo/hello.git",
        full_name="octo/hello",
        ref="refs/heads/main",
        sha=sha,
        event="push",
    )


def test_body_digests_are_remembered_for_a_window_and_a_bounded_number() -> None:
    now = [0.0]
    sink = ListSink()
    dedupe = Deduper(sink, remember=3, window=3600.0, clock=lambda: now[0])

    async def main() -> list[bool]:
        answers = [await dedupe.send(_event("d1"), body="body-1")]
        now[0] = 3599.0
        answers.append(await dedupe.send(_event("d2"), body="body-1"))  # a replay
        now[0] = 3601.0
        answers.append(await dedupe.send(_event("d3"), body="body-1"))  # window over
        for n in range(4):  # push the first digest out of the bounded memory
            answers.append(await dedupe.send(_event(f"e{n}", f"{n:040x}"), body=f"other-{n}"))
        answers.append(await dedupe.send(_event("d4"), body="body-1"))
        return answers

    assert asyncio.run(main()) == [True, False, True, True, True, True, True, True]
    assert len(sink.sent) == 7
