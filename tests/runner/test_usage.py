"""The usage sampler (``runner.usage``) and the probes' parsing (``runner.probes``).

The sampler runs on a probe the test controls (a fake of the ``Probe``
protocol) with intervals of a few milliseconds; the parsing reads this
process's own ``/proc`` entries, and cgroup trees laid out in files as each
kind of host has them.
"""

from __future__ import annotations

import asyncio
import os
import resource
import time
from pathlib import Path

import pytest

from narwhal.runner.probes import (
    CgroupProbe,
    GroupProbe,
    cgroup_mounts,
    process_cgroups,
    stat_usage,
)
from narwhal.runner.usage import (
    Reading,
    Sample,
    Samples,
    Sampling,
    StepMeter,
    Unmetered,
    meter_for,
)
from tests.support.eventually import eventually_async

MiB = 1 << 20


# thinning


def test_samples_are_thinned_to_every_other_one_and_the_interval_doubles() -> None:
    samples = Samples(interval=1.0, limit=8)
    for i in range(7):
        samples.add((float(i), 0.0, i))
    assert len(samples.kept) == 7 and samples.interval == 1.0
    samples.add((7.0, 0.0, 7))  # full: every other one goes
    assert [s[0] for s in samples.kept] == [0.0, 2.0, 4.0, 6.0] and samples.interval == 2.0
    for t in (8.0, 10.0, 12.0):
        samples.add((t, 0.0, 0))
    assert len(samples.kept) == 7
    samples.add((14.0, 0.0, 0))
    assert [s[0] for s in samples.kept] == [0.0, 4.0, 8.0, 12.0] and samples.interval == 4.0


def test_thinning_never_sends_a_sample_twice_nor_one_it_dropped() -> None:
    samples = Samples(interval=1.0, limit=8)
    sent: list[Sample] = []
    for i in range(100):
        samples.add((float(i), 0.0, i))
        if i % 3 == 2:
            new = samples.unsent()
            sent.extend(new)
            samples.mark_sent(len(new))
    times = [s[0] for s in sent]
    assert times == sorted(set(times))  # in order, each once
    kept = {s[0] for s in samples.kept}
    assert kept - set(times) <= {s[0] for s in samples.unsent()}  # kept: sent, or still to go


# the meter, on a fake probe


class FakeProbe:
    """Reports a CPU counter that grows by ``cores`` per second, and ``memory``.

    ``now`` is the meter's clock: the time of the last read, so that CPU per
    second comes out exact however late the thread hands the reading back.
    """

    def __init__(self, cores: float = 1.5, memory: int | None = 10 * MiB) -> None:
        self.cores = cores
        self.memory = memory
        self.peak = 0
        self.fail: Exception | None = None
        self.reads = 0
        self._start = self._read_at = time.monotonic()

    def now(self) -> float:
        return self._read_at

    def read(self) -> Reading | None:
        self.reads += 1
        if self.fail is not None:
            raise self.fail
        self._read_at = time.monotonic()
        used = (self._read_at - self._start) * self.cores
        return Reading(cpu=used, memory=self.memory, peak=self.peak)


class Sent:
    """A ``Sampling.send`` that keeps what it was given."""

    def __init__(self) -> None:
        self.frames: list[tuple[int, tuple[Sample, ...], int | None]] = []

    async def __call__(self, index: int, samples: tuple[Sample, ...], limit: int | None) -> None:
        self.frames.append((index, samples, limit))

    @property
    def samples(self) -> list[Sample]:
        return [s for _, batch, _ in self.frames for s in batch]


def _meter(
    sent: Sent,
    probe: FakeProbe,
    interval: float = 0.02,
    send_every: float = 0.1,
    *,
    exact: bool = True,
) -> StepMeter:
    """A meter of step 3; ``exact``: on the probe's clock (which stands still between reads)."""
    sampling = Sampling(send=sent, interval=interval, send_every=send_every)
    return StepMeter(sampling, 3, clock=probe.now if exact else time.monotonic)


def test_a_watched_step_is_sampled_and_sent_every_few_samples_and_at_its_end() -> None:
    async def main() -> tuple[Sent, StepMeter]:
        sent, probe = Sent(), FakeProbe(cores=1.5)
        meter = _meter(sent, probe)
        meter.watch(probe, memory_limit=64 * MiB)
        await asyncio.sleep(0.35)
        during = len(sent.frames)
        await meter.last()
        await meter.close()
        assert during >= 2  # frames went out while it ran, not only at the end
        return sent, meter

    sent, meter = asyncio.run(main())
    assert {(index, limit) for index, _, limit in sent.frames} == {(3, 64 * MiB)}
    assert sent.samples == meter.samples  # each sent once, in order, none left behind
    times = [t for t, _, _ in sent.samples]
    assert 0.005 <= times[0] <= 0.3 and times == sorted(times)
    assert len(times) >= 8
    assert {cpu for _, cpu, _ in sent.samples} == {1.5}
    assert {m for _, _, m in sent.samples} == {10 * MiB}


def test_a_step_shorter_than_one_interval_still_gets_its_last_sample() -> None:
    async def main() -> Sent:
        sent, probe = Sent(), FakeProbe(cores=1.0)
        meter = _meter(sent, probe, interval=5.0, send_every=60.0)
        meter.watch(probe, memory_limit=None)
        await asyncio.sleep(0.05)
        await meter.last()
        await meter.close()
        return sent

    sent = asyncio.run(main())
    ((index, samples, limit),) = sent.frames
    assert (index, limit, len(samples)) == (3, None, 1)
    assert samples[0][1] == 1.0


def test_a_last_sample_right_after_a_timed_one_keeps_the_rate_before() -> None:
    async def main() -> list[Sample]:
        sent, probe = Sent(), FakeProbe(cores=1.0, memory=10 * MiB)
        meter = _meter(sent, probe, interval=1.0, exact=False)
        meter.watch(probe, memory_limit=None)
        await eventually_async(
            lambda: meter.samples, timeout=5, interval=0.01, what="a first sample"
        )
        # Whatever CPU this few milliseconds shows (a clock tick's worth is
        # a spike of cores), the rate measured before stands.
        probe.cores, probe.memory = 1000.0, 30 * MiB
        await meter.last()
        await meter.close()
        return sent.samples

    first, last = asyncio.run(main())
    assert last[1] == first[1] and last[2] == 30 * MiB and last[0] > first[0]


def test_a_failing_probe_means_no_sample_and_nothing_else() -> None:
    async def main() -> tuple[Sent, FakeProbe]:
        sent, probe = Sent(), FakeProbe()
        meter = _meter(sent, probe)
        probe.fail = PermissionError("no /proc for you")
        meter.watch(probe, memory_limit=None)
        await asyncio.sleep(0.1)
        await meter.last()
        await meter.close()
        return sent, probe

    sent, probe = asyncio.run(main())
    assert probe.reads >= 3 and sent.frames == []


def test_when_every_process_ended_the_memory_before_or_the_peak_is_kept() -> None:
    async def ended(peak: int) -> Sent:
        sent = Sent()
        probe = FakeProbe(memory=50 * MiB)
        meter = _meter(sent, probe, interval=0.2, exact=False)
        meter.watch(probe, memory_limit=None)
        await eventually_async(lambda: meter.samples, timeout=5, what="a first sample")
        await asyncio.sleep(0.1)  # half way to the next: the last sample is not skipped
        probe.memory, probe.peak = None, peak
        await meter.last()
        await meter.close()
        return sent

    async def main() -> tuple[Sent, Sent, Sent]:
        seen, unseen, short = await ended(40 * MiB), await ended(80 * MiB), Sent()
        gone = FakeProbe(memory=None)
        gone.peak = 80 * MiB
        quick = _meter(short, gone, interval=5.0)  # ended before its first sample
        quick.watch(gone, memory_limit=None)
        await quick.last()
        await quick.close()
        return seen, unseen, short

    seen, unseen, short = asyncio.run(main())
    assert seen.samples[-1][2] == 50 * MiB  # carried on: no drop to 0, no jump
    assert unseen.samples[-1][2] == 80 * MiB  # a peak no sample saw: the step's peak is right
    assert [m for _, _, m in short.samples] == [80 * MiB]


def test_a_meter_never_watched_or_dropped_sends_nothing_and_unmetered_does_nothing() -> None:
    async def main() -> tuple[Sent, Sent, int]:
        sent, dropped = Sent(), Sent()
        meter = _meter(sent, FakeProbe())
        await meter.last()
        await meter.close()
        probe = FakeProbe()
        cancelled = _meter(dropped, probe, interval=0.02, send_every=10.0)
        cancelled.watch(probe, memory_limit=None)
        await asyncio.sleep(0.1)
        cancelled.drop()  # the step's task was cancelled: stop at once, send nothing
        reads = probe.reads
        await asyncio.sleep(0.1)
        nothing = meter_for(None, 0)
        assert isinstance(nothing, Unmetered)
        nothing.watch(FakeProbe(), memory_limit=None)
        await nothing.last()
        nothing.drop()
        await nothing.close()
        return sent, dropped, probe.reads - reads

    sent, dropped, reads_after = asyncio.run(main())
    assert sent.frames == [] and dropped.frames == [] and reads_after <= 1


# the probes' parsing, on this process's own /proc


def test_proc_stat_gives_this_process_group_cpu_and_resident_memory() -> None:
    before = stat_usage(Path("/proc/self/stat").read_bytes())
    deadline = time.process_time() + 0.2
    while time.process_time() < deadline:  # a fifth of a second of CPU, then stop
        pass
    pgid, cpu, rss = stat_usage(Path("/proc/self/stat").read_bytes())
    assert pgid == os.getpgrp() == before[0]
    assert 0.1 <= cpu - before[1] <= 1.0
    # Its own time and its waited-for children's (cutime, cstime).
    used = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    assert abs(cpu - sum(u.ru_utime + u.ru_stime for u in used)) < 0.05
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    assert abs(rss - pages * os.sysconf("SC_PAGE_SIZE")) < 8 * MiB  # the same counter


def test_a_command_name_with_spaces_and_parentheses_is_parsed() -> None:
    fields = " ".join(str(n) for n in range(3, 53)).replace("3 4 5", "S 1 77", 1)
    data = f"1234 (a) (b c)) {fields}\n".encode()
    pgid, cpu, rss = stat_usage(data)
    tick = os.sysconf("SC_CLK_TCK")
    assert pgid == 77 and cpu == (14 + 15 + 16 + 17) / tick
    assert rss == 24 * os.sysconf("SC_PAGE_SIZE")


def test_the_group_probe_finds_this_process_in_its_group() -> None:
    reading = GroupProbe(os.getpgrp()).read()
    assert reading is not None and reading.memory is not None
    own = stat_usage(Path("/proc/self/stat").read_bytes())
    assert reading.memory >= own[2] - MiB and reading.cpu >= own[1] - 0.05
    assert GroupProbe(2**22 + 7).read() is None  # no such group: nothing to read


def test_cgroup_mounts_and_paths_of_this_host_parse() -> None:
    mounts = cgroup_mounts(Path("/proc/self/mountinfo").read_text())
    assert mounts, "no cgroup hierarchy mounted"
    assert all(m.point.is_dir() for m in mounts.values())
    paths = process_cgroups(Path("/proc/self/cgroup").read_text())
    assert paths and all(p.startswith("/") for p in paths.values())


# the cgroup probe on cgroup trees laid out as hosts have them


def _host(tmp_path: Path, mountinfo: list[str]) -> Path:
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "mountinfo").write_text("\n".join(mountinfo) + "\n")
    return proc


def _files(folder: Path, files: dict[str, str]) -> None:
    folder.mkdir(parents=True)
    for name, text in files.items():
        (folder / name).write_text(text)


CID = "0622aa9e52c6" * 5 + "f865"


def test_cgroup_v2_under_the_systemd_driver(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    proc = _host(tmp_path, [f"35 24 0:30 / {root} rw,nosuid - cgroup2 cgroup2 rw,nsdelegate"])
    _files(
        root / "system.slice" / f"docker-{CID}.scope",
        {
            "cpu.stat": "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n",
            "memory.current": str(100 * MiB),
            "memory.stat": f"anon {60 * MiB}\nfile {40 * MiB}\ninactive_file {30 * MiB}\n",
        },
    )
    assert CgroupProbe(CID, proc=proc).read() == Reading(cpu=2.5, memory=70 * MiB)


def test_cgroup_v1_hybrid_under_the_cgroupfs_driver(tmp_path: Path) -> None:
    # This machine's kind: v1 controllers (cpu and cpuacct mounted together
    # here), and a v2 hierarchy with no controllers that still counts CPU.
    base = tmp_path / "cg"
    proc = _host(
        tmp_path,
        [
            f"32 31 0:29 / {base}/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct",
            f"35 31 0:32 / {base}/memory rw - cgroup cgroup rw,memory",
            f"41 31 0:38 / {base}/unified rw - cgroup2 cgroup2 rw",
        ],
    )
    _files(base / "cpu,cpuacct" / "docker" / CID, {"cpuacct.usage": "3000000000\n"})
    _files(
        base / "memory" / "docker" / CID,
        {
            "memory.usage_in_bytes": str(50 * MiB),
            "memory.stat": f"cache {9 * MiB}\ntotal_inactive_file {8 * MiB}\n",
        },
    )
    assert CgroupProbe(CID, proc=proc).read() == Reading(cpu=3.0, memory=42 * MiB)
    # With the unified hierarchy's cpu.stat there, CPU comes from v2.
    _files(base / "unified" / "docker" / CID, {"cpu.stat": "usage_usec 1000000\n"})
    assert CgroupProbe(CID, proc=proc).read() == Reading(cpu=1.0, memory=42 * MiB)


def test_a_cgroup_elsewhere_is_found_through_the_init_process(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    proc = _host(tmp_path, [f"35 24 0:30 /nested {root} rw - cgroup2 cgroup2 rw"])
    (proc / "4242").mkdir()
    (proc / "4242" / "cgroup").write_text("0::/nested/ci.slice/custom-parent/box\n")
    _files(
        root / "ci.slice" / "custom-parent" / "box",
        {"cpu.stat": "usage_usec 500000\n", "memory.current": "4096", "memory.stat": ""},
    )
    asked: list[str] = []

    def pid() -> int:
        asked.append("pid")
        return 4242

    probe = CgroupProbe(CID, pid=pid, proc=proc)
    assert probe.read() == Reading(cpu=0.5, memory=4096)
    assert probe.read() == Reading(cpu=0.5, memory=4096) and asked == ["pid"]  # found once
    assert CgroupProbe(CID, proc=proc).read() is None  # no pid to ask: nothing to read
    gone: list[int] = []
    lost = CgroupProbe(CID, pid=lambda: gone.append(4343) or 4343, proc=proc)  # no such process
    assert [lost.read() for _ in range(10)] == [None] * 10
    assert len(gone) == 3  # it gives up: no engine call every second


def test_a_removed_cgroup_is_nothing_to_read(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    proc = _host(tmp_path, [f"35 24 0:30 / {root} rw - cgroup2 cgroup2 rw"])
    folder = root / "docker" / CID
    _files(folder, {"cpu.stat": "usage_usec 1\n", "memory.current": "1", "memory.stat": ""})
    probe = CgroupProbe(CID, proc=proc)
    assert probe.read() is not None
    for name in ("cpu.stat", "memory.current", "memory.stat"):
        (folder / name).unlink()
    assert probe.read() is None


@pytest.mark.parametrize("text", ["", "garbage line\n", "1 2 3 - cgroup2\n"])
def test_mountinfo_without_cgroups_gives_no_mounts(text: str) -> None:
    assert cgroup_mounts(text) == {}
