"""High availability: two dispatchers on one PostgreSQL database, one leads.

Real processes (dispatchers and runners, on loopback) and the real server
(a fresh schema per test). The leader is killed with SIGKILL mid-run and
started again; the standby takes the lock, adopts the running jobs from the
runners' READY lists and goes on. Checked through both APIs: every job
ends exactly once (one terminal transition), no step ran twice (each step
appends its job id to a marker file), none is left behind.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from narwhal.events import encode
from narwhal.storeurl import StoreUrl
from tests.support import probe
from tests.support.broker import (
    AMQP_URL,
    commit_event,
    own_queue,
    publish,
    queue_consumers,
    queue_depth,
)
from tests.support.cluster import MESH, TERMINAL, Cluster
from tests.support.daemons import Client, Daemon, dispatcher_args, narwhal
from tests.support.eventually import eventually
from tests.support.ports import free_port, free_port_pair
from tests.support.postgres import fresh_schema
from tests.support.repos import Repo

pytestmark = pytest.mark.system

MakeRepo = Callable[..., Repo]


class Pair:
    """Two dispatchers (own data dirs, one keys dir) on one database, and the runners."""

    def __init__(self, cluster: Cluster, url: StoreUrl) -> None:
        self.cluster = cluster
        self.url = url
        self.ports = {name: free_port() for name in ("a", "b")}
        self.daemons: dict[str, Daemon] = {}
        self.clients: dict[str, Client] = {}
        #: More flags for both dispatchers, and for each.
        self.extra: list[str] = []
        self.flags: dict[str, list[str]] = {"a": [], "b": []}

    def start(self, name: str) -> Client:
        cluster = self.cluster
        args = dispatcher_args(
            cluster.root / f"data-{name}",
            *cluster.keys.dispatcher(),
            "--db",
            self.url.dsn or "",
            *self.extra,
            *self.flags[name],
            runners=[f"tcp://127.0.0.1:{port}" for port in cluster.ports.values()],
            http=f"127.0.0.1:{self.ports[name]}",
            mesh=MESH,
        )
        if name in self.daemons:
            cluster.retired.append(self.daemons[name])
        self.daemons[name] = Daemon(args)
        if name not in self.clients:
            self.clients[name] = Client(self.daemons[name].url)
        return self.clients[name]

    def role(self, name: str) -> str | None:
        try:
            return self.clients[name].http.get("/health").json().get("role")
        except httpx.TransportError:
            return None

    def wait_role(self, name: str, role: str, timeout: float = 30) -> None:
        eventually(
            lambda: self.role(name) == role, timeout=timeout, what=f"dispatcher {name} {role}"
        )

    def leader(self) -> str:
        return eventually(
            lambda: next((n for n in self.daemons if self.role(n) == "leader"), None),
            timeout=30,
            what="a leader",
        )

    def start_both(self, *runners: tuple[str, int]) -> tuple[Client, Client]:
        """The runners, ``a`` once it leads, ``b`` once it waits; both clients."""
        for name, capacity in runners:
            self.cluster.start_runner(name, capacity)
        leader = self.start("a")
        self.wait_role("a", "leader")
        standby = self.start("b")
        self.wait_role("b", "standby")
        self.cluster.api = leader
        if runners:
            self.cluster.wait_ready(len(runners))
        return leader, standby

    def close(self) -> None:
        for client in self.clients.values():
            client.close()
        for daemon in self.daemons.values():
            daemon.stop()


@pytest.fixture
def pair(cluster: Cluster) -> Iterator[Pair]:
    with fresh_schema() as url:
        started = Pair(cluster, url)
        try:
            yield started
        finally:
            started.close()


def _pipeline(script: str) -> dict[str, str]:
    lines = "".join(f"      - {line}\n" for line in script.strip().splitlines())
    return {"narwhal.yml": f"steps:\n  - name: work\n    commands:\n{lines}"}


def test_a_standby_serves_the_job_routes_from_the_database(pair: Pair, make_repo: MakeRepo) -> None:
    leader, standby = pair.start_both(("r", 2))

    # Submitted to the standby: written, announced, run by the leader.
    job_id = standby.submit(make_repo(_pipeline("echo through-the-standby")))
    job = standby.wait(job_id)
    assert job["state"] == "success", job
    assert "through-the-standby" in standby.log(job_id)
    assert leader.job(job_id)["state"] == "success"
    assert [j["id"] for j in standby.jobs()] == [job_id]

    # A cancel through the standby reaches the runner through the leader.
    sleeper = standby.submit(make_repo(_pipeline("sleep 60")))
    leader.wait(sleeper, {"running"})
    response = standby.http.post(f"/api/jobs/{sleeper}/cancel", json={})
    assert response.status_code == 202, response.text
    assert response.json()["cancel_requested"] is True
    assert standby.wait(sleeper, timeout=30)["state"] == "cancelled"

    # Resubmitted through the standby: the same commit again.
    again = standby.http.post(f"/api/jobs/{job_id}/resubmit", json={})
    assert again.status_code == 201, again.text
    assert standby.wait(again.json()["id"])["state"] == "success"

    # What only the leader knows: refused, with when to ask again.
    for path in ("/api/runners", "/metrics", "/api/tokens"):
        refused = standby.http.get(path)
        assert refused.status_code == 503, (path, refused.text)
        assert refused.headers["Retry-After"] and "leader" in refused.json()["error"]
    # The token check holds on a standby too.
    stranger = httpx.get(f"{pair.daemons['b'].url}/api/jobs", timeout=10)
    assert stranger.status_code == 401
    bad = standby.http.post("/api/jobs", json={"repo": "file:///etc", "ref": "-x"})
    assert bad.status_code == 400, bad.text


def test_a_token_made_on_the_leader_works_on_the_standby(pair: Pair) -> None:
    leader, standby = pair.start_both()
    made = leader.http.post("/api/tokens", json={"name": "ci-bot", "scope": "read"})
    assert made.status_code == 201, made.text
    reader = Client(pair.daemons["b"].url, token=made.json()["token"])
    try:
        eventually(
            lambda: reader.http.get("/api/jobs").status_code == 200,
            timeout=15,
            what="the leader's new token known to the standby",
        )
        assert reader.http.post("/api/jobs", json={"repo": "/x"}).status_code == 403
        assert leader.http.delete("/api/tokens/ci-bot").status_code == 200
        eventually(
            lambda: reader.http.get("/api/jobs").status_code == 401,
            timeout=15,
            what="the revoke known to the standby",
        )
    finally:
        reader.close()
    assert standby.http.get("/health").json()["role"] == "standby"

    # Stopped (SIGTERM), a standby and then the leader exit cleanly.
    assert pair.daemons["b"].stop() == 0
    assert pair.daemons["a"].stop() == 0
    pair.start("b")
    pair.wait_role("b", "leader")  # alone now: it leads at once
    pair.start("a")
    pair.wait_role("a", "standby")

    # Each data dir's admin.token is a token of its own, known to both.
    files = [pair.cluster.root / f"data-{name}" / "admin.token" for name in ("a", "b")]
    assert len({f.read_text() for f in files}) == 2
    for file in files:
        token = file.read_text().strip()
        for name in ("a", "b"):
            url = f"{pair.daemons[name].url}/api/jobs"
            eventually(
                lambda url=url, token=token: _status(url, token) == 200,
                timeout=15,
                what=f"{file.parent.name}'s admin.token working on {name}",
            )


def _status(url: str, token: str) -> int:
    return httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10).status_code


class Submitter:
    """Submits jobs in a thread, alternating between the two APIs; a refused
    or unreachable one is retried on the other (what a client with both
    addresses, or a load balancer, does)."""

    def __init__(self, pair: Pair, repo: Repo, count: int) -> None:
        self.pair, self.repo, self.count = pair, repo, count
        self.ids: list[int] = []
        self.by: Counter[str] = Counter()
        self.retries = 0
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"submitted {len(self.ids)} of {self.count}"
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        try:
            names = ["a", "b"]
            for n in range(self.count):
                self.ids.append(self._submit(names[n % 2], names[(n + 1) % 2]))
        except BaseException as e:  # seen by join
            self.error = e

    def _submit(self, first: str, other: str) -> int:
        deadline = time.monotonic() + 60
        name = first
        while True:
            try:
                response = self.pair.clients[name].http.post(
                    "/api/jobs", json={"repo": str(self.repo.path)}, timeout=10
                )
                if response.status_code == 201:
                    self.by[name] += 1
                    return int(response.json()["id"])
                assert response.status_code == 503, response.text
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "no dispatcher took a submission for 60 s"
            self.retries += 1
            name = other if name == first else first
            time.sleep(0.05)


def _placed_after(api: Client, jobs: list[int], after: float) -> float | None:
    """When the first job was assigned after ``after`` (epoch seconds), if one was."""
    times = []
    for job_id in jobs:
        for moved in api.job(job_id)["transitions"]:
            if moved["state"] == "assigned" and moved["at"] > after:
                times.append(moved["at"])
    return min(times, default=None)


def test_the_standby_takes_over_from_a_killed_leader_and_nothing_is_lost_or_run_twice(
    pair: Pair, make_repo: MakeRepo, tmp_path: Path
) -> None:
    cluster = pair.cluster
    pair.start_both(("r1", 4), ("r2", 4))
    markers = tmp_path / "markers"
    repo = make_repo(_pipeline(f'echo "$NARWHAL_JOB_ID" >> {markers}\nsleep 0.2'))

    submitter = Submitter(pair, repo, 500)
    submitter.start()
    eventually(lambda: len(submitter.ids) >= 150, timeout=120, what="150 jobs submitted")
    running = eventually(
        lambda: pair.clients["a"].jobs(state="running") or None,
        timeout=60,
        what="jobs running on the leader",
    )
    cluster.kill(pair.daemons["a"])  # SIGKILL: no goodbye to the database or the runners
    killed_at = time.time()  # it is dead by now: what is assigned later, the standby did
    pair.wait_role("b", "leader", timeout=30)
    pair.start("a")  # back, as a standby: it must not take the runners
    pair.wait_role("a", "standby")
    submitter.join(timeout=300)
    assert submitter.by["a"] > 0 and submitter.by["b"] > 0, submitter.by

    api = pair.clients["b"]
    ids = submitter.ids
    assert len(set(ids)) == 500

    def all_ended() -> bool:
        states = probe.state_counts(api)
        return sum(states.values()) == 500 and all(s in TERMINAL for s in states)

    eventually(
        all_ended, timeout=300, what="every job ended", detail=lambda: probe.state_counts(api)
    )
    for job_id in ids:
        assert probe.terminal_once(api, job_id) == "success"
    ran = Counter(int(line) for line in markers.read_text().split())
    assert set(ran) == set(ids), "every job's step ran"
    twice = {job_id: n for job_id, n in ran.items() if n != 1}
    assert not twice, f"steps run more than once: {twice}"
    # The jobs running at the kill went on where they ran: adopted, not run again.
    adopted = 0
    for job in running:
        after = api.job(job["id"])
        assert after["attempt"] == 1, after
        adopted += after["finished_at"] > killed_at
    assert adopted, "a job running at the kill ended under the new leader"
    assert pair.role("a") == "standby"
    placed = _placed_after(api, ids, killed_at)
    assert placed is not None
    print(
        f"takeover: first job placed {placed - killed_at:.2f} s after kill -9;"
        f" {adopted} running job(s) adopted; {submitter.retries} submission(s) retried"
    )


def test_a_frozen_leader_is_replaced_and_steps_down_when_it_wakes(
    pair: Pair, make_repo: MakeRepo, tmp_path: Path
) -> None:
    # What a leader's machine that stops running (but still answers TCP) looks
    # like from outside: its lock session goes idle, the server ends it.
    leader, standby = pair.start_both(("r", 2))
    markers = tmp_path / "markers"
    repo = make_repo(_pipeline(f'echo "$NARWHAL_JOB_ID" >> {markers}\nsleep 0.3'))
    ids = [leader.submit(repo) for _ in range(4)]
    frozen = pair.daemons["a"]
    os.kill(frozen.proc.pid, signal.SIGSTOP)
    stopped_at = time.monotonic()
    pair.wait_role("b", "leader", timeout=40)
    took = time.monotonic() - stopped_at
    ids += [standby.submit(repo) for _ in range(8)]
    os.kill(frozen.proc.pid, signal.SIGCONT)
    assert frozen.proc.wait(30) != 0, "a leader that lost its lock session stops"
    assert any("lost the leader lock" in line for line in frozen.stderr_lines), frozen.stderr_lines[
        -5:
    ]
    ids += [standby.submit(repo) for _ in range(8)]
    for job_id in ids:
        assert standby.wait(job_id, timeout=60)["state"] == "success"
        assert probe.terminal_once(standby, job_id) == "success"
    ran = Counter(int(line) for line in markers.read_text().split())
    assert ran == Counter(set(ids)), "each step ran once"
    print(f"frozen leader replaced after {took:.1f} s")


def test_only_the_leader_consumes_commit_events_and_the_next_one_goes_on(
    pair: Pair, tmp_path: Path
) -> None:
    amqp = tmp_path / "amqp"
    amqp.write_text(AMQP_URL)
    with own_queue() as queue:
        pair.extra = ["--amqp-file", str(amqp), "--amqp-queue", queue]
        leader, standby = pair.start_both()
        eventually(lambda: queue_consumers(queue) == 1, timeout=20, what="the leader consuming")
        asyncio.run(publish(queue, [encode(commit_event(n)) for n in range(5)]))
        eventually(lambda: len(leader.jobs()) == 5, timeout=20, what="5 jobs from 5 events")
        assert queue_consumers(queue) == 1, "a standby consumes nothing"
        pair.cluster.kill(pair.daemons["a"])
        pair.wait_role("b", "leader")
        eventually(lambda: queue_consumers(queue) == 1, timeout=20, what="the new leader consuming")
        # Events 3 and 4 again (a redelivery), and 5 new ones: each makes one job.
        asyncio.run(publish(queue, [encode(commit_event(n)) for n in range(3, 10)]))
        eventually(lambda: len(standby.jobs()) == 10, timeout=20, what="10 jobs")
        assert queue_depth(queue) == 0
        assert sorted(int(j["sha"], 16) for j in standby.jobs()) == list(range(10))


def test_the_dashboard_follows_the_leaders_metrics_feed(pair: Pair, tmp_path: Path) -> None:
    feeds = {name: f"tcp://127.0.0.1:{free_port_pair()}" for name in ("a", "b")}
    for name, feed in feeds.items():
        pair.flags[name] = ["--metrics", feed]
    keys = pair.cluster.keys
    made = narwhal("keys", "generate", "--dir", str(tmp_path), "--name", "board")
    assert made.returncode == 0, made.stderr
    trusted = narwhal(
        "keys", "trust", "--subscriber", str(tmp_path / "board.key"), "--keys-dir", str(keys.dir)
    )
    assert trusted.returncode == 0, trusted.stderr
    leader, standby = pair.start_both(("r", 1))
    backend = Daemon(
        [
            "backend",
            "--http",
            "127.0.0.1:0",
            "--metrics",
            f"{feeds['b']},{feeds['a']}",  # the standby's first: nothing there yet
            "--api",
            pair.daemons["b"].url,  # a standby serves history too
            "--key",
            str(tmp_path / "board.key"),
            "--dispatcher-key",
            str(keys.server_key),
            "--public-read",
            "--feed-timeout",
            "1",
        ]
    )
    pair.cluster.retired.append(backend)
    with httpx.Client(base_url=backend.url, headers={"origin": backend.url}) as board:

        def following(feed: str) -> dict[str, Any] | None:
            state = board.get("/api/state").json()
            live = state["feed"]["connected"] and state["feed"]["endpoint"] == feed
            return state if live and [r["id"] for r in state["runners"]] == ["r"] else None

        first = eventually(lambda: following(feeds["a"]), timeout=30, what="the leader's feed")
        pair.cluster.kill(pair.daemons["a"])
        pair.wait_role("b", "leader")
        then = eventually(lambda: following(feeds["b"]), timeout=30, what="the new leader's feed")
        assert then["feed"]["epoch"] != first["feed"]["epoch"]
        assert board.get("/api/jobs").status_code == 200
