"""The test suite's own rules: one polling loop, every test in one tier, no test on bench code."""

from __future__ import annotations

import ast
import asyncio
import signal
import subprocess
import threading
import time
from fnmatch import fnmatch
from pathlib import Path

import pytest

from tests.support.eventually import eventually, eventually_async
from tests.support.leaks import FD_TOLERANCE, Snapshot
from tests.support.tiers import TIER_NAMES, TIERS, tier_of

ROOT = Path(__file__).resolve().parents[1]
TEST_FILES = sorted(str(path.relative_to(ROOT)) for path in (ROOT / "tests").rglob("test_*.py"))


def test_eventually_returns_the_first_truthy_value() -> None:
    answers = iter([0, None, "", "ready", "later"])
    assert eventually(lambda: next(answers), interval=0.001) == "ready"


def test_eventually_names_what_it_waited_for_and_what_it_saw() -> None:
    started = time.monotonic()
    with pytest.raises(AssertionError, match=r"after 0.1 s waiting for the moon: it is 3"):
        eventually(
            lambda: False, timeout=0.1, interval=0.01, what="the moon", detail=lambda: "it is 3"
        )
    assert 0.1 <= time.monotonic() - started < 5


def test_eventually_async_awaits_coroutine_checks_and_plain_ones() -> None:
    async def main() -> tuple[int, int]:
        calls: list[int] = []

        async def asked() -> int:
            calls.append(1)
            return len(calls) if len(calls) == 3 else 0

        first = await eventually_async(asked, interval=0.001)
        flag: list[int] = []
        asyncio.get_running_loop().call_later(0.01, flag.append, 7)
        second = await eventually_async(lambda: flag and flag[0], interval=0.001)
        return first, second

    assert asyncio.run(main()) == (3, 7)


def test_eventually_async_fails_without_blocking_the_loop() -> None:
    async def main() -> None:
        ticks: list[None] = []

        async def tick() -> None:
            while True:
                ticks.append(None)
                await asyncio.sleep(0.005)

        ticker = asyncio.create_task(tick())
        try:
            with pytest.raises(AssertionError, match="waiting for nothing"):
                await eventually_async(lambda: False, timeout=0.1, interval=0.01, what="nothing")
        finally:
            ticker.cancel()
        assert len(ticks) > 5

    asyncio.run(main())


def test_every_test_module_is_in_a_tier() -> None:
    # The collection refuses a test of no tier too; this names every such module at once.
    unplaced = [path for path in TEST_FILES if tier_of(f"{path}::test_x") not in TIER_NAMES]
    assert not unplaced, f"add them to TIERS in tests/support/tiers.py: {unplaced}"


def test_every_tier_rule_still_names_a_test_module() -> None:
    stale = [p for p in TIERS if not any(fnmatch(f, p.partition("::")[0]) for f in TEST_FILES)]
    assert not stale, f"rules for modules that are gone: {stale}"


def test_the_most_specific_rule_wins() -> None:
    module = "tests/test_runner_identity.py"
    assert tier_of(f"{module}::test_narwhal_id_sets_the_id_and_narwhal_runner_id_still_does") == (
        "system"
    )
    assert tier_of(f"{module}::test_a_key_made_under_the_old_default_keeps_its_id") == "unit"
    assert tier_of("tests/test_repos.py::test_refs_git_accepts[main]") == "integration"
    assert tier_of("tests/nowhere.py::test_x") is None


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_no_test_imports_bench_code() -> None:
    # tests/bench runs the benchmarks as programs (python -m bench.x), never imports them.
    offenders = {
        str(path.relative_to(ROOT)): sorted(m for m in _imports(path) if m.split(".")[0] == "bench")
        for path in (ROOT / "tests").rglob("*.py")
    }
    assert not {path: mods for path, mods in offenders.items() if mods}


def test_support_imports_no_test_module() -> None:
    # Test modules build on tests.support, never on each other through it.
    for path in (ROOT / "tests" / "support").glob("*.py"):
        for module in _imports(path):
            top = module.split(".")
            assert top[0] != "bench", (path.name, module)
            assert top[0] != "tests" or top[1] == "support", (path.name, module)


def test_the_leak_check_names_a_child_process_left_running_and_kills_it() -> None:
    before = Snapshot.take()
    child = subprocess.Popen(["sleep", "30"])
    try:
        problems = before.leaks(grace=0.1)
        assert problems == [f"child processes left running (now killed): pid {child.pid}: sleep 30"]
        assert child.wait(5) == -signal.SIGKILL
    finally:
        child.kill()
        child.wait()


def test_the_leak_check_names_descriptors_left_open(tmp_path: Path) -> None:
    before = Snapshot.take()
    files = [open(tmp_path / f"f{n}", "w") for n in range(FD_TOLERANCE + 1)]
    try:
        (problem,) = before.leaks(grace=0.1)
        assert problem.startswith(f"{FD_TOLERANCE + 1} file descriptors left open"), problem
        assert all(str(tmp_path / f"f{n}") in problem for n in range(FD_TOLERANCE + 1))
    finally:
        for file in files:
            file.close()
    assert before.leaks(grace=0.1) == []


def test_the_leak_check_names_a_thread_left_running() -> None:
    before = Snapshot.take()
    release = threading.Event()
    thread = threading.Thread(target=release.wait, name="left-behind")
    thread.start()
    try:
        (problem,) = before.leaks(grace=0.1)
        assert problem.startswith("threads leaked:") and "left-behind" in problem
    finally:
        release.set()
        thread.join()
