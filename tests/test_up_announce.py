"""``narwhal up`` says how its runner runs steps, and a first job that cannot
run in the default image says what to do (real ``narwhal up``, real engine)."""

from __future__ import annotations

from collections.abc import Callable

from tests.support.daemons import Client, Daemon
from tests.support.repos import Repo

#: What the user is told to do, word for word (README, docs/docker.md).
HINT = "set image: in narwhal.yml, or run with --executor local"
Up = Callable[..., tuple[Daemon, Client]]
MakeRepo = Callable[..., Repo]
MISSING = "narwhal-test/no-such-default:404"


def test_announce_line_names_the_local_executor(narwhal_up: Up) -> None:
    daemon, _ = narwhal_up("--executor", "local")
    assert "API on http://" in daemon.announce
    assert "executor local" in daemon.announce, daemon.announce


def test_docker_without_the_default_image_names_it_and_the_way_out(
    narwhal_up: Up, make_repo: MakeRepo
) -> None:
    daemon, api = narwhal_up("--executor", "docker", "--pull", "never", "--image", MISSING)
    assert f"executor docker (steps without image: run in {MISSING}" in daemon.announce
    assert "images never pulled" in daemon.announce, daemon.announce
    repo = make_repo({"narwhal.yml": "steps:\n  - {name: test, command: python3 -V}\n"})
    job = api.wait(api.submit(repo))
    assert job["state"] == "error", job
    assert MISSING in job["reason"] and job["reason"].endswith(HINT), job["reason"]
    assert HINT in api.log(job["id"])
