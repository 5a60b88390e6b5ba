"""What a real runner tells a dispatcher of itself and of its jobs' checkouts.

The ``Runner`` runs in this process on a real DEALER socket; the test is the
dispatcher, a real ROUTER on loopback that reads every frame the runner
sends: its state in READY and heartbeats, CHECKED_OUT's cost and needs,
DONE's fault. Jobs run with the local executor on real repositories.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio

from narwhal.config import MeshConfig, RunnerConfig
from narwhal.mesh import protocol as p
from narwhal.runner.runner import Runner
from narwhal.runner.state import differs
from tests.support.repos import Repo

MESH = MeshConfig(heartbeat_interval=0.1, liveness=100)
PIPELINE = "steps:\n  - {name: ok, command: 'true'}\n"


def _config(work: Path, **fields: Any) -> RunnerConfig:
    base = RunnerConfig(
        runner_id="state",
        listen="tcp://127.0.0.1:0",
        work_dir=work,
        mesh=MESH,
        capacity=2,
        allow_local_repos=True,
    )
    return replace(base, **fields)


class Dispatcher:
    """A ROUTER connected to one runner: the test speaks for the dispatcher."""

    def __init__(self, endpoint: str) -> None:
        self.ctx = zmq.asyncio.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.CONNECT_ROUTING_ID, b"runner")
        self.sock.connect(endpoint)
        self.session = uuid.uuid4().hex
        self.beats: list[p.Heartbeat] = []
        self._jobs = 0

    async def send(self, message: p.Message) -> None:
        await self.sock.send_multipart([b"runner", p.encode(message)])

    async def recv(self, timeout: float = 20) -> p.Message:
        """The runner's next frame; a heartbeat is kept (``beats``) and answered."""
        if not await self.sock.poll(int(timeout * 1000)):
            raise AssertionError("the runner said nothing")
        _, frame = await self.sock.recv_multipart()
        message = p.decode(frame)
        if isinstance(message, p.Heartbeat):
            self.beats.append(message)
            await self.send(p.Heartbeat(session=self.session))
        return message

    async def hello(self) -> p.Ready:
        await self.send(p.Hello(session=self.session))
        while not isinstance(message := await self.recv(), p.Ready):
            pass
        return message

    async def job(self, ready: p.Ready, repo: str) -> list[p.Message]:
        """Send a JOB and acknowledge its stream; every frame of it up to DONE."""
        return await self.stream(await self.start(ready, repo))

    async def start(self, ready: p.Ready, repo: str) -> int:
        """Send a JOB; its id."""
        self._jobs += 1
        job_id = self._jobs
        job = p.Job(
            job_id=job_id,
            attempt=1,
            runner_session=ready.session,
            repo=repo,
            ref="refs/heads/main",
            sha=None,
            event="push",
        )
        await self.send(job)
        return job_id

    async def stream(self, job_id: int) -> list[p.Message]:
        frames: list[p.Message] = []
        while True:
            message = await self.recv()
            if getattr(message, "job_id", None) != job_id or isinstance(message, p.Reject):
                assert not isinstance(message, p.Reject), message
                continue
            frames.append(message)
            seq = getattr(message, "seq")  # noqa: B009 - every stream frame has one
            await self.send(p.Ack(streams=((job_id, 1, seq),)))
            if isinstance(message, p.Done):
                return frames

    async def heartbeats(self, count: int) -> list[p.Heartbeat]:
        """The runner's next ``count`` heartbeats."""
        start = len(self.beats)
        while len(self.beats) < start + count:
            await self.recv()
        return self.beats[start : start + count]

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()


@asynccontextmanager
async def connected(config: RunnerConfig) -> AsyncIterator[tuple[Dispatcher, p.Ready]]:
    async with Runner(config) as runner:
        dispatcher = Dispatcher(runner.endpoint)
        try:
            yield dispatcher, await dispatcher.hello()
        finally:
            dispatcher.close()


def _of(frames: list[p.Message], kind: type[p.Message]) -> Any:
    return next(frame for frame in frames if isinstance(frame, kind))


def test_ready_carries_the_state_and_a_steady_runner_sends_no_more(tmp_path: Path) -> None:
    config = _config(tmp_path, mirror_cache_size=300 << 20)

    async def scenario() -> tuple[p.Ready, list[p.Heartbeat]]:
        async with connected(config) as (dispatcher, ready):
            return ready, await dispatcher.heartbeats(15)

    ready, beats = asyncio.run(scenario())
    state = ready.state
    assert state is not None
    assert 1 <= state.cpus <= (os.cpu_count() or 1)
    assert 0 < state.memory_available <= state.memory_total
    assert state.disk_free > 0 and state.load >= 0
    assert (state.os, state.docker, state.images, state.mirrors) == ("linux", False, (), ())
    assert state.arch in ("amd64", "arm64") and state.mirror_limit == 300 << 20
    # Changes only: a heartbeat carries a state only when it differs enough
    # from the one sent before (load and memory of a busy machine move).
    sent = state
    for beat in beats:
        if beat.state is not None:
            assert differs(beat.state, sent)
            sent = beat.state
    assert sum(beat.state is None for beat in beats) >= len(beats) // 2


def test_a_job_reports_its_checkout_and_needs_and_warms_the_state(
    make_repo: Callable[..., Repo], tmp_path: Path
) -> None:
    yml = (
        "priority: 7\nresources: {cpus: 1}\nsteps:\n"
        "  - {name: a, command: 'true', resources: {cpus: 2.5}}\n"
        "  - {name: b, command: 'true', resources: {memory: 512m}}\n"
    )
    repo = make_repo({"narwhal.yml": yml})

    async def scenario() -> tuple[list[p.Message], list[p.Message], p.RunnerState]:
        async with connected(_config(tmp_path / "work")) as (dispatcher, ready):
            first = await dispatcher.job(ready, str(repo.path))
            warm = await _warm_state(dispatcher)
            second = await dispatcher.job(ready, str(repo.path))
        return first, second, warm

    first, second, warm = asyncio.run(scenario())
    checked = _of(first, p.CheckedOut)
    assert checked.cold and checked.checkout > 0 and checked.fetched > 0
    assert checked.needs == p.Needs(priority=7, cpus=2.5, memory=512 << 20)
    assert _of(first, p.Done).status == "success" and _of(first, p.Done).fault == ""
    again = _of(second, p.CheckedOut)
    assert not again.cold and again.fetched == 0 and again.sha == checked.sha
    # After the job, a heartbeat says the repository is warm, at that commit.
    assert [(m.repo, m.sha) for m in warm.mirrors] == [(str(repo.path), checked.sha)]
    assert warm.mirror_bytes == warm.mirrors[0].size > 0


async def _warm_state(dispatcher: Dispatcher) -> p.RunnerState:
    """The first state a heartbeat carries that lists a warm mirror (maybe sent
    while the job still ran: the mirror was warm from its checkout on)."""
    deadline = time.monotonic() + 10
    seen = 0
    while time.monotonic() < deadline:
        for beat in dispatcher.beats[seen:]:
            if beat.state is not None and beat.state.mirrors:
                return beat.state
        seen = len(dispatcher.beats)
        await dispatcher.heartbeats(1)
    raise AssertionError("no heartbeat said the mirror is warm")


def test_done_says_whose_fault_an_error_was(make_repo: Callable[..., Repo], tmp_path: Path) -> None:
    failing = make_repo({"narwhal.yml": "steps:\n  - {name: fails, command: 'exit 3'}\n"})
    invalid = make_repo({"narwhal.yml": "steps: 5\n"})
    missing = str(tmp_path / "no-such-repository")

    async def scenario() -> list[p.Done]:
        async with connected(_config(tmp_path / "work")) as (dispatcher, ready):
            ends = []
            for repo in (missing, str(failing.path), str(invalid.path)):
                ends.append(_of(await dispatcher.job(ready, repo), p.Done))
            return ends

    missed, failed, broken = asyncio.run(scenario())
    # git could not fetch: the runner's side (its checkout) failed.
    assert (missed.status, missed.fault) == ("error", "checkout")
    # A failing step and an invalid narwhal.yml are the job's own.
    assert (failed.status, failed.fault) == ("failed", "")
    assert (broken.status, broken.fault) == ("error", "")


def _bulky(make_repo: Callable[..., Repo], marker: Path | None = None) -> Repo:
    """A repository of some 300 KiB on disk; its step waits for ``marker`` if given."""
    noise = base64.b64encode(os.urandom(300 << 10)).decode()[: 300 << 10]
    command = f"while [ ! -e {marker} ]; do sleep 0.05; done" if marker else "true"
    return make_repo({"noise.txt": noise, "narwhal.yml": PIPELINE.replace("'true'", repr(command))})


def test_the_bound_evicts_the_least_recently_used_mirror_no_job_borrows(
    make_repo: Callable[..., Repo], tmp_path: Path
) -> None:
    marker = tmp_path / "go-on"
    a, b, c = _bulky(make_repo, marker), _bulky(make_repo), _bulky(make_repo)
    # Room for two of the three mirrors.
    config = _config(tmp_path / "work", mirror_cache_size=600 << 10)

    async def scenario() -> tuple[list[bool], p.Ready]:
        async with connected(config) as (dispatcher, ready):
            waiting = await dispatcher.start(ready, str(a.path))  # runs until the marker
            colds = []
            for repo in (b, c):
                colds.append(_of(await dispatcher.job(ready, str(repo.path)), p.CheckedOut).cold)
            # a was used first, but its job still runs on its objects: b went.
            marker.touch()
            await dispatcher.stream(waiting)
            for repo in (a, c, b):
                colds.append(_of(await dispatcher.job(ready, str(repo.path)), p.CheckedOut).cold)
        # A restarted runner knows what it holds, the most recently used first.
        async with connected(config) as (dispatcher, again):
            return colds, again

    colds, again = asyncio.run(scenario())
    assert colds == [True, True, False, False, True]
    assert again.state is not None
    assert [m.repo for m in again.state.mirrors] == [str(b.path), str(c.path)]
    assert all(len(m.sha) == 40 for m in again.state.mirrors)
    assert again.state.mirror_bytes <= 600 << 10
