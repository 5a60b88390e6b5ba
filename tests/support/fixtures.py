"""The fixtures every test may ask for by name (a pytest plugin, loaded by tests/conftest.py).

Each fixture exists once: a module that needs a variant (a cluster started
with other flags, say) asks for the shared one and configures it, instead
of building its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.cluster import Cluster
from tests.support.daemons import API_TOKEN, Client, Daemon, wait_for_runners
from tests.support.repos import Repo


@pytest.fixture(autouse=True)
def api_token(monkeypatch: pytest.MonkeyPatch) -> str:
    """Daemons accept, and clients (also the ``narwhal`` CLI) send, ``API_TOKEN``."""
    monkeypatch.setenv("NARWHAL_API_TOKEN", API_TOKEN)
    return API_TOKEN


@pytest.fixture
def make_repo(tmp_path: Path) -> Callable[..., Repo]:
    """Make git repositories under ``tmp_path``, with an initial commit of ``files``."""
    counter = iter(range(1000))

    def make(files: dict[str, str] | None = None) -> Repo:
        repo = Repo(tmp_path / f"repo{next(counter)}")
        if files:
            repo.commit(files, "initial")
        return repo

    return make


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A dispatcher and named runners as real processes (``tests.support.cluster``)."""
    started = Cluster(tmp_path)
    try:
        yield started
    finally:
        started.close()


@pytest.fixture
def narwhal_up(tmp_path: Path) -> Iterator[Callable[..., tuple[Daemon, Client]]]:
    """Start ``narwhal up`` on free ports with its own data and work dirs."""
    started: list[tuple[Daemon, Client]] = []

    def start(*extra: str) -> tuple[Daemon, Client]:
        n = len(started)
        daemon = Daemon(
            [
                "up",
                "--http",
                "127.0.0.1:0",
                "--data-dir",
                str(tmp_path / f"data{n}"),
                "--work-dir",
                str(tmp_path / f"work{n}"),
                "--heartbeat-interval",
                "0.2",
                "--cancel-grace",
                "2",
                *extra,
            ]
        )
        client = Client(daemon.url)
        wait_for_runners(client, 1)
        started.append((daemon, client))
        return daemon, client

    yield start
    for daemon, client in started:
        client.close()
        daemon.stop()


# The Docker SDK is imported by the fixtures that use it, not by every test run.


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[Any]:
    """A client of the real engine; a missing engine fails the test, never skips it."""
    from tests.support import docker

    client = docker.engine()
    yield client
    client.close()


@pytest.fixture
def docker_client(docker_engine: Any) -> Iterator[Any]:
    """The engine's client, its pooled connections dropped after the test.

    The SDK keeps connections to the engine open for the next request; drop
    them, so that what a test leaves open is the test's own (``leaks``).
    """
    yield docker_engine
    docker_engine.close()  # only the pools: the next request opens a new connection


@pytest.fixture(scope="session")
def busybox_image(docker_engine: Any) -> str:
    """narwhal-test/busybox, imported once per machine (kept: importing again is a no-op)."""
    from tests.support import docker

    image = docker.ensure_busybox(docker_engine)
    docker_engine.close()  # its connections were opened outside any test's leak check
    return image


@pytest.fixture
def labelled(docker_client: Any) -> Callable[[str], list[str]]:
    """What the engine holds with a given runner label: containers and networks."""
    from tests.support import docker

    return lambda runner_id: docker.labelled(docker_client, runner_id)
