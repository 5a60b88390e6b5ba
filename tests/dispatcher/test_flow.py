"""Log flow control: a step printing as fast as it can never starves anyone.

The flood goes through real processes and the real store; the test checks
that the log arrives complete and in order, that the other runner's jobs and
heartbeats kept flowing, and that neither side's memory grew with the output.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from narwhal.dispatcher.store import logcodec
from tests.support import probe
from tests.support.cluster import Cluster
from tests.support.repos import Repo

FLOOD_BYTES = 200_000_000
PATTERN = b"0123456789abcdef\n"
#: Peak resident memory allowed per process: far below the flood's size.
MEMORY_BOUND = 150 * 1024 * 1024


def _peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_flood_arrives_complete_without_starving_others(
    cluster: Cluster, make_repo: Callable[..., Repo]
) -> None:
    cluster.start_runner("flood", 1, "--labels", "role=flood")
    cluster.start_runner("other", 1, "--labels", "role=other")
    api = cluster.start_dispatcher()
    cluster.wait_ready(2)
    flood = make_repo(
        {
            "narwhal.yml": f"""\
steps:
  - name: flood
    command: yes 0123456789abcdef | head -c {FLOOD_BYTES}
"""
        }
    )
    quick = make_repo({"narwhal.yml": "steps:\n  - name: q\n    command: echo quick\n"})
    flood_id = api.submit(flood, labels={"role": "flood"})
    api.wait(flood_id, {"running"})
    quick_ids = [api.submit(quick, labels={"role": "other"}) for _ in range(5)]
    for job_id in quick_ids:
        assert api.wait(job_id, timeout=120)["state"] == "success"
    job = api.wait(flood_id, timeout=300)
    assert job["state"] == "success", job

    _check_log(cluster, flood_id)
    lost = probe.lost_transitions(api)
    assert lost == 0, "a heartbeat was starved: a runner was declared lost"
    for daemon in (cluster.runners["flood"], cluster.dispatcher):
        assert daemon is not None
        assert _peak_rss(daemon.proc.pid) < MEMORY_BOUND, daemon.args[0]


def _check_log(cluster: Cluster, job_id: int) -> None:
    """Header lines, then exactly FLOOD_BYTES of the pattern, in order."""
    rows = cluster.db().execute(
        "SELECT seq, codec, data FROM logs WHERE job_id = ? AND attempt = 1 ORDER BY seq",
        (job_id,),
    )
    marker = b"head -c %d\n" % FLOOD_BYTES
    header: bytes | None = b""
    body_len = 0
    seqs = []
    for seq, codec, chunk in rows:
        seqs.append(seq)
        data = logcodec.unpack(codec, bytes(chunk))  # stored compressed
        if header is not None:  # still reading the step's header lines
            header += data
            cut = header.find(marker)
            if cut < 0:
                continue
            assert header.startswith(b"--- step 1/1: flood\n")
            data, header = header[cut + len(marker) :], None
        start = body_len % len(PATTERN)
        expected = (PATTERN * (len(data) // len(PATTERN) + 2))[start : start + len(data)]
        assert data == expected, f"log chunk {seq} out of order or corrupt"
        body_len += len(data)
    assert seqs == sorted(set(seqs))
    assert body_len == FLOOD_BYTES
