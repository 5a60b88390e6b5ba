"""A first job that cannot run in its image says what to do about it.

The default executor is Docker when an engine answers, and a pipeline that
names no image runs in the runner's default image: a missing image, a
failed pull or a command the image lacks (exit 127) must end with the way
out (name an image in narwhal.yml, or run locally), in the job's reason or
log. Real engine, the busybox image imported by the fixture, no registry
(a pull goes to a registry address on loopback where nothing listens).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.runner.test_docker import config, run
from tests.support.docker import MISSING_IMAGE

#: What the user is told to do, word for word (README, docs/docker.md).
HINT = "set image: in narwhal.yml, or run with --executor local"


def test_missing_default_image_without_pull_says_what_to_do(
    tmp_path: Path, busybox_image: str
) -> None:
    conf = config(tmp_path, MISSING_IMAGE, docker_pull="never")
    outcome, log = run(conf, "steps:\n  - {name: test, command: python3 -V}\n", tmp_path / "ws")
    assert outcome.status == "error"
    assert f"No such image: {MISSING_IMAGE}" in outcome.reason
    assert HINT in outcome.reason, outcome.reason
    assert HINT in log.text


def test_failed_pull_says_what_to_do(tmp_path: Path, busybox_image: str) -> None:
    # Port 1 on loopback: the pull fails at once, and nothing leaves the machine.
    image = "127.0.0.1:1/narwhal-test/nothing:1"
    conf = config(tmp_path, image, docker_pull="missing", docker_pull_timeout=60.0)
    outcome, log = run(conf, "steps:\n  - {name: test, command: 'true'}\n", tmp_path / "ws")
    assert outcome.status == "error"
    assert f"pulling image {image} failed" in outcome.reason
    assert outcome.reason.endswith(HINT), outcome.reason
    assert f"pulling {image}" in log.text


def test_a_command_missing_from_the_image_says_what_to_do(
    tmp_path: Path, busybox_image: str, labelled: Any
) -> None:
    conf = config(tmp_path, busybox_image)
    outcome, log = run(
        conf,
        "steps:\n  - {name: test, command: python3 -m pytest}\n"
        f"  - {{name: named, image: {busybox_image}, command: no-such-tool}}\n",
        tmp_path / "ws",
    )
    assert outcome.status == "failed"
    assert outcome.reason == (
        "step 'test' failed with exit code 127: a command of this step is not in image"
        f" {busybox_image} (the runner's default: the step names no image); {HINT}"
    ), outcome.reason
    assert [(s.status, s.exit_code) for s in log.steps] == [("failed", 127), ("skipped", None)]
    assert "python3: not found" in log.text
    assert (
        f"narwhal: exit code 127: a command of this step is not in image {busybox_image}"
        " (the runner's default: the step names no image); " + HINT
    ) in log.text
    assert labelled(conf.runner_id) == []


def test_other_exit_codes_get_no_hint(tmp_path: Path, busybox_image: str) -> None:
    conf = config(tmp_path, busybox_image)
    outcome, log = run(conf, "steps:\n  - {name: test, command: exit 3}\n", tmp_path / "ws")
    assert outcome.status == "failed"
    assert HINT not in log.text
