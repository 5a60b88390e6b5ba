"""What a Docker runner reports of its engine, and whose fault an engine's error is.

Against the real engine; nothing is pulled (``--pull never``), containers
have no network.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

from narwhal.mesh import protocol as p
from narwhal.runner.docker import DockerExecutor
from narwhal.runner.secret_env import SecretsExecutor
from narwhal.runner.state import engine_of
from tests.runner.test_docker import config, run
from tests.runner.test_runner_state import MESH, connected
from tests.support.docker import MISSING_IMAGE


def test_the_engine_answers_and_lists_its_images(tmp_path: Path, busybox_image: str) -> None:
    docker = DockerExecutor(config(tmp_path, busybox_image))
    try:
        assert engine_of(SecretsExecutor(docker, {})) is docker
        assert docker.answers()
        tags = docker.image_tags(p.MAX_IMAGES)
        assert busybox_image in tags and len(tags) == len(set(tags)) <= p.MAX_IMAGES
        assert len(docker.image_tags(1)) == 1
    finally:
        asyncio.run(docker.aclose())


def test_an_engine_that_does_not_answer_reports_nothing(tmp_path: Path, busybox_image: str) -> None:
    dead = DockerExecutor(
        config(tmp_path, busybox_image, docker_host=f"unix://{tmp_path}/no-engine.sock")
    )
    assert not dead.answers()
    assert dead.image_tags(p.MAX_IMAGES) == ()


def test_a_docker_runner_reports_its_engine_in_ready(tmp_path: Path, busybox_image: str) -> None:
    conf = replace(
        config(tmp_path, busybox_image),
        executor="docker",
        listen="tcp://127.0.0.1:0",
        mesh=MESH,
        allow_local_repos=True,
    )

    async def scenario() -> p.Ready:
        async with connected(conf) as (_, ready):
            return ready

    state = asyncio.run(scenario()).state
    assert state is not None and state.docker
    assert busybox_image in state.images


def test_an_engine_down_is_the_engines_fault_a_missing_image_the_jobs(
    tmp_path: Path, busybox_image: str
) -> None:
    dead = config(tmp_path, busybox_image, docker_host=f"unix://{tmp_path}/no-engine.sock")
    outcome, _ = run(dead, "steps: [{name: a, command: 'true'}]", tmp_path / "ws1")
    assert (outcome.status, outcome.fault) == ("error", "engine")
    # An image that is not there (and is not pulled) is the job's mistake.
    alive = config(tmp_path, busybox_image)
    missing = f"steps: [{{name: a, image: {MISSING_IMAGE}, command: 'true'}}]"
    outcome, _ = run(alive, missing, tmp_path / "ws2")
    assert (outcome.status, outcome.fault) == ("error", "")
    outcome, _ = run(alive, "steps: [{name: a, command: 'exit 1'}]", tmp_path / "ws3")
    assert (outcome.status, outcome.fault) == ("failed", "")
