"""The dispatcher's metrics on the shipped fakes: what the feed says, and what a scrape reads.

Jobs run through a real ``Dispatcher`` on ``FakeMesh`` and ``MemoryStore``;
the time arithmetic (queue waits, a requeue's fresh wait) is checked on
records with chosen times published straight into the feed.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

from narwhal.agent.app import count_webhooks
from narwhal.config import DispatcherConfig
from narwhal.dispatcher import metrics as dispatcher_metrics
from narwhal.dispatcher.core import Dispatcher
from narwhal.dispatcher.feed import Feed, JobChanged, JobUpdated
from narwhal.dispatcher.metrics import DispatcherMetrics
from narwhal.dispatcher.publisher import Publisher
from narwhal.dispatcher.records import JobRecord
from narwhal.dispatcher.store.memory import MemoryStore
from narwhal.testing import FakeMesh
from tests.support import feeds
from tests.support.eventually import eventually_async

_SAMPLE = re.compile(r"^(\S+) (\S+)$")


def scrape(metrics: DispatcherMetrics) -> dict[str, float]:
    """Sample name with labels -> value, from the rendered text."""
    samples = {}
    for line in metrics.registry.render().splitlines():
        if not line.startswith("#"):
            match = _SAMPLE.match(line)
            assert match, line
            samples[match[1]] = float(match[2])
    return samples


def record(job_id: int, state: str, **fields: Any) -> JobRecord:
    """A job record at fixed times (created and last moved at 100.0)."""
    values: dict[str, Any] = {
        "repo": "https://example.com/a.git",
        "ref": "main",
        "created_at": 100.0,
        "updated_at": 100.0,
    }
    return feeds.record(job_id, state, **{**values, **fields})


def unstarted(tmp_path: Path, **kw: Any) -> tuple[Dispatcher, DispatcherMetrics]:
    dispatcher = Dispatcher(
        DispatcherConfig(data_dir=tmp_path), store=MemoryStore(), mesh=FakeMesh()
    )
    return dispatcher, DispatcherMetrics(dispatcher, per_repo=kw.pop("per_repo", False), **kw)


def test_jobs_run_on_the_fake_mesh_are_counted_and_timed(tmp_path: Path) -> None:
    async def main() -> dict[str, float]:
        mesh = FakeMesh()
        config = DispatcherConfig(data_dir=tmp_path)
        async with Dispatcher(config, store=MemoryStore(), mesh=mesh) as d:
            metrics = DispatcherMetrics(d, per_repo=False)
            runner = await mesh.add_runner("r1", capacity=2)
            jobs = [
                await d.submit(repo="/r", ref="main", sha="a" * 40, event="push", labels={})
                for _ in range(3)
            ]
            await eventually_async(lambda: len(runner.jobs) == 2, what="two JOB frames")
            during = scrape(metrics)
            for job, status in zip(jobs[:2], ("success", "failed"), strict=True):
                assert await runner.accept((job.id, 1))
                assert await runner.done((job.id, 1), status)
            await eventually_async(lambda: len(runner.jobs) == 3, what="the third JOB")
            assert await runner.accept((jobs[2].id, 1))
            assert await runner.done((jobs[2].id, 1), "success")
            metrics.close()
        return {**scrape(metrics), **{f"during {k}": v for k, v in during.items()}}

    samples = asyncio.run(main())
    assert samples["during narwhal_jobs_queued"] == 1
    assert samples["during narwhal_jobs_running"] == 2
    assert samples['during narwhal_runners{state="ready"}'] == 1
    assert samples['during narwhal_runner_slots{runner="r1"}'] == 2
    assert samples['during narwhal_runner_slots_busy{runner="r1"}'] == 2
    assert samples['narwhal_jobs_total{state="success"}'] == 2
    assert samples['narwhal_jobs_total{state="failed"}'] == 1
    assert samples['narwhal_jobs_total{state="timed_out"}'] == 0  # every end state, from the start
    for histogram in ("job_queue_duration", "job_duration", "dispatch_latency"):
        assert samples[f"narwhal_{histogram}_seconds_count"] == 3, histogram
        assert samples[f'narwhal_{histogram}_seconds_bucket{{le="+Inf"}}'] == 3
    assert samples["narwhal_jobs_queued"] == 0 and samples["narwhal_jobs_running"] == 0
    assert samples['narwhal_runner_slots_busy{runner="r1"}'] == 0
    assert samples["narwhal_up"] == 1 and samples["narwhal_bad_frames_total"] == 0


def test_a_requeued_job_waits_again_from_its_requeue(tmp_path: Path) -> None:
    dispatcher, metrics = unstarted(tmp_path)
    publish = dispatcher.feed.publish
    publish(JobChanged(record(1, "queued"), None))
    publish(JobChanged(record(1, "assigned", updated_at=103.0), "queued"))
    publish(JobChanged(record(1, "running", updated_at=104.0, started_at=104.0), "assigned"))
    requeued = record(1, "queued", attempt=2, updated_at=110.0, started_at=104.0)
    publish(JobChanged(requeued, "running"))
    publish(JobChanged(requeued._replace(state="assigned", updated_at=115.0), "queued"))
    running = requeued._replace(state="running", updated_at=120.0, started_at=120.0)
    publish(JobChanged(running, "assigned"))
    publish(JobUpdated(1, running))  # not a move: changes nothing here
    publish(JobChanged(running._replace(state="success", finished_at=150.0), "running"))
    samples = scrape(metrics)
    assert samples["narwhal_job_queue_duration_seconds_count"] == 2
    assert samples["narwhal_job_queue_duration_seconds_sum"] == 4 + 10  # not 20: from the requeue
    assert samples['narwhal_job_queue_duration_seconds_bucket{le="5.0"}'] == 1
    assert samples['narwhal_job_queue_duration_seconds_bucket{le="10.0"}'] == 2
    assert samples["narwhal_dispatch_latency_seconds_sum"] == 1 + 5
    assert samples["narwhal_job_duration_seconds_count"] == 1
    assert samples["narwhal_job_duration_seconds_sum"] == 30
    assert samples['narwhal_jobs_total{state="success"}'] == 1


def test_ends_without_a_run_count_but_take_no_duration(tmp_path: Path) -> None:
    dispatcher, metrics = unstarted(tmp_path)
    publish = dispatcher.feed.publish
    publish(JobChanged(record(1, "queued"), None))
    stale = record(1, "cancelled", attempt=2, started_at=101.0, finished_at=130.0)
    publish(JobChanged(stale, "queued"))  # cancelled while queued again: it ran before
    publish(JobChanged(record(2, "error", finished_at=101.0), "assigned"))
    samples = scrape(metrics)
    assert samples['narwhal_jobs_total{state="cancelled"}'] == 1
    assert samples['narwhal_jobs_total{state="error"}'] == 1
    assert samples["narwhal_job_duration_seconds_count"] == 0
    assert samples["narwhal_job_queue_duration_seconds_count"] == 0


def test_a_job_queued_before_a_restart_waits_from_its_creation_on_its_first_attempt(
    tmp_path: Path,
) -> None:
    dispatcher, metrics = unstarted(tmp_path)
    publish = dispatcher.feed.publish
    first = record(1, "running", created_at=50.0, updated_at=104.0, started_at=104.0)
    publish(JobChanged(first, "assigned"))
    later = record(2, "running", attempt=2, updated_at=104.0, started_at=104.0)
    publish(JobChanged(later, "assigned"))  # its requeue time is not known: not counted
    samples = scrape(metrics)
    assert samples["narwhal_job_queue_duration_seconds_count"] == 1
    assert samples["narwhal_job_queue_duration_seconds_sum"] == 54
    assert samples["narwhal_dispatch_latency_seconds_count"] == 0


def test_per_repo_labels_drop_credentials_and_stay_bounded(tmp_path: Path) -> None:
    dispatcher, metrics = unstarted(tmp_path, per_repo=True, max_repos=2)
    repos = [
        "https://ci:s3cret@example.com/one.git",
        "https://example.com/two.git",
        "https://example.com/three.git",
    ]
    for n, repo in enumerate([*repos, repos[0]], 1):
        dispatcher.feed.publish(JobChanged(record(n, "success", repo=repo), "running"))
    text = metrics.registry.render()
    assert "s3cret" not in text
    samples = scrape(metrics)
    assert (
        samples['narwhal_jobs_total{state="success",repo="https://***@example.com/one.git"}'] == 2
    )
    assert samples['narwhal_jobs_total{state="success",repo="https://example.com/two.git"}'] == 1
    assert samples['narwhal_jobs_total{state="success",repo="other"}'] == 1
    assert not any("three" in name for name in samples)


def test_runner_states_and_bad_frames_are_read_at_scrape_time(tmp_path: Path) -> None:
    async def main() -> tuple[dict[str, float], dict[str, float]]:
        mesh = FakeMesh()
        async with Dispatcher(
            DispatcherConfig(data_dir=tmp_path), store=MemoryStore(), mesh=mesh
        ) as d:
            metrics = DispatcherMetrics(d, per_repo=False)
            await mesh.add_runner("r1", capacity=3)
            await mesh.add_runner("r2", capacity=1)
            mesh.connect("tcp://late.fake:9100")  # not ready yet: no slots of its own
            mesh.bad_frames = 7
            before = scrape(metrics)
            await mesh.runners["r2"].lose("unplugged")
            return before, scrape(metrics)

    before, after = asyncio.run(main())
    assert before['narwhal_runners{state="ready"}'] == 2
    assert before['narwhal_runners{state="connecting"}'] == 1
    assert before['narwhal_runners{state="lost"}'] == 0
    slots = {k: v for k, v in before.items() if k.startswith("narwhal_runner_slots{")}
    assert slots == {'narwhal_runner_slots{runner="r1"}': 3, 'narwhal_runner_slots{runner="r2"}': 1}
    assert before["narwhal_bad_frames_total"] == 7
    assert 'narwhal_runner_slots{runner="r2"}' not in after


def test_commit_status_results_are_counted_per_forge(tmp_path: Path) -> None:
    _, metrics = unstarted(tmp_path)
    metrics.status_result("github", "sent")
    metrics.status_result("github", "sent")
    metrics.status_result("gitea", "failed")
    samples = scrape(metrics)
    assert samples['narwhal_commit_statuses_total{forge="github",result="sent"}'] == 2
    assert samples['narwhal_commit_statuses_total{forge="gitea",result="failed"}'] == 1


def test_the_module_docstring_lists_every_metric_with_its_help(tmp_path: Path) -> None:
    _, metrics = unstarted(tmp_path, per_repo=True)
    count_webhooks(metrics.registry)  # what ``narwhal up`` adds
    feed = Publisher("tcp://127.0.0.1:9", Feed())  # never started: its counters only
    feed.published, feed.snapshots = 7, 2
    metrics.watch_feed(feed)
    doc = " ".join((dispatcher_metrics.__doc__ or "").split())
    text = metrics.registry.render()
    assert "narwhal_feed_messages_total 7" in text and "narwhal_feed_snapshots_total 2" in text
    helps = re.findall(r"^# HELP (\S+) (.*)$", text, re.MULTILINE)
    assert len(helps) == 25
    for name, help_text in helps:
        assert f"``{name}" in doc, name
        assert help_text in doc, (name, help_text)
