"""The subscriber's sync and gap rules against a publisher the test plays, on real sockets.

The test binds the PUB and the snapshot ROUTER itself and decides every
message: which ``seq`` comes when, what arrives while the snapshot is
awaited, a request left unanswered, a malformed message or reply.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import zmq
import zmq.asyncio

from narwhal.mesh import feed as f
from narwhal.mesh.subscriber import Subscriber
from tests.support.eventually import eventually_async

STATE = f.Snapshot(
    runners=(),
    jobs=(),
    queue=f.QueueView(queued=0, active=0, oldest=None),
    stats=f.StatsView(started_at=0.0, jobs_total={}, minutes=()),
)
LOG = f.LogView(job_id=1, attempt=1, seq=1, size=1)


class FakePublisher:
    """A PUB and a snapshot ROUTER on a free pair of ports, driven by the test."""

    def __init__(self, ctx: zmq.asyncio.Context) -> None:
        self.pub = ctx.socket(zmq.PUB)
        self.router = ctx.socket(zmq.ROUTER)
        for sock in (self.pub, self.router):
            sock.setsockopt(zmq.LINGER, 0)
        while True:
            port = self.pub.bind_to_random_port("tcp://127.0.0.1", max_port=65534)
            try:
                self.router.bind(f"tcp://127.0.0.1:{port + 1}")
                break
            except zmq.ZMQError:
                self.pub.unbind(f"tcp://127.0.0.1:{port}")
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self.epoch = "first"
        self.seq = 0
        self.requests = 0

    def send(self, topic: bytes = b"log", *, seq: int | None = None, epoch: str = "") -> None:
        self.seq = self.seq + 1 if seq is None else seq
        items = [LOG] if topic == b"log" else []
        self.pub.send_multipart(f.encode_update(topic, epoch or self.epoch, self.seq, items))

    async def request(self) -> bytes:
        """Beat until the subscriber asks for a snapshot; its routing id."""
        while not await self.router.poll(20):
            self.send(b"beat")
        identity, body = await self.router.recv_multipart()
        assert body == f.SNAPSHOT_REQUEST
        self.requests += 1
        return bytes(identity)

    async def reply(self, identity: bytes, frames: list[bytes] | None = None) -> None:
        await self.router.send_multipart(
            [identity, *(frames or f.encode_snapshot(self.epoch, self.seq, STATE))]
        )

    def close(self) -> None:
        self.pub.close(0)
        self.router.close(0)


class Reader:
    """Iterates a subscriber's updates in a task, recording (kind, seq)."""

    def __init__(self, sub: Subscriber) -> None:
        self.sub = sub
        self.seen: list[tuple[str, int]] = []

    async def run(self) -> None:
        async with contextlib.aclosing(self.sub.updates()) as updates:
            async for event in updates:
                if isinstance(event, f.Snapshot):
                    self.seen.append(("snapshot", self.sub.seq))
                else:
                    self.seen.append((event.topic.decode(), event.seq))


def scenario(
    test: Callable[[FakePublisher, Subscriber, Reader], Awaitable[None]], **kw: Any
) -> None:
    async def main() -> None:
        ctx = zmq.asyncio.Context()
        fake = FakePublisher(ctx)
        sub = Subscriber(fake.endpoint, context=ctx, timeout=kw.pop("timeout", 1.0), **kw)
        reader = Reader(sub)
        task = asyncio.create_task(reader.run())
        try:
            await test(fake, sub, reader)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            fake.close()
            ctx.term()

    asyncio.run(main())


async def synced(fake: FakePublisher, reader: Reader) -> None:
    """Answer the subscriber's next request and wait for its snapshot."""
    count = sum(1 for kind, _ in reader.seen if kind == "snapshot")
    await fake.reply(await fake.request())
    await eventually_async(
        lambda: sum(1 for kind, _ in reader.seen if kind == "snapshot") > count,
        timeout=5,
        what="the snapshot",
    )


def test_what_came_before_the_snapshot_is_dropped_and_what_came_after_kept() -> None:
    async def test(fake: FakePublisher, sub: Subscriber, reader: Reader) -> None:
        identity = await fake.request()
        at = fake.seq
        for _ in range(3):
            fake.send()  # published after the request, before the reply: kept
        await asyncio.sleep(0.1)
        await fake.reply(identity, f.encode_snapshot(fake.epoch, at + 1, STATE))
        fake.send()
        await eventually_async(lambda: len(reader.seen) == 4, timeout=5, what="4 events")
        assert reader.seen == [
            ("snapshot", at + 1),
            ("log", at + 2),
            ("log", at + 3),
            ("log", at + 4),
        ]
        assert (sub.gaps, sub.missed, sub.snapshots) == (0, 0, 1)

    scenario(test)


def test_a_seq_jump_is_a_gap_with_the_missed_count() -> None:
    async def test(fake: FakePublisher, sub: Subscriber, reader: Reader) -> None:
        await synced(fake, reader)
        fake.send()
        fake.send(seq=fake.seq + 5)  # 4 never came
        await synced(fake, reader)
        assert (sub.gaps, sub.missed, sub.snapshots) == (1, 4, 2)

    scenario(test)


def test_a_new_epoch_is_a_gap() -> None:
    async def test(fake: FakePublisher, sub: Subscriber, reader: Reader) -> None:
        await synced(fake, reader)
        fake.epoch, fake.seq = "second", 0
        fake.send()
        fake.send()
        await synced(fake, reader)
        assert sub.gaps == 1 and sub.epoch == "second"

    scenario(test)


def test_a_malformed_message_is_counted_and_resynced() -> None:
    async def test(fake: FakePublisher, sub: Subscriber, reader: Reader) -> None:
        await synced(fake, reader)
        fake.seq += 1
        fake.pub.send_multipart([b"log", b"\x91\x02"])  # [2]: not [version, epoch, seq, items]
        await synced(fake, reader)
        assert (sub.malformed, sub.gaps, sub.snapshots) == (1, 1, 2)

    scenario(test)


def test_an_unanswered_request_is_retried_without_hanging() -> None:
    async def test(fake: FakePublisher, sub: Subscriber, reader: Reader) -> None:
        await fake.request()  # never answered
        await fake.request()  # asked again after the timeout and a back-off
        assert not sub.connected and reader.seen == []
        await synced(fake, reader)
        assert fake.requests == 3 and sub.snapshots == 1

    scenario(test, timeout=0.3)


def test_a_malformed_snapshot_is_counted_and_asked_again() -> None:
    async def test(fake: FakePublisher, sub: Subscriber, reader: Reader) -> None:
        await fake.reply(await fake.request(), [b"snapshot", b"\xc1"])
        await synced(fake, reader)
        assert sub.malformed == 1 and sub.snapshots == 1 and fake.requests == 2

    scenario(test)


def test_too_much_before_the_snapshot_drops_the_buffer_and_starts_again() -> None:
    async def test(fake: FakePublisher, sub: Subscriber, reader: Reader) -> None:
        identity = await fake.request()
        for _ in range(8):
            fake.send()  # more than the buffer takes
        await eventually_async(lambda: sub.gaps == 1, timeout=5, what="the overflow")
        await fake.reply(identity)  # too late: that request was given up
        await synced(fake, reader)
        assert sub.missed == 6 and fake.requests == 2
        assert [kind for kind, _ in reader.seen] == ["snapshot"]

    scenario(test, buffer_limit=5)


def test_silence_after_a_snapshot_is_a_gap() -> None:
    async def test(fake: FakePublisher, sub: Subscriber, reader: Reader) -> None:
        await synced(fake, reader)
        await eventually_async(lambda: sub.gaps == 1, timeout=5, what="the silence")
        assert not sub.connected
        await synced(fake, reader)
        assert sub.connected and sub.snapshots == 2

    scenario(test, timeout=0.3)


def test_the_status_is_the_api_state_feed_part() -> None:
    async def test(fake: FakePublisher, sub: Subscriber, reader: Reader) -> None:
        await synced(fake, reader)
        status = sub.status()
        assert {"connected", "epoch", "seq", "gaps", "missed"} <= set(status)
        assert status["connected"] and status["epoch"] == "first"

    scenario(test)


def test_with_several_feeds_it_follows_whichever_publishes() -> None:
    # Dispatchers sharing a database: only the leader publishes. The first
    # feed named is a standby's (nothing there); then the leader goes silent
    # and another one, with an epoch of its own, takes over.
    async def main() -> None:
        ctx = zmq.asyncio.Context()
        standby, leader, successor = FakePublisher(ctx), FakePublisher(ctx), FakePublisher(ctx)
        standby.close()  # its ports taken by nobody: a standby publishes nothing
        successor.epoch = "second"
        endpoints = [standby.endpoint, leader.endpoint, successor.endpoint]
        sub = Subscriber(endpoints, context=ctx, timeout=0.3, backoff=0.05)
        reader = Reader(sub)
        task = asyncio.create_task(reader.run())
        try:
            await synced(leader, reader)
            assert sub.endpoint == leader.endpoint and sub.epoch == "first"
            leader.send()
            await eventually_async(
                lambda: any(kind == "log" for kind, _ in reader.seen), timeout=5, what="an update"
            )
            leader.close()  # the leader dies: silence, then the next feed
            await synced(successor, reader)
            assert sub.endpoint == successor.endpoint and sub.epoch == "second"
            assert sub.status()["endpoint"] == successor.endpoint
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            for fake in (leader, successor):
                fake.close()
            ctx.term()

    asyncio.run(main())
