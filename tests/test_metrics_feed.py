"""The metrics feed of real daemons: ``narwhal up`` and ``narwhal dispatcher --metrics``.

``up`` publishes on loopback without being asked and trusts its own
backend's key; ``dispatcher`` publishes where ``--metrics`` says, to the
subscriber keys ``narwhal keys trust --subscriber`` added.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable
from pathlib import Path

from narwhal.config import SubscriberCurve
from narwhal.mesh import feed as f
from narwhal.mesh.keys import KeyPair, generate, read_public, read_secret, write_pair
from narwhal.mesh.subscriber import Replica, Subscriber
from tests.support.daemons import Client, Daemon, dispatcher_args, narwhal
from tests.support.eventually import eventually_async
from tests.support.repos import Repo

Up = Callable[..., tuple[Daemon, Client]]
MakeRepo = Callable[..., Repo]
PIPELINE = {"narwhal.yml": "steps:\n  - {name: test, command: echo hi}\n"}


def feed_of(daemon: Daemon) -> str:
    match = re.search(r"\+ metrics feed on (tcp://\S+)", daemon.announce)
    assert match, daemon.announce
    return match.group(1)


async def follow(sub: Subscriber, replica: Replica, seen: list[object]) -> None:
    async with contextlib.aclosing(sub.updates()) as updates:
        async for event in updates:
            replica.apply(event)
            seen.append(event)


def test_up_publishes_on_loopback_to_its_own_backend_key(
    narwhal_up: Up, make_repo: MakeRepo, tmp_path: Path
) -> None:
    daemon, api = narwhal_up()
    endpoint = feed_of(daemon)
    assert endpoint.startswith("tcp://127.0.0.1:")
    keys = tmp_path / "data0" / "keys"
    backend = read_secret(keys / "backend.key_secret")
    assert read_public(keys / "subscribers" / "backend.key").key == backend.public
    curve = SubscriberCurve(
        public_key=backend.public,
        secret_key=backend.secret,
        server_key=read_public(keys / "server.key").key,
    )
    repo = make_repo(PIPELINE)

    async def main() -> None:
        sub, replica, seen = Subscriber(endpoint, curve=curve, timeout=3.0), Replica(), []
        task = asyncio.create_task(follow(sub, replica, seen))
        try:
            await eventually_async(lambda: replica.synced, timeout=20, what="a snapshot")
            assert [r.state for r in replica.runners.values()] == ["ready"]
            job_id = await asyncio.to_thread(api.submit, repo)
            await eventually_async(
                lambda: job_id in replica.ended, timeout=30, what="the job's end in the feed"
            )
            assert replica.ended[job_id].state == "success"
            assert replica.stats.jobs_total == {"success": 1}
            steps = [e for e in seen if isinstance(e, f.Update) and e.topic == b"step"]
            assert steps, "its step was published"
            assert sub.gaps == 0
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    asyncio.run(main())


def test_dispatcher_metrics_admits_only_trusted_subscribers(
    tmp_path: Path, make_repo: MakeRepo
) -> None:
    data = tmp_path / "d"
    trusted, untrusted = generate(), generate()
    public, _ = write_pair(tmp_path / "backend", "dash", trusted)
    added = narwhal("keys", "trust", "--subscriber", str(public), "--data-dir", str(data))
    assert added.returncode == 0 and "trusted subscriber dash" in added.stdout, added.stderr
    daemon = Daemon(dispatcher_args(data, "--metrics", "tcp://127.0.0.1:0"))
    api = Client(daemon.url)
    try:
        endpoint = feed_of(daemon)
        server = read_public(data / "keys" / "server.key").key

        def curve(pair: KeyPair) -> SubscriberCurve:
            return SubscriberCurve(
                public_key=pair.public, secret_key=pair.secret, server_key=server
            )

        async def main() -> None:
            good, bad = Replica(), Replica()
            good_sub = Subscriber(endpoint, curve=curve(trusted), timeout=3.0)
            bad_sub = Subscriber(endpoint, curve=curve(untrusted), timeout=0.5)
            tasks = [
                asyncio.create_task(follow(good_sub, good, [])),
                asyncio.create_task(follow(bad_sub, bad, [])),
            ]
            try:
                await eventually_async(lambda: good.synced, timeout=20, what="a snapshot")
                job_id = await asyncio.to_thread(api.submit, make_repo(PIPELINE))
                await eventually_async(
                    lambda: job_id in good.live and good.queue.queued == 1,
                    timeout=20,
                    what="the queued job and the queue in the feed",
                )
                assert good.live[job_id].state == "queued"
                assert not bad.synced and bad_sub.snapshots == 0
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run(main())
    finally:
        api.close()
        assert daemon.stop() == 0, daemon.stderr_lines[-5:]


def test_dispatcher_publishes_nothing_unless_asked(tmp_path: Path) -> None:
    daemon = Daemon(dispatcher_args(tmp_path / "d"))
    try:
        assert "metrics feed" not in daemon.announce
    finally:
        daemon.stop()
