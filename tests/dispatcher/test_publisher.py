"""The metrics publisher and its subscribers on real sockets (the Clone pattern end to end).

A subscriber joining late gets a snapshot, then every message after it
once; a gap (messages lost at the high-water mark, or dropped on purpose
with the ``lose`` hook), a restart (a new epoch) and silence are detected,
counted and answered with a new snapshot; a stuck subscriber costs the
publisher nothing that matters; CURVE lets in trusted subscriber keys only;
garbage on the snapshot ROUTER is counted and ignored.

"Converged" means: what the subscriber rebuilt from its snapshot and the
updates after it equals what a fresh snapshot says now.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
import zmq
import zmq.asyncio

from narwhal.config import ServerCurve, SubscriberCurve
from narwhal.dispatcher.feed import Feed, JobChanged, RunnerChanged
from narwhal.dispatcher.publisher import Publisher
from narwhal.errors import ConfigError
from narwhal.mesh import feed as f
from narwhal.mesh.keys import generate
from narwhal.mesh.subscriber import Replica, Subscriber
from narwhal.mesh.subscriber_keys import trust_subscriber
from tests.support.eventually import eventually_async
from tests.support.feeds import event_mix, record, runner_json

LOOPBACK = "tcp://127.0.0.1:0"


class Follower:
    """A subscriber read by a task into a Replica; ``gate`` cleared: it stops reading."""

    def __init__(self, subscriber: Subscriber) -> None:
        self.sub = subscriber
        self.replica = Replica()
        self.seen: list[tuple[str, int]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Follower:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        async with contextlib.aclosing(self.sub.updates()) as updates:
            async for event in updates:
                await self.gate.wait()
                self.replica.apply(event)
                if isinstance(event, f.Snapshot):
                    self.seen.append(("snapshot", self.sub.seq))
                else:
                    self.seen.append((event.topic.decode(), event.seq))

    def snapshots(self) -> int:
        return sum(1 for kind, _ in self.seen if kind == "snapshot")


def fresh(publisher: Publisher) -> dict[str, Any]:
    """What a subscriber joining now would start from (publishes what is pending first)."""
    _, _, snapshot = f.decode_snapshot(publisher.snapshot_frames())
    replica = Replica()
    replica.apply(snapshot)
    return replica.render()


async def converged(follower: Follower, publisher: Publisher, timeout: float = 10.0) -> None:
    def check() -> bool:
        now = fresh(publisher)
        return (
            follower.sub.epoch == publisher.epoch
            and follower.sub.seq == publisher.seq
            and follower.replica.render() == now
        )

    await eventually_async(
        check,
        timeout=timeout,
        what="the subscriber to converge",
        detail=lambda: (follower.sub.status(), publisher.seq, publisher.epoch),
    )


async def publish(
    feed: Feed, jobs: int, *, first: int = 1, every: int = 200, pause: float = 0.0
) -> None:
    """Job lives into the feed, letting the loop run (and the publisher flush) now and then."""
    for i, event in enumerate(event_mix(jobs, first=first)):
        feed.publish(event)
        if i % every == 0:
            await asyncio.sleep(pause)


def test_a_late_joiner_gets_a_snapshot_then_every_update_once() -> None:
    async def main() -> None:
        feed = Feed()
        async with Publisher(LOOPBACK, feed) as publisher:
            feed.publish(RunnerChanged(runner_json("tcp://127.0.0.1:1"), joined=True))
            secret = record(0, repo="https://user:s3cret@forge.example/x.git")
            feed.publish(JobChanged(secret, None))
            await publish(feed, 300)
            await asyncio.sleep(0.1)
            sub = Subscriber(publisher.endpoint, timeout=2.0)
            async with Follower(sub) as follower:
                producing = asyncio.create_task(
                    publish(feed, 500, first=1000, every=20, pause=0.005)
                )
                await eventually_async(lambda: follower.seen, what="the snapshot")
                await producing
                await converged(follower, publisher)
            kinds = [kind for kind, _ in follower.seen]
            seqs = [seq for _, seq in follower.seen]
            assert kinds[0] == "snapshot" and "snapshot" not in kinds[1:]
            assert len(kinds) > 10, "deltas came after the snapshot"
            assert seqs == sorted(set(seqs)), "no update twice, none out of order"
            assert (sub.gaps, sub.missed, sub.malformed, sub.snapshots) == (0, 0, 0, 1)
            assert publisher.snapshots == 1 and publisher.bad_requests == 0
            jobs = follower.replica.render()["jobs"]
            assert follower.replica.live[0].repo == "https://***@forge.example/x.git"
            assert "s3cret" not in repr(jobs) + repr(follower.replica.live)

    asyncio.run(main())


def test_a_forced_gap_is_counted_and_resynced() -> None:
    async def main() -> None:
        feed = Feed()
        async with Publisher(LOOPBACK, feed) as publisher:
            sub = Subscriber(publisher.endpoint, timeout=2.0)
            async with Follower(sub) as follower:
                await publish(feed, 20)
                await converged(follower, publisher)
                publisher.lose(3)
                await publish(feed, 20, first=100)
                await converged(follower, publisher)
            assert sub.gaps == 1 and sub.missed == 3
            assert sub.snapshots == 2 and follower.snapshots() == 2

    asyncio.run(main())


def test_messages_lost_at_the_high_water_mark_are_a_gap_and_resynced() -> None:
    async def main() -> None:
        feed = Feed()
        async with Publisher(LOOPBACK, feed, send_hwm=1) as publisher:
            sub = Subscriber(publisher.endpoint, timeout=5.0, receive_hwm=1)
            async with Follower(sub) as follower:
                await publish(feed, 5)
                await converged(follower, publisher)
                follower.gate.clear()  # stops reading: libzmq and TCP buffers fill up
                bulky = "x" * 2000
                for burst in range(40):
                    for i in range(1000):
                        job_id = 10_000 + burst * 1000 + i
                        feed.publish(JobChanged(record(job_id, "success", reason=bulky), None))
                    publisher.flush()
                    await asyncio.sleep(0)
                sent = publisher.published
                follower.gate.set()
                await converged(follower, publisher, timeout=30.0)
            print(f"\n{sent} messages published, subscriber: {sub.status()}")
            assert sub.gaps >= 1 and sub.missed >= 1
            assert sub.snapshots >= 2

    asyncio.run(main())


def test_a_restarted_publisher_is_resynced() -> None:
    async def main() -> None:
        feed = Feed()
        first = Publisher(LOOPBACK, feed)
        await first.start()
        endpoint, epoch = first.endpoint, first.epoch
        sub = Subscriber(endpoint, timeout=1.0, backoff=0.05, max_backoff=0.2)
        try:
            async with Follower(sub) as follower:
                await publish(feed, 10)
                await converged(follower, first)
                await first.aclose()
                second = Publisher(endpoint, feed)
                async with second:
                    assert second.epoch != epoch
                    await publish(feed, 10, first=50)
                    await converged(follower, second)
        finally:
            await first.aclose()
        assert sub.epoch == second.epoch and sub.gaps >= 1 and sub.snapshots >= 2
        assert follower.replica.live == {}, "the new life's state, not a mix of both"
        assert sorted(follower.replica.ended) == list(range(50, 60))

    asyncio.run(main())


def test_idle_beats_keep_a_subscriber_in_sync_and_silence_is_a_gap() -> None:
    async def main() -> None:
        feed = Feed()
        async with Publisher(LOOPBACK, feed, beat_interval=0.1) as publisher:
            sub = Subscriber(publisher.endpoint, timeout=0.5)
            async with Follower(sub) as follower:
                await converged(follower, publisher)
                synced_at = sub.seq
                await asyncio.sleep(1.2)
                assert sub.gaps == 0 and sub.seq >= synced_at + 5, "beats came"
                assert sub.connected
                await publisher.aclose()  # silence from now on
                await eventually_async(lambda: sub.gaps >= 1, timeout=5, what="a silence gap")
                assert not sub.connected
                await asyncio.sleep(1.0)  # it keeps trying (bounded waits), it does not hang
        assert follower.snapshots() == 1

    asyncio.run(main())


def test_a_stuck_subscriber_does_not_slow_publishing() -> None:
    jobs = 1500

    async def run(stuck: bool, publisher: Publisher, feed: Feed, first: int) -> float:
        ctx = zmq.Context()
        raw = ctx.socket(zmq.SUB)
        raw.setsockopt(zmq.LINGER, 0)
        raw.setsockopt(zmq.RCVHWM, 10)
        raw.setsockopt(zmq.SUBSCRIBE, b"")
        if stuck:
            raw.connect(publisher.endpoint)  # and never reads
        try:
            await asyncio.sleep(0.2)
            started = time.perf_counter()
            await publish(feed, jobs, first=first)
            publisher.flush()
            return jobs * 7.2 / (time.perf_counter() - started)
        finally:
            raw.close(0)
            ctx.term()

    async def main() -> None:
        feed = Feed()
        best = {False: 0.0, True: 0.0}
        async with Publisher(LOOPBACK, feed) as publisher:
            sub = Subscriber(publisher.endpoint, timeout=3.0)
            async with Follower(sub) as follower:
                await converged(follower, publisher)
                # Alternating rounds, best of each: the cores are shared.
                for round, stuck in enumerate((False, True, False, True)):
                    rate = await run(stuck, publisher, feed, first=1 + round * 10_000)
                    best[stuck] = max(best[stuck], rate)
                    await converged(follower, publisher)
            print(
                f"\nevents/s published (best of 2): {best[False]:,.0f} with a healthy subscriber, "
                f"{best[True]:,.0f} with a stuck one too ({best[True] / best[False]:.2f}x)"
            )
            assert sub.gaps == 0, "the healthy subscriber lost nothing"

    asyncio.run(main())


def _curve(tmp_path: Path) -> tuple[ServerCurve, Any]:
    server = generate()
    subscribers = tmp_path / "subscribers"
    subscribers.mkdir()
    curve = ServerCurve(
        public_key=server.public,
        secret_key=server.secret,
        runners_dir=tmp_path / "runners",
        subscribers_dir=subscribers,
        poll_interval=0.1,
    )
    return curve, server


def test_curve_lets_in_trusted_subscriber_keys_only(tmp_path: Path) -> None:
    curve, server = _curve(tmp_path)
    trusted, untrusted = generate(), generate()
    trust_subscriber(tmp_path / "subscribers", trusted.public, "backend")

    def client(pair: Any) -> SubscriberCurve:
        return SubscriberCurve(
            public_key=pair.public, secret_key=pair.secret, server_key=server.public
        )

    async def main() -> None:
        feed = Feed()
        async with Publisher(LOOPBACK, feed, curve=curve, beat_interval=0.2) as publisher:
            good = Subscriber(publisher.endpoint, curve=client(trusted), timeout=2.0)
            bad = Subscriber(
                publisher.endpoint, curve=client(untrusted), timeout=0.5, max_backoff=0.3
            )
            plain = Subscriber(publisher.endpoint, timeout=0.5, max_backoff=0.3)
            async with Follower(good) as ok, Follower(bad) as refused, Follower(plain) as bare:
                await publish(feed, 30)
                await converged(ok, publisher)
                await asyncio.sleep(1.5)
                assert refused.seen == [] and bare.seen == []
                assert bad.snapshots == 0 and plain.snapshots == 0
                assert refused.replica.render()["jobs"] == []
                trust_subscriber(tmp_path / "subscribers", untrusted.public, "late")
                await converged(refused, publisher)  # trusted now: no restart needed
                assert bare.seen == []
            assert publisher.bad_requests == 0

    asyncio.run(main())


def test_garbage_on_the_snapshot_router_is_counted_and_ignored() -> None:
    garbage = [
        [b"snap"],
        [b"snapshot", b"please"],
        [b""],
        [b"SNAPSHOT"],
        [b"\x00\xff" * 50],
        [b"snapshot", b"", b"snapshot"],
    ]

    async def main() -> None:
        feed = Feed()
        async with Publisher(LOOPBACK, feed) as publisher:
            await publish(feed, 5)
            snapshot_at = f.snapshot_endpoint(publisher.endpoint)
            host, port = snapshot_at.removeprefix("tcp://").rsplit(":", 1)
            for target in (int(port), int(port) - 1):  # not ZeroMQ at all, on both ports
                with socket.create_connection((host, target)) as raw:
                    raw.sendall(b"\xff" * 64 + b"GET / HTTP/1.1\r\n\r\n" + bytes(range(256)))
            ctx = zmq.asyncio.Context()
            big = ctx.socket(zmq.DEALER)
            dealer = ctx.socket(zmq.DEALER)
            try:
                for sock in (big, dealer):
                    sock.setsockopt(zmq.LINGER, 0)
                    sock.connect(snapshot_at)
                await big.send(b"x" * 5000)  # above MAXMSGSIZE: cut off, never seen
                for frames in garbage:
                    await dealer.send_multipart(frames)
                assert not await dealer.poll(300), "garbage gets no answer"
                await dealer.send(b"snapshot")
                assert await dealer.poll(2000)
                epoch, seq, snapshot = f.decode_snapshot(await dealer.recv_multipart())
            finally:
                big.close(0)
                dealer.close(0)
                ctx.term()
            assert (epoch, seq) == (publisher.epoch, publisher.seq)
            assert len(snapshot.jobs) == 5
            assert publisher.bad_requests == len(garbage) and publisher.snapshots == 1
            sub = Subscriber(publisher.endpoint, timeout=2.0)
            async with Follower(sub) as follower:
                await converged(follower, publisher)

    asyncio.run(main())


def test_taken_ports_fail_unless_falling_back() -> None:
    async def main() -> None:
        feed = Feed()
        async with Publisher(LOOPBACK, feed) as first:
            with pytest.raises(ConfigError, match="cannot bind"):
                await Publisher(first.endpoint, feed).start()
            second = Publisher(first.endpoint, feed, fallback=True)
            async with second:
                assert second.endpoint != first.endpoint
                sub = Subscriber(second.endpoint, timeout=2.0)
                async with Follower(sub) as follower:
                    await publish(feed, 3)
                    await converged(follower, second)
            await second.aclose()  # idempotent

    asyncio.run(main())
