"""Discovery end to end on a simulated LAN: real processes in network namespaces.

One namespace per machine (a dispatcher, runners) joined by a bridge; the
dispatcher is given no runner endpoint and finds every runner by mDNS.
Needs root, ``ip`` and ``dig``: missing any of them fails these tests.
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from narwhal.mesh.protocol import PROTOCOL_VERSION
from tests.support.eventually import eventually
from tests.support.netns import API_TOKEN, LanCluster
from tests.support.repos import Repo

MakeRepo = Callable[..., Repo]
TERMINAL = {"success", "failed", "error", "cancelled", "timed_out"}


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LanCluster]:
    cluster = LanCluster(tmp_path)
    try:
        yield cluster
    finally:
        cluster.close()


def ready(cluster: LanCluster) -> dict[str, dict[str, Any]]:
    runners = cluster.listing()["runners"]
    return {r["id"]: r for r in runners if r["state"] == "ready"}


def sleeper(make_repo: MakeRepo, seconds: float) -> Repo:
    return make_repo({"narwhal.yml": f"steps:\n  - name: s\n    command: sleep {seconds}\n"})


def narwhal(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "narwhal", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={**os.environ, "NARWHAL_API_TOKEN": API_TOKEN},
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_jobs_spread_by_capacity_survive_a_kill_and_reach_a_late_runner(
    cluster: LanCluster, make_repo: MakeRepo
) -> None:
    api = cluster.start_dispatcher()
    for name, capacity in (("r1", 1), ("r2", 2), ("r3", 3)):
        cluster.start_runner(name, capacity=capacity)
    eventually(
        lambda: len(ready(cluster)) == 3,
        what="three runners found by mDNS",
        timeout=20,
        detail=cluster.describe,
    )
    found = ready(cluster)
    assert {n: (r["capacity"], r["source"]) for n, r in found.items()} == {
        "r1": (1, "mdns"),
        "r2": (2, "mdns"),
        "r3": (3, "mdns"),
    }
    assert found["r2"]["endpoint"] == f"tcp://{cluster.lan.hosts['r2'].address}:8471"

    # Six slots, six jobs: every runner runs as many as it announced.
    repo = sleeper(make_repo, 2)
    ids = [api.submit(repo) for _ in range(6)]
    eventually(
        lambda: all(api.job(i)["state"] == "running" for i in ids),
        what="six running jobs",
        timeout=20,
        detail=cluster.describe,
    )
    holders = collections.Counter(api.job(i)["runner_id"] for i in ids)
    assert holders == {"r1": 1, "r2": 2, "r3": 3}

    # r3 dies with three jobs: heartbeats (not mDNS) notice, the others take them.
    lost = [i for i in ids if api.job(i)["runner_id"] == "r3"]
    cluster.lan.kill(cluster.runners["r3"])
    jobs = [api.wait(i, timeout=30) for i in ids]
    assert all(j["state"] == "success" for j in jobs), jobs
    for job in jobs:
        if job["id"] in lost:
            assert job["attempt"] == 2 and job["runner_id"] in {"r1", "r2"}, job

    # A runner that joins later is found and gets work.
    cluster.start_runner("r4", capacity=2, listen=f"tcp://{cluster.host('r4').address}:0")
    eventually(lambda: "r4" in ready(cluster), what="r4 found", timeout=20, detail=cluster.describe)
    late = [api.submit(sleeper(make_repo, 1)) for _ in range(5)]
    assert "r4" in {api.wait(i, timeout=30)["runner_id"] for i in late}

    # A real mDNS client sees the runners: dig asking a responder directly.
    for name in ("r1", "r2", "r4"):
        address = cluster.lan.hosts[name].address
        answer = cluster.lan.run(
            cluster.dispatcher_host,
            ["dig", "+norec", "-p", "5353", f"@{address}", "_narwhal._tcp.local.", "PTR"],
        )
        assert "status: NOERROR" in answer and f"{name}\\@{address.replace('.', '-')}:" in answer
        assert f'"id={name}"' in answer and f'"protocol={PROTOCOL_VERSION}"' in answer, answer

    # ``narwhal runners`` lists what the dispatcher knows; r3 is still
    # announced (no goodbye) and its link keeps trying, but it is not ready.
    listing = narwhal("runners", "--server", str(api.http.base_url))
    lines = {line.split()[0]: line for line in listing.splitlines()[1:]}
    for name in ("r1", "r2", "r4"):
        assert "ready" in lines[name] and "mdns" in lines[name], listing
    assert "r3" not in ready(cluster)

    # A clean stop reports its jobs, then says goodbye (in that order: a
    # goodbye first would have requeued them), and the dispatcher drops it.
    busy = [api.submit(sleeper(make_repo, 30)) for _ in range(5)]
    eventually(
        lambda: all(api.job(i)["state"] == "running" for i in busy),
        what="5 running",
        timeout=20,
        detail=cluster.describe,
    )
    on_r2 = [i for i in busy if api.job(i)["runner_id"] == "r2"]
    assert len(on_r2) == 2
    assert cluster.runners["r2"].stop() == 0
    for job in (api.job(i) for i in on_r2):
        assert (job["state"], job["attempt"]) == ("cancelled", 1), job
        assert "runner shutting down" in job["reason"]
    eventually(
        lambda: all(r["id"] != "r2" for r in cluster.listing()["runners"]),
        what="r2 dropped after its goodbye",
        timeout=5,
        detail=cluster.describe,
    )


def test_duplicate_id_is_refused_and_a_restarted_runner_stays_one_runner(
    cluster: LanCluster, make_repo: MakeRepo
) -> None:
    api = cluster.start_dispatcher()
    cluster.start_runner("a", capacity=1, runner_id="alpha")
    eventually(
        lambda: "alpha" in ready(cluster), what="alpha found", timeout=20, detail=cluster.describe
    )
    first = f"tcp://{cluster.lan.hosts['a'].address}:8471"

    # A second machine claiming the same id is refused, with the reason shown.
    cluster.start_runner("b", capacity=4, runner_id="alpha")
    imposter = f"tcp://{cluster.lan.hosts['b'].address}:8471"
    eventually(
        lambda: any(r["endpoint"] == imposter for r in cluster.listing()["refused"]),
        what="the second alpha refused",
        timeout=20,
        detail=cluster.describe,
    )
    listing = narwhal("runners", "--server", str(api.http.base_url))
    assert f"refused {imposter}: runner id 'alpha' is already connected from {first}" in listing
    assert [r["endpoint"] for r in cluster.listing()["runners"]] == [first]
    assert cluster.dispatcher is not None
    assert any("refusing runner at" in line for line in cluster.dispatcher.stderr_lines)
    # The cloned machine's runner is told why, in its own log.
    told = f"dispatcher refused this runner: runner id 'alpha' is already connected from {first}"
    b_log = cluster.runners["b"].stderr_lines
    eventually(
        lambda: any(told in line for line in b_log),
        what="the second alpha told why",
        timeout=20,
        detail=cluster.describe,
    )
    assert api.wait(api.submit(sleeper(make_repo, 0)))["runner_id"] == "alpha"
    assert cluster.runners["b"].stop() == 0  # its goodbye also clears the refusal
    eventually(
        lambda: not cluster.listing()["refused"],
        what="the refusal cleared by b's goodbye",
        timeout=20,
        detail=cluster.describe,
    )

    # Killed, found dead by heartbeats, restarted at the same address: the
    # same endpoint, one runner.
    cluster.lan.kill(cluster.runners["a"])
    eventually(
        lambda: "alpha" not in ready(cluster),
        what="alpha declared lost",
        timeout=20,
        detail=cluster.describe,
    )
    cluster.start_runner("a", capacity=1, runner_id="alpha")
    eventually(
        lambda: _links(cluster) == [(first, "ready")],
        what="alpha back, once",
        timeout=20,
        detail=cluster.describe,
    )

    # Killed and at once restarted on another port: announced twice (the old
    # records linger without a goodbye), and the new one may even say READY
    # before the old one is found dead (then it is refused at first). Either
    # way: one runner, at its new endpoint.
    cluster.lan.kill(cluster.runners["a"])
    cluster.start_runner("a", capacity=1, runner_id="alpha", listen="tcp://0.0.0.0:8472")
    moved = f"tcp://{cluster.lan.hosts['a'].address}:8472"
    eventually(
        lambda: _links(cluster) == [(moved, "ready")],
        what="alpha at its new port, once",
        timeout=20,
        detail=cluster.describe,
    )
    assert not cluster.listing()["refused"]
    assert api.wait(api.submit(sleeper(make_repo, 0)))["runner_id"] == "alpha"


def _links(cluster: LanCluster) -> list[tuple[str, str]]:
    return [(r["endpoint"], r["state"]) for r in cluster.listing()["runners"]]


def test_nothing_is_left_behind(tmp_path: Path) -> None:
    cluster = LanCluster(tmp_path)
    names = [host.netns for host in cluster.lan.hosts.values()] + [cluster.lan.bridge]
    cluster.start_dispatcher()
    cluster.start_runner("r1", capacity=1)
    veth = cluster.lan.api_host
    cluster.close()
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(name in listing for name in names)
    links = subprocess.run(["ip", "link", "show"], capture_output=True, text=True).stdout
    assert veth and veth not in links
    assert all(d.proc.poll() is not None for d in cluster.lan.daemons)


def test_runners_announced_with_untrusted_or_no_keys_get_no_job(
    cluster: LanCluster, make_repo: MakeRepo, tmp_path: Path
) -> None:
    api = cluster.start_dispatcher()
    cluster.start_runner("good", capacity=1)
    # A LAN attacker's runners: one with a key of its own, one without CURVE.
    cluster.start_runner("rogue", capacity=8, keys=cluster.keys.runner("rogue", trusted=False))
    cluster.start_runner("plain", capacity=8, keys=["--insecure"])
    rogue = f"tcp://{cluster.host('rogue').address}:8471"
    plain = f"tcp://{cluster.host('plain').address}:8471"
    eventually(
        lambda: {rogue, plain} <= {r["endpoint"] for r in cluster.listing()["refused"]},
        what="both rogues refused",
        timeout=20,
        detail=cluster.describe,
    )
    reasons = {r["endpoint"]: r["reason"] for r in cluster.listing()["refused"]}
    assert reasons[rogue].startswith("key not trusted: run narwhal keys trust FILE --id rogue")
    assert "announces no CURVE key" in reasons[plain]
    marker = tmp_path / "marks"
    marker.mkdir()
    repo = make_repo(
        {"narwhal.yml": f"steps:\n  - name: s\n    command: touch {marker}/$(hostname)-$$\n"}
    )
    jobs = [api.wait(api.submit(repo), timeout=30) for _ in range(4)]
    assert {(j["state"], j["runner_id"]) for j in jobs} == {("success", "good")}
    assert set(ready(cluster)) == {"good"}
    assert len(list(marker.iterdir())) == 4
