"""A dispatcher and runners as real ``narwhal`` processes, for chaos and attack tests."""

from __future__ import annotations

import os
import signal
import sqlite3
import sys
from pathlib import Path
from typing import Any

from narwhal.mesh import protocol as p
from tests.support.daemons import Client, Daemon, dispatcher_args, runner_args, wait_for_runners
from tests.support.keys import MeshKeys
from tests.support.peers import RawRunner
from tests.support.ports import free_port

#: Fast liveness for tests: a silent peer is dead after 0.6 s.
MESH = ["--heartbeat-interval", "0.2", "--liveness", "3"]
#: The states a job ends in once it ran (a skipped job never reaches a cluster's runner).
TERMINAL = {"success", "failed", "error", "cancelled", "timed_out"}


class Cluster:
    """One dispatcher and named runners on fixed loopback ports."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.runners: dict[str, Daemon] = {}
        self.ports: dict[str, int] = {}
        self.dispatcher: Daemon | None = None
        #: Processes replaced by a restart; their pipes are closed at the end.
        self.retired: list[Daemon] = []
        self.api: Client | None = None
        self.http_port = free_port()
        #: The mesh is authenticated: every runner's key is trusted under its name.
        self.keys = MeshKeys(root)

    def start_runner(
        self,
        name: str,
        capacity: int = 1,
        *extra: str,
        keys: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> Daemon:
        """``narwhal runner`` NAME; its key is trusted as NAME unless ``keys`` gives other flags."""
        port = self.ports.setdefault(name, free_port())
        runner = Daemon(
            runner_args(
                self.root / f"work-{name}",
                *["--id", name, "--capacity", str(capacity), "--cancel-grace", "1"],
                *(keys if keys is not None else self.keys.runner(name)),
                *extra,
                listen=f"tcp://127.0.0.1:{port}",
                mesh=MESH,
            ),
            env=env,
        )
        if name in self.runners:
            self.retired.append(self.runners[name])
        self.runners[name] = runner
        return runner

    def start_dispatcher(self, *extra: str) -> Client:
        args = dispatcher_args(
            self.data,
            *self.keys.dispatcher(),
            *extra,
            runners=[f"tcp://127.0.0.1:{port}" for port in self.ports.values()],
            http=f"127.0.0.1:{self.http_port}",
            mesh=MESH,
        )
        if self.dispatcher is not None:
            self.retired.append(self.dispatcher)
        self.dispatcher = Daemon(args)
        if self.api is None:
            self.api = Client(self.dispatcher.url)
        return self.api

    def client(self) -> Client:
        assert self.api is not None
        return self.api

    def wait_ready(self, count: int) -> list[dict[str, Any]]:
        return wait_for_runners(self.client(), count, timeout=20)

    def raw_runner(self, runner_id: str) -> RawRunner:
        """A raw peer whose key this cluster's dispatcher trusts as ``runner_id``."""
        return RawRunner(self.keys, runner_id)

    def attach(self, peer: RawRunner) -> RawRunner:
        """Add a raw peer as a runner through the API; return it once HELLO came."""
        response = self.client().http.post("/api/runners", json={"url": peer.endpoint})
        assert response.status_code == 201, response.text
        assert isinstance(peer.recv(), p.Hello)
        return peer

    def health(self) -> dict[str, Any]:
        return dict(self.client().http.get("/health").json())

    def kill(self, daemon: Daemon, sig: int = signal.SIGKILL) -> None:
        daemon.proc.send_signal(sig)
        if sig == signal.SIGKILL:
            daemon.proc.wait(10)

    def job_holder(self, job_id: int) -> str:
        job = self.client().job(job_id)
        return str(job["runner_id"])

    def db(self) -> sqlite3.Connection:
        """The SQLite store, read-only: only for what the API does not show (log chunks).

        Invariants that hold for any store are checked through ``Client``
        and ``tests.support.probe`` instead.
        """
        db = sqlite3.connect(f"file:{self.data / 'narwhal.db'}?mode=ro", uri=True, timeout=10)
        db.row_factory = sqlite3.Row
        return db

    def close(self) -> None:
        if self.api is not None:
            self.api.close()
        dispatcher = self.dispatcher
        if dispatcher is not None and dispatcher.proc.poll() is not None:
            # It died under the test (no one stopped it yet): say how, in the
            # failure report, instead of leaving only "connection refused".
            tail = "".join(dispatcher.stderr_lines[-40:])
            print(f"dispatcher exited {dispatcher.proc.returncode}:\n{tail}", file=sys.stderr)
        for daemon in [*self.runners.values(), self.dispatcher, *self.retired]:
            if daemon is not None:
                if daemon.proc.poll() is None:
                    os.kill(daemon.proc.pid, signal.SIGCONT)
                daemon.stop()
