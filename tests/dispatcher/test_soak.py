"""A bounded soak: many jobs while runners and the dispatcher are killed, frozen, restarted.

The result is checked only on the store: every job submitted ends exactly
once, nothing stays queued or running, attempts stay within the limit, and
every successful job's log is complete and in order.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

from tests.support import probe
from tests.support.cluster import TERMINAL, Cluster
from tests.support.eventually import eventually
from tests.support.repos import Repo

JOBS = 40
LINES = 15


def test_jobs_survive_kills_freezes_and_restarts(
    cluster: Cluster, make_repo: Callable[..., Repo]
) -> None:
    for name in ("a", "b", "c"):
        cluster.start_runner(name, 2)
    api = cluster.start_dispatcher("--max-attempts", "4")
    cluster.wait_ready(3)
    repo = make_repo(
        {
            "narwhal.yml": f"""\
steps:
  - name: count
    commands:
      - for i in $(seq 1 {LINES}); do echo line-$i; sleep 0.02; done
"""
        }
    )
    ids = [api.submit(repo) for _ in range(JOBS // 2)]
    kills = 0

    time.sleep(0.5)
    cluster.kill(cluster.runners["a"])  # kill -9 a runner mid-job ...
    cluster.start_runner("a", 2)  # ... and bring it back on the same endpoint
    kills += 1
    cluster.kill(cluster.runners["b"], signal.SIGSTOP)  # freeze one past its liveness
    time.sleep(1.0)
    cluster.runners["b"].proc.send_signal(signal.SIGCONT)
    kills += 1
    ids += [api.submit(repo) for _ in range(JOBS // 2)]
    time.sleep(0.3)
    assert cluster.dispatcher is not None
    cluster.kill(cluster.dispatcher)  # kill -9 the dispatcher with jobs in flight
    kills += 1
    time.sleep(0.5)
    cluster.start_dispatcher("--max-attempts", "4")
    cluster.kill(cluster.runners["c"])
    cluster.start_runner("c", 2)
    kills += 1

    eventually(
        lambda: all(api.job(i)["state"] in TERMINAL for i in ids),
        timeout=180,
        what="every job to end",
    )
    states = probe.state_counts(api)
    assert sum(states.values()) == JOBS, "no job lost, none invented"
    assert set(states) <= TERMINAL, states
    for job_id in ids:  # each job ended exactly once
        probe.terminal_once(api, job_id)
    assert probe.max_attempt(api) <= 4
    expected = [f"line-{i}" for i in range(1, LINES + 1)]
    for job_id in ids:
        job = api.job(job_id)
        assert job["state"] == "success", job
        lines = [x for x in api.log(job_id).splitlines() if x.startswith("line-")]
        assert lines == expected, f"job {job_id} log incomplete"
    print(f"soak: {JOBS} jobs, {kills} kills/freezes survived, 0 lost, states {states}")
