"""The backend's pure parts: lines from chunks, sessions, load history, browser messages."""

from __future__ import annotations

import asyncio

import pytest

from narwhal.backend.history import branch_refs
from narwhal.backend.hub import Hub
from narwhal.backend.lines import LineSplitter
from narwhal.backend.runners import SPAN, STEP, RunnerHistory
from narwhal.backend.sessions import Sessions
from narwhal.backend.states import ENDED, STATES
from narwhal.backend.upstream import ApiError
from narwhal.backend.websocket import MAX_MESSAGE, BadMessage, parse_message
from narwhal.dispatcher.records import STATES as DISPATCHER_STATES
from narwhal.dispatcher.records import TERMINAL


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_the_backend_knows_the_dispatchers_states() -> None:
    assert STATES == DISPATCHER_STATES
    assert frozenset(TERMINAL) == ENDED


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, 1000])
def test_lines_are_whole_however_the_chunks_are_cut(size: int) -> None:
    text = "".join(f"line {i} é€ {'x' * (i % 13)}\r\n" for i in range(300)) + "no newline"
    data = text.encode()
    splitter = LineSplitter()
    lines = []
    for i in range(0, len(data), size):
        lines += splitter.feed(data[i : i + size])
    assert splitter.pending
    lines += splitter.flush()
    assert lines == text.replace("\r\n", "\n").split("\n")
    assert not splitter.pending and splitter.flush() == []


def test_a_line_longer_than_the_limit_is_cut_not_kept_growing() -> None:
    splitter = LineSplitter(max_line=10)
    assert splitter.feed(b"a" * 25) == ["a" * 10, "a" * 10]
    assert splitter.feed(b"bb\n" + b"c" * 12 + b"\n") == ["aaaaabb", "c" * 10, "cc"]


def test_sessions_expire_are_bounded_and_ids_are_random() -> None:
    clock = Clock()
    sessions = Sessions(limit=3, idle=100, lifetime=1000, recheck=10, clock=clock)
    ids = [sessions.create(f"token-{n}")[0] for n in range(4)]
    assert len(set(ids)) == 4 and all(len(i) >= 43 for i in ids)
    assert len(sessions) == 3 and sessions.get(ids[0]) is None  # the oldest went
    found = sessions.get(ids[1])
    assert found is not None and found.token == "token-1"
    assert sessions.get("forged") is None and sessions.get(None) is None
    assert not sessions.due(found)
    clock.now += 11
    assert sessions.due(found)
    sessions.checked(found)
    assert not sessions.due(found)
    assert sessions.get(ids[1]) is found
    clock.now += 99
    assert sessions.get(ids[1]) is not None  # used: its idle time starts again
    assert sessions.get(ids[2]) is None  # idle too long
    for _ in range(8):
        clock.now += 99
        assert sessions.get(ids[1]) is not None
    clock.now += 99
    assert sessions.get(ids[1]) is None  # past its lifetime, however used


def test_runner_history_keeps_the_busiest_and_fills_quiet_steps() -> None:
    clock = Clock()
    history = RunnerHistory(clock=clock)
    history.record("r1", 1, 4)
    clock.now += 3
    history.record("r1", 3, 4)
    clock.now += 3
    history.record("r1", 0, 4)
    clock.now += 35
    series = history.series("r1")
    start = series[0][0]
    assert series == [
        [start, 3, 4],
        [start + STEP, 0, 4],
        [start + 2 * STEP, 0, 4],
        [start + 3 * STEP, 0, 4],
        [start + 4 * STEP, 0, 4],
    ]
    clock.now += 2 * SPAN
    long_after = history.series("r1")
    assert len(long_after) == SPAN // STEP and all(step[1:] == [0, 4] for step in long_after)
    assert history.series("nobody") == []


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (None, "JSON text"),
        ("not json", "not valid JSON"),
        ("[1]", "JSON object"),
        ('{"type": "dance"}', "unknown message type"),
        ('{"type": "follow"}', "job_id"),
        ('{"type": "follow", "job_id": "3"}', "job_id"),
        ('{"type": "follow", "job_id": true}', "job_id"),
        ('{"type": "follow", "job_id": 0}', "job_id"),
        ('{"type": "follow", "job_id": 4611686018427387904}', "job_id"),
        ('{"type": "follow", "job_id": 1.5}', "job_id"),
        ("[" * 50 + "]" * 50, "nested"),
        ('{"type": "follow", "pad": "' + "x" * MAX_MESSAGE + '"}', "larger"),
    ],
    ids=lambda value: str(value)[:30],
)
def test_browser_messages_are_checked(text: str | None, error: str) -> None:
    with pytest.raises(BadMessage, match=error):
        parse_message(text)


def test_browser_messages_that_are_ours() -> None:
    assert parse_message('{"type": "follow", "job_id": 12}') == ("follow", 12)
    assert parse_message('{"type": "unfollow"}') == ("unfollow", None)


def test_a_branch_filter_names_both_spellings_of_its_ref() -> None:
    assert branch_refs("main") == ["main", "refs/heads/main"]
    assert branch_refs("refs/tags/v1") == ["refs/tags/v1"]
    for bad in ["", "a b", "-x", "a..b", "x" * 300]:
        with pytest.raises(ApiError):
            branch_refs(bad)


def test_a_socket_whose_queue_is_full_is_closed_and_the_others_go_on() -> None:
    async def scenario() -> None:
        sent: list[str] = []

        async def send(text: str) -> None:
            sent.append(text)

        async def never(text: str) -> None:
            await asyncio.Event().wait()

        hub = Hub(limit=3)
        stuck, reading = hub.join(never, None), hub.join(send, None)
        pump = asyncio.create_task(reading.pump())
        stuck_pump = asyncio.create_task(stuck.pump())
        for n in range(10):
            hub.broadcast(f"m{n}")
            await asyncio.sleep(0)
        assert stuck.closed.is_set() and hub.dropped == 1 and hub.peers == {reading}
        assert not reading.closed.is_set()
        await asyncio.sleep(0)
        assert sent == [f"m{n}" for n in range(10)]
        for task in (pump, stuck_pump):
            task.cancel()
        await asyncio.gather(pump, stuck_pump, return_exceptions=True)

    asyncio.run(scenario())
