"""The CLI shows placement: why a job waits, where it went, what runners report.

``narwhal`` (``narwhal.cli.main``, in this process) against a dispatcher on
the shipped fakes served for real on loopback (``tests.support.fakestack``),
so runners report whatever the test says and a quarantine is played by a
``Health`` that says so. The units of what is printed (sizes, durations,
the one-line explanation) are checked on values.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from narwhal.cli import main
from narwhal.cli.show import runner_state, size
from narwhal.follow import short_duration, wait_started, waiting
from narwhal.mesh import protocol as p
from narwhal.testing import FakeRunner
from tests.dispatcher.test_metrics_placement import STATE, Quarantine, checked_out
from tests.support.eventually import eventually, eventually_async
from tests.support.fakestack import TOKEN, FakeStack

REPO = "https://forge.example/team/app.git"


@pytest.fixture
def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeStack]:
    monkeypatch.setenv("NARWHAL_API_TOKEN", TOKEN)
    with FakeStack(tmp_path / "data") as served:
        yield served


def narwhal(stack: FakeStack, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """``narwhal ARGS --server STACK``'s stdout (it must succeed)."""
    status = main([*args, "--server", stack.api])
    out, err = capsys.readouterr()
    assert status == 0, err
    return out


def test_runners_show_what_each_reports_and_a_quarantine(
    stack: FakeStack, capsys: pytest.CaptureFixture[str]
) -> None:
    assert stack.dispatcher is not None
    stack.dispatcher.signals.health = Quarantine("old")
    hostile = dataclasses.replace(STATE, os="linux\x1b]0;owned\x07")

    async def connect() -> None:
        runner = await stack.mesh.add_runner("build-1", capacity=4)
        await runner.ready(state=hostile)
        await stack.mesh.add_runner("old", capacity=1)

    stack.run(connect())
    lines = narwhal(stack, capsys, "runners").splitlines()
    assert lines[0].split()[:2] == ["ID", "STATE"]
    assert lines[1].split()[:2] == ["build-1", "ready"]
    assert lines[2] == (
        "    8 CPUs, load 1.50; memory 6 GiB free of 16 GiB; disk 120 GiB free;"
        " linux?]0;owned?/amd64; docker; 2 warm repositories, cache 3 GiB of 10 GiB"
    )
    assert lines[3].split()[:2] == ["old", "ready"]
    assert lines[4:] == [
        "    state not reported",
        "    quarantined: 3 checkout failures in 5 minutes",
    ]


def test_jobs_and_job_say_why_it_waits_then_where_it_went(
    stack: FakeStack, capsys: pytest.CaptureFixture[str]
) -> None:
    assert stack.dispatcher is not None
    d = stack.dispatcher
    ref = ("--ref", "refs/heads/main", "--sha", "b" * 40)
    stack.run(stack.mesh.add_runner("cpu-1", capacity=2))
    narwhal(stack, capsys, "submit", REPO, *ref, "--labels", "gpu=a100", "--priority", "7")
    pending = eventually(lambda: d.pending(1), what="job 1 explained")
    said = waiting(pending.to_json())
    assert "(#1 in the queue" in said
    listed = narwhal(stack, capsys, "jobs").splitlines()
    assert listed[1].split()[:2] == ["1", "queued"]
    assert listed[2] == f"        why: {said}"
    shown = narwhal(stack, capsys, "job", "1").splitlines()
    facts = dict(line.split(":", 1) for line in shown)
    assert facts["state"].strip() == "queued" and facts["priority"].strip() == "7"
    assert facts["labels"].strip() == "gpu=a100" and facts["resources"].strip() == "-"
    assert facts["pending"].strip() == said and "reason" not in facts
    assert "placement" not in facts and "checkout" not in facts

    async def run_it() -> None:
        runner = await stack.mesh.add_runner("gpu-1", capacity=1, labels={"gpu": "a100"})
        await eventually_sent(runner)
        assert await runner.accept((1, 1))
        await checked_out(runner, (1, 1), 4.5, cold=True)
        assert await runner.step((1, 1), 0, "test")

    stack.run(run_it())
    shown = narwhal(stack, capsys, "job", "1").splitlines()
    facts = dict(line.split(":", 1) for line in shown if not line.startswith("  step"))
    assert facts["state"].strip() == "running" and "pending" not in facts
    assert facts["placement"].strip().startswith("placed on gpu-1")
    assert facts["checkout"].strip() == "4.5 s, cold (cloned)"
    assert shown[-1] == "  step 0   success         0 ms  test"
    assert len(narwhal(stack, capsys, "jobs").splitlines()) == 2  # no why line now


async def eventually_sent(runner: FakeRunner) -> None:
    await eventually_async(lambda: runner.jobs, what="a JOB frame")


def test_submit_follow_says_why_the_job_waits_until_a_runner_takes_it(
    stack: FakeStack, capsys: pytest.CaptureFixture[str]
) -> None:
    assert stack.dispatcher is not None
    args = ["submit", REPO, "--ref", "refs/heads/main", "--labels", "os=plan9", "-f"]
    status: list[int] = []
    follower = threading.Thread(target=lambda: status.append(main([*args, "--server", stack.api])))
    follower.start()
    said: list[str] = []

    def heard(text: str) -> bool:
        said.append(capsys.readouterr().err)
        return text in "".join(said)

    try:
        pending = eventually(lambda: stack.dispatcher and stack.dispatcher.pending(1))
        text = waiting({"text": pending.text})
        eventually(lambda: heard(f"job 1 queued: {text} ("), what="the reason it waits")

        async def run_it() -> None:
            runner = await stack.mesh.add_runner("plan9", capacity=1, labels={"os": "plan9"})
            await eventually_sent(runner)
            assert await runner.accept((1, 1))
            assert await runner.log((1, 1), b"built on plan9\n")
            assert await runner.done((1, 1))

        stack.run(run_it())
    finally:
        follower.join(30)
    out, err = capsys.readouterr()
    stderr = "".join(said) + err
    assert status == [0], stderr
    assert "built on plan9" in out
    waits = [line for line in stderr.splitlines() if "queued" in line]
    # Said once (its place in the queue or its expected start alone is no news).
    assert len([w for w in waits if w.startswith(f"job 1 queued: {text} (")]) == 1, stderr
    assert waits[-1].startswith(f"job 1 queued: {text} (#1 in the queue"), stderr
    assert "job 1 success" in stderr


def test_a_priority_out_of_bounds_is_refused_in_one_line(
    stack: FakeStack, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["submit", REPO, "--ref", "main", "--priority", "5000", "--server", stack.api])
    err = capsys.readouterr().err
    assert status == 2
    assert err.strip().endswith("priority: expected an integer from -1000 to 1000, got 5000"), err
    with httpx.Client(base_url=stack.api) as http:
        listed = http.get("/api/jobs", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert listed["jobs"] == []


# what is printed, on values


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1536, "1.5 KiB"),
        (327155712, "312 MiB"),
        (10 * 2**30 + 2**29, "10.5 GiB"),
        (3 << 40, "3 TiB"),
        (None, "?"),
        (True, "?"),
        (float("nan"), "?"),
        (-5, "0 B"),
    ],
)
def test_sizes_are_in_binary_units(n: Any, text: str) -> None:
    assert size(n) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.0123, "12 ms"), (4.25, "4.2 s"), (42, "42 s"), (187, "3m 07s"), (7500, "2h 05m")],
)
def test_durations_are_short(seconds: float, text: str) -> None:
    assert short_duration(seconds) == text


def test_a_pending_explanation_is_one_short_line() -> None:
    long = "waiting: 0 of 40 runners can take it: " + ", ".join(["1 lacks label x=y"] * 20)
    line = waiting({"reason": "label", "text": long, "position": 12, "eta": 187.0})
    text, _, where = line.rpartition(" (")
    assert text.startswith("0 of 40 runners") and text.endswith("...") and len(text) == 100
    assert where == "#12 in the queue, starts in ~3m 07s)"
    assert waiting({"reason": "full", "text": "waiting for a free slot\n", "position": None}) == (
        "waiting for a free slot?"
    )
    assert runner_state({"id": "r"}) == "state not reported"


def test_waiting_is_said_again_only_when_the_reason_changes() -> None:
    pending = [
        None,
        {"text": "waiting: no runner connected", "position": 1, "eta": None},
        {"text": "waiting: no runner connected", "position": 2, "eta": 30.0},
        {"text": "waiting for a free slot", "position": 1, "eta": None},
    ]
    answers = [{"state": "queued", "pending": p} for p in pending] + [{"state": "running"}]

    class Answers:
        def call(self, method: str, path: str, **kwargs: Any) -> Any:
            return answers.pop(0)

        def log_chunks(self, job_id: int) -> Iterator[bytes]:
            raise AssertionError("not streamed")

    said: list[str] = []
    wait_started(Answers(), 4, said.append, sleep=lambda _: None)
    assert said == [
        "job 4 queued, waiting for a runner...",
        "job 4 queued: no runner connected (#1 in the queue)",
        "job 4 queued: waiting for a free slot (#1 in the queue)",
    ]
    assert p.MIN_PRIORITY == -1000  # the bound the messages above name
