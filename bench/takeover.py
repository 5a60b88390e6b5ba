"""Takeover: from the leader's death to the first job the new leader places.

``python -m bench.takeover [--reps N] [--lock-only]``, on the test server
(``tests/support/postgres.py``), a fresh schema per repetition.

Each repetition starts two ``narwhal dispatcher --db postgresql://...``
processes (own data dirs, one keys dir) and one runner, all on loopback,
and submits a no-op job every ``INTERVAL`` seconds to the standby's API.
Once the first dispatcher leads and jobs flow, it is taken away:

- ``kill -9``: SIGKILL, the server ends its session at once;
- ``frozen``: SIGSTOP, what a machine that stops running looks like (its
  kernel still answers TCP): the server ends the idle lock session after
  ``idle_session_timeout`` (5 s, ``leadership.SESSION``).

Printed per case: seconds to the standby saying it leads (``/health``),
and to the first job assigned after the leader was gone (the job's
history), median and max. ``--lock-only``: also the advisory lock's own
handover between two bare sessions, without any dispatcher.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from narwhal.dispatcher.leadership import Leadership
from narwhal.storeurl import StoreUrl
from tests.support.cluster import MESH
from tests.support.daemons import API_TOKEN, Client, Daemon, dispatcher_args, runner_args
from tests.support.keys import MeshKeys
from tests.support.ports import free_port
from tests.support.postgres import SERVER, fresh_schema
from tests.support.repos import Repo

#: Seconds between two submissions while the leader goes away.
INTERVAL = 0.02
CASES = {"kill -9": signal.SIGKILL, "frozen": signal.SIGSTOP}


def _role(client: Client) -> str | None:
    try:
        return client.http.get("/health", timeout=2).json().get("role")
    except (httpx.TransportError, ValueError):
        return None


class TimedOut(Exception):
    pass


def _until(check: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimedOut(what)
        time.sleep(0.02)


class Feeder(threading.Thread):
    """Submits a no-op job every ``INTERVAL`` s to ``client``; keeps the ids."""

    def __init__(self, client: Client, repo: Repo) -> None:
        super().__init__(daemon=True)
        self.client, self.repo = client, repo
        self.ids: list[int] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                response = self.client.http.post(
                    "/api/jobs", json={"repo": str(self.repo.path)}, timeout=5
                )
                if response.status_code == 201:
                    self.ids.append(int(response.json()["id"]))
            except httpx.TransportError:
                pass
            time.sleep(INTERVAL)


def once(root: Path, sig: int) -> tuple[float, float]:
    """One takeover; (seconds to the standby leading, seconds to its first job placed)."""
    keys = MeshKeys(root)
    repo = Repo(root / "repo")
    repo.commit({"narwhal.yml": "steps:\n  - name: nothing\n    command: 'true'\n"})
    port = free_port()
    daemons: list[Daemon] = []
    clients: list[Client] = []
    feeder: Feeder | None = None
    with fresh_schema() as url:
        try:
            daemons.append(
                Daemon(
                    runner_args(
                        root / "work",
                        "--id",
                        "r",
                        "--capacity",
                        "4",
                        *keys.runner("r"),
                        listen=f"tcp://127.0.0.1:{port}",
                        mesh=MESH,
                    )
                )
            )
            for name in ("a", "b"):
                args = dispatcher_args(
                    root / f"data-{name}",
                    *keys.dispatcher(),
                    "--db",
                    url.dsn or "",
                    runners=[f"tcp://127.0.0.1:{port}"],
                    mesh=MESH,
                )
                daemons.append(Daemon(args))
                clients.append(Client(daemons[-1].url))
                if name == "a":
                    _until(lambda: _role(clients[0]) == "leader", 30, "the first leader")
            leader = daemons[1]
            _until(lambda: _role(clients[1]) == "standby", 30, "the standby")
            feeder = Feeder(clients[1], repo)
            feeder.start()
            _until(lambda: len(feeder.ids) >= 20, 30, "jobs flowing")
            time.sleep(0.5)
            os.kill(leader.proc.pid, sig)
            if sig == signal.SIGKILL:
                leader.proc.wait(10)
            gone = time.time()
            _until(lambda: _role(clients[1]) == "leader", 60, "the standby to lead")
            leads = time.time() - gone
            _until(lambda: _placed_after(clients[1], feeder.ids, gone), 60, "a job placed")
            placed = (_placed_after(clients[1], feeder.ids, gone) or gone) - gone
            return leads, placed
        except TimedOut as e:
            for daemon in daemons:
                tail = "".join(daemon.stderr_lines[-15:])
                print(f"--- {' '.join(daemon.args[:1] + daemon.args[-4:])}\n{tail}")
            raise SystemExit(f"bench.takeover: timed out waiting for {e}") from None
        finally:
            if sig == signal.SIGSTOP and daemons[1:]:
                os.kill(daemons[1].proc.pid, signal.SIGCONT)
            if feeder is not None:
                feeder.done.set()
                feeder.join(10)
            for client in clients:
                client.close()
            for daemon in daemons:
                daemon.stop()


def _placed_after(client: Client, ids: list[int], after: float) -> float | None:
    """When the first of ``ids`` was assigned after ``after`` (epoch seconds).

    Every one is looked at: the new leader takes the queue oldest first, and
    a frozen leader leaves a backlog of hundreds behind.
    """
    times = []
    for job_id in list(ids):
        for moved in client.job(job_id)["transitions"]:
            if moved["state"] == "assigned" and moved["at"] > after:
                times.append(moved["at"])
    return min(times, default=None)


CHILD = """
import asyncio, sys
from narwhal.dispatcher.leadership import Leadership
from narwhal.storeurl import StoreUrl
async def main():
    lead = Leadership(StoreUrl("postgresql", dsn=sys.argv[1]))
    await lead.acquire()
    print("held", flush=True)
    await asyncio.sleep(3600)
asyncio.run(main())
"""


async def lock_once(dsn: str) -> float:
    """The lock alone: SIGKILL of its holder to a waiting session holding it."""
    child = subprocess.Popen(  # noqa: S603, ASYNC220 - a bench: blocking here is harmless
        [sys.executable, "-c", CHILD, dsn], stdout=subprocess.PIPE, env=os.environ.copy()
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == b"held"
    async with Leadership(StoreUrl("postgresql", dsn=dsn)) as standby:
        waiting = asyncio.create_task(standby.acquire())
        await asyncio.sleep(0.5)
        killed = time.monotonic()
        child.send_signal(signal.SIGKILL)
        await waiting
        took = time.monotonic() - killed
    child.wait()
    return took


def _line(name: str, times: list[float]) -> str:
    return f"  {name}: median {statistics.median(times):.2f} s, max {max(times):.2f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--lock-only", action="store_true", help="also time the bare lock")
    args = parser.parse_args()
    os.environ["NARWHAL_API_TOKEN"] = API_TOKEN  # the daemons' admin token, and the clients'
    print(f"server {SERVER}; {args.reps} repetition(s) per case; 1 runner, 2 dispatchers")
    for case, sig in CASES.items():
        runs = []
        for n in range(args.reps):
            with tempfile.TemporaryDirectory(prefix="narwhal-takeover-") as tmp:
                runs.append(once(Path(tmp), sig))
            print(
                f"  {case} #{n + 1}: leads after {runs[-1][0]:.2f} s,"
                f" first job placed after {runs[-1][1]:.2f} s",
                flush=True,
            )
        print(f"{case}:")
        print(_line("standby leads", [r[0] for r in runs]))
        print(_line("first job placed", [r[1] for r in runs]))
    if args.lock_only:
        with fresh_schema() as url:
            assert url.dsn is not None
            times = [asyncio.run(lock_once(url.dsn)) for _ in range(5)]
        print("the lock alone (SIGKILL -> a waiting session holds it), 5 runs:")
        print(f"  median {statistics.median(times) * 1000:.1f} ms, max {max(times) * 1000:.1f} ms")


if __name__ == "__main__":
    main()
