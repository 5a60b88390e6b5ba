"""The runner's state: the host's figures, what counts as a change, the flag of the cache bound."""

from __future__ import annotations

import asyncio
import os
import platform
from dataclasses import replace
from pathlib import Path

import pytest

from narwhal.cli import build_parser
from narwhal.errors import ConfigError
from narwhal.mesh import protocol as p
from narwhal.runner.executor import LocalExecutor
from narwhal.runner.mirror_index import Entry, MirrorIndex
from narwhal.runner.secret_env import SecretsExecutor
from narwhal.runner.state import (
    BYTES_STEP,
    StateReporter,
    arch_name,
    differs,
    engine_of,
    host,
    memory,
)
from narwhal.settings import runner_config
from narwhal.settings.daemons import cache_size


def test_the_host_figures_are_sane(tmp_path: Path) -> None:
    figures = host(tmp_path)
    assert 1 <= figures.cpus <= (os.cpu_count() or 1)
    assert figures.load >= 0
    assert 0 < figures.memory_available <= figures.memory_total
    assert 0 < figures.disk_free
    assert figures.os == platform.system().lower() == "linux"
    assert figures.arch == arch_name(platform.machine())


def test_architectures_are_named_as_engines_name_them() -> None:
    assert [arch_name(m) for m in ("x86_64", "aarch64", "armv7l", "riscv64")] == [
        "amd64",
        "arm64",
        "arm",
        "riscv64",
    ]


def test_memory_reads_meminfo_and_falls_back(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:  2048 kB\nMemFree: 10 kB\nMemAvailable:  1024 kB\n")
    assert memory(str(meminfo)) == (2 << 20, 1 << 20)
    # Elsewhere (no /proc): the system's page counts.
    total, available = memory(str(tmp_path / "none"))
    assert 0 < available <= total


def _state(**fields: object) -> p.RunnerState:
    base = p.RunnerState(
        cpus=4,
        load=1.0,
        memory_total=8 << 30,
        memory_available=4 << 30,
        disk_free=100 << 30,
        os="linux",
        arch="amd64",
        docker=True,
        images=("alpine:3",),
        mirrors=(p.WarmRepo(repo="r", sha="a" * 40, used_at=10.0, size=1 << 20),),
    )
    return replace(base, **fields)  # type: ignore[arg-type]


def test_only_changes_that_matter_are_sent() -> None:
    sent = _state()
    assert differs(sent, None)
    assert not differs(_state(), sent)
    # Small moves of load, memory and disk are noise.
    assert not differs(_state(load=1.3, memory_available=(4 << 30) - (BYTES_STEP // 2)), sent)
    assert not differs(_state(disk_free=(100 << 30) + (1 << 20)), sent)
    # A mirror used again, same commit: its time alone is no news.
    used = p.WarmRepo(repo="r", sha="a" * 40, used_at=99.0, size=1 << 20)
    assert not differs(_state(mirrors=(used,)), sent)
    assert differs(_state(load=1.6), sent)
    assert differs(_state(memory_available=(4 << 30) - BYTES_STEP), sent)
    assert differs(_state(images=("alpine:3", "busybox:1")), sent)
    assert differs(_state(docker=False), sent)
    fetched = p.WarmRepo(repo="r", sha="b" * 40, used_at=10.0, size=1 << 20)
    assert differs(_state(mirrors=(fetched,)), sent)
    assert differs(_state(mirrors=()), sent)


def test_the_local_executor_has_no_engine_to_report(tmp_path: Path) -> None:
    local = LocalExecutor(grace=1)
    assert engine_of(local) is None
    assert engine_of(SecretsExecutor(local, {"X": "y"})) is None


def test_the_state_lists_the_warm_mirrors_most_recent_first(tmp_path: Path) -> None:
    index = MirrorIndex(limit=10 << 20)
    for name, used_at, filled in (("old", 1.0, True), ("new", 3.0, True), ("cloning", 4.0, False)):
        folder = tmp_path / f"{name}.git"
        index.entries[folder.name] = Entry(
            folder=folder, repo=name, sha="", size=1000, used_at=used_at, filled=filled
        )
    reporter = StateReporter(tmp_path, index, None, interval=60, engine_refresh=60)

    async def scenario() -> tuple[p.RunnerState, p.RunnerState | None, p.RunnerState | None]:
        await reporter.start()
        state = reporter.current()
        first = reporter.worth_sending()
        reporter.last_sent = state
        return state, first, reporter.worth_sending()

    state, first, then = asyncio.run(scenario())
    assert [m.repo for m in state.mirrors] == ["new", "old"]  # a clone under way is not warm
    assert (state.mirror_bytes, state.mirror_limit) == (3000, 10 << 20)
    assert (state.docker, state.images) == (False, ())
    assert first == state and then is None
    p.decode(p.encode(p.Heartbeat(session="s", state=state)))  # the wire takes it


@pytest.mark.parametrize(
    ("text", "size"),
    [("1048576", 1 << 20), ("500M", 500 << 20), ("2G", 2 << 30), ("1.5GiB", 3 << 29), ("", None)],
)
def test_the_mirror_cache_size_flag(text: str, size: int | None, tmp_path: Path) -> None:
    args = build_parser().parse_args(
        ["runner", "--executor", "local", "--insecure", "--work-dir", str(tmp_path)]
        + (["--mirror-cache-size", text] if text else [])
    )
    assert runner_config(args).mirror_cache_size == size


def test_the_mirror_cache_size_comes_from_the_environment_too(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("NARWHAL_MIRROR_CACHE_SIZE", "3G")
    args = build_parser().parse_args(["runner", "--insecure", "--work-dir", str(tmp_path)])
    assert runner_config(args).mirror_cache_size == 3 << 30


@pytest.mark.parametrize("text", ["0", "lots", "-1G", "1.5.2G", "5P"])
def test_a_bad_mirror_cache_size_is_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="--mirror-cache-size: expected a size like 500M"):
        cache_size(text)
