"""Placement in the dispatcher's metrics: pending jobs by reason, runners' reports, checkouts.

A real ``Dispatcher`` on ``FakeMesh`` and ``MemoryStore``: runners report
their state in READY (``FakeRunner.ready(state=...)``), a quarantine is
played by a ``Health`` that says so, and checkouts come in CHECKED_OUT
frames or in records published straight into the feed. The whole scrape
must pass ``promtool check metrics``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from narwhal.config import DispatcherConfig
from narwhal.dispatcher.core import Dispatcher
from narwhal.dispatcher.feed import JobChanged, JobUpdated
from narwhal.dispatcher.health import Health
from narwhal.dispatcher.metrics import DispatcherMetrics
from narwhal.dispatcher.placement import REASONS
from narwhal.dispatcher.store.memory import MemoryStore
from narwhal.mesh import protocol as p
from narwhal.testing import FakeMesh, FakeRunner
from tests.dispatcher.test_metrics import record, scrape
from tests.support.eventually import eventually_async

GiB = 1 << 30
STATE = p.RunnerState(
    cpus=8,
    load=1.5,
    memory_total=16 * GiB,
    memory_available=6 * GiB,
    disk_free=120 * GiB,
    os="linux",
    arch="amd64",
    docker=True,
    images=("python:3.12",),
    mirrors=(
        p.WarmRepo(repo="https://forge.example/a.git", sha="a" * 40, used_at=1.0, size=GiB),
        p.WarmRepo(repo="https://forge.example/b.git", sha="", used_at=2.0, size=2 * GiB),
    ),
    mirror_bytes=3 * GiB,
    mirror_limit=10 * GiB,
)


class Quarantine(Health):
    """Health that says the runners named are quarantined (the policy's own is elsewhere)."""

    def __init__(self, *runners: str) -> None:
        super().__init__()
        self.runners = set(runners)

    def to_json(self, runner_id: str, now: float) -> dict[str, Any] | None:
        if runner_id not in self.runners:
            return None
        return {"reason": "3 checkout failures in 5 minutes", "until": None, "probing": False}


def of(samples: dict[str, float], name: str) -> dict[str, float]:
    return {k: v for k, v in samples.items() if k.startswith(name + "{") or k == name}


async def checked_out(runner: FakeRunner, key: tuple[int, int], seconds: float, cold: bool) -> None:
    """A CHECKED_OUT that says what the checkout cost (``FakeRunner.checked_out`` does not)."""
    seq = runner.next_seq.get(key, 0)
    runner.next_seq[key] = seq + 1
    frame = p.CheckedOut(
        job_id=key[0],
        attempt=key[1],
        seq=seq,
        sha="c" * 40,
        pipeline="steps: []\n",
        checkout=seconds,
        cold=cold,
    )
    assert await runner.send(frame)


def test_pending_jobs_are_shown_by_every_reason_the_dispatcher_gives(tmp_path: Path) -> None:
    async def main() -> tuple[dict[str, float], dict[str, int]]:
        mesh = FakeMesh()
        async with Dispatcher(
            DispatcherConfig(data_dir=tmp_path), store=MemoryStore(), mesh=mesh
        ) as d:
            metrics = DispatcherMetrics(d, per_repo=False)
            await mesh.add_runner("r1", capacity=1)
            for labels in ({}, {}, {"gpu": "a100"}):
                await d.submit(repo="/r", ref="main", sha=None, event="push", labels=labels)
            await eventually_async(
                lambda: sum(d.pending_counts().values()) == 2, what="two jobs explained"
            )
            metrics.close()
            return scrape(metrics), d.pending_counts()

    samples, counts = asyncio.run(main())
    pending = of(samples, "narwhal_jobs_pending")
    assert pending == {f'narwhal_jobs_pending{{reason="{r}"}}': counts[r] for r in REASONS}
    assert sum(pending.values()) == 2 and samples["narwhal_jobs_queued"] == 2


def test_what_runners_report_and_their_quarantine_are_gauges(tmp_path: Path) -> None:
    async def main() -> tuple[dict[str, float], dict[str, float]]:
        mesh = FakeMesh()
        async with Dispatcher(
            DispatcherConfig(data_dir=tmp_path), store=MemoryStore(), mesh=mesh
        ) as d:
            d.signals.health = Quarantine("r2")
            metrics = DispatcherMetrics(d, per_repo=False)
            reporting = await mesh.add_runner("r1", capacity=2)
            await reporting.ready(state=STATE)
            await mesh.add_runner("r2", capacity=1)  # reports nothing (an older runner)
            before = scrape(metrics)
            reporting.beat(dataclasses.replace(STATE, load=0.25, mirrors=()))
            await mesh.runners["r2"].lose("unplugged")
            return before, scrape(metrics)

    before, after = asyncio.run(main())
    assert of(before, "narwhal_runner_load") == {'narwhal_runner_load{runner="r1"}': 1.5}
    assert before['narwhal_runner_memory_available_bytes{runner="r1"}'] == 6 * GiB
    assert before['narwhal_runner_disk_free_bytes{runner="r1"}'] == 120 * GiB
    assert before['narwhal_runner_warm_repositories{runner="r1"}'] == 2
    assert not any('runner="r2"' in k for k in of(before, "narwhal_runner_disk_free_bytes"))
    assert of(before, "narwhal_runner_quarantined") == {
        'narwhal_runner_quarantined{runner="r1"}': 0,
        'narwhal_runner_quarantined{runner="r2"}': 1,
    }
    # A new report is read at the next scrape; a runner gone is gone from every gauge.
    assert after['narwhal_runner_load{runner="r1"}'] == 0.25
    assert after['narwhal_runner_warm_repositories{runner="r1"}'] == 0
    assert not any('runner="r2"' in k for k in after)


def test_each_checkout_is_observed_once_by_cold_or_warm(tmp_path: Path) -> None:
    dispatcher = Dispatcher(
        DispatcherConfig(data_dir=tmp_path), store=MemoryStore(), mesh=FakeMesh()
    )
    metrics = DispatcherMetrics(dispatcher, per_repo=False)
    publish = dispatcher.feed.publish
    untouched = scrape(metrics)
    for cold in ("true", "false"):  # both series from the start
        assert untouched[f'narwhal_job_checkout_seconds_count{{cold="{cold}"}}'] == 0
    running = record(1, "running", started_at=100.0)
    publish(JobUpdated(1, running))  # not checked out yet: nothing
    checked = running._replace(checkout=12.0, cold=True)
    publish(JobUpdated(1, checked))
    publish(JobUpdated(1, checked._replace(cancel_requested=True)))  # the same checkout
    publish(JobChanged(checked._replace(state="cancelled", finished_at=130.0), "running"))
    # A job whose CHECKED_OUT and DONE came in one batch: its end says what it cost.
    quick = record(2, "success", started_at=100.0, finished_at=101.0, checkout=0.2, cold=False)
    publish(JobChanged(quick, "running"))
    # A requeued job's second checkout counts again.
    again = record(3, "running", checkout=3.0, cold=True)
    publish(JobUpdated(3, again))
    publish(JobChanged(again._replace(state="queued", attempt=2), "running"))
    publish(JobUpdated(3, again._replace(attempt=2, checkout=0.4, cold=False)))
    samples = scrape(metrics)
    assert samples['narwhal_job_checkout_seconds_count{cold="true"}'] == 2
    assert samples['narwhal_job_checkout_seconds_sum{cold="true"}'] == 15.0
    assert samples['narwhal_job_checkout_seconds_bucket{cold="true",le="10.0"}'] == 1
    assert samples['narwhal_job_checkout_seconds_count{cold="false"}'] == 2
    assert samples['narwhal_job_checkout_seconds_sum{cold="false"}'] == pytest.approx(0.6)


def test_promtool_accepts_every_placement_metric(tmp_path: Path) -> None:
    async def main() -> str:
        mesh = FakeMesh()
        async with Dispatcher(
            DispatcherConfig(data_dir=tmp_path), store=MemoryStore(), mesh=mesh
        ) as d:
            d.signals.health = Quarantine("r1")
            metrics = DispatcherMetrics(d, per_repo=False)
            runner = await mesh.add_runner("r1", capacity=1)
            await runner.ready(state=STATE)
            job = await d.submit(repo="/r", ref="main", sha=None, event="push", labels={})
            await d.submit(repo="/r", ref="main", sha=None, event="push", labels={})
            await eventually_async(lambda: runner.jobs, what="the JOB frame")
            key = (job.id, 1)
            assert await runner.accept(key)
            await checked_out(runner, key, 1.25, cold=True)
            assert await runner.done(key)
            text = metrics.registry.render()
            metrics.close()
            return text

    text = asyncio.run(main())
    assert 'narwhal_job_checkout_seconds_count{cold="true"} 1' in text, text
    assert 'narwhal_runner_quarantined{runner="r1"} 1' in text
    tool = shutil.which("promtool")
    assert tool, "promtool is missing: install the Debian package prometheus (scripts/test does)"
    checked = subprocess.run(
        [tool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert (checked.returncode, checked.stdout, checked.stderr) == (0, "", ""), text
