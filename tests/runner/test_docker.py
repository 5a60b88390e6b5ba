"""The Docker executor against a real engine: workspace, env, secrets, limits,
timeouts and cancel, services, cleanup, engine errors and ``narwhal exec``.

Containers use network ``none`` or a per-job internal network: nothing here
leaves the machine, and no image is ever pulled.
"""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

from narwhal.config import RunnerConfig
from narwhal.mesh.protocol import StepOutcome
from narwhal.pipeline import Step, load
from narwhal.runner.docker import DockerExecutor
from narwhal.runner.docker_engine import LABEL_HOST, LABEL_PID, LABEL_RUNNER
from narwhal.runner.executor import Stop
from narwhal.runner.job import Context, Outcome, run_pipeline
from narwhal.runner.masking import Masker
from narwhal.runner.secret_env import SecretsExecutor
from tests.support.docker import MISSING_IMAGE

SECRET = "hunter2-Sup3r-s3cret"


class Collect:
    """A reporter that keeps the (masked) log and the step outcomes."""

    def __init__(self, secrets: list[str]) -> None:
        self.masker = Masker(secrets)
        self.log = bytearray()
        self.steps: list[StepOutcome] = []
        self.first_output = asyncio.Event()

    async def step_started(self, index: int, step: Step) -> None:
        pass

    async def output(self, data: bytes) -> None:
        self.log += self.masker.feed(data)
        self.first_output.set()

    async def step_finished(self, outcome: StepOutcome) -> None:
        self.steps.append(outcome)

    @property
    def text(self) -> str:
        return bytes(self.log + self.masker.flush()).decode(errors="replace")


def config(tmp_path: Path, image: str, **extra: Any) -> RunnerConfig:
    base = RunnerConfig(
        runner_id=f"test-{uuid.uuid4().hex[:8]}",
        work_dir=tmp_path / "work",
        cancel_grace=1.0,
        docker_image=image,
        docker_network="none",
        docker_pull="never",
    )
    return replace(base, **extra)


def run(
    conf: RunnerConfig,
    text: str,
    workspace: Path,
    *,
    secrets: dict[str, str] | None = None,
    cancel_after: float | None = None,
) -> tuple[Outcome, Collect]:
    pipeline = load(text).pipeline()
    workspace.mkdir(parents=True, exist_ok=True)
    reporter = Collect(list((secrets or {}).values()))
    stop = Stop()

    async def cancel() -> None:
        assert cancel_after is not None
        await reporter.first_output.wait()
        await asyncio.sleep(cancel_after)
        stop.set("cancelled", "cancelled by test")

    async def main() -> Outcome:
        # As the runner does: no connection up front, so a dead engine fails the job.
        docker = DockerExecutor(conf)
        canceller = asyncio.create_task(cancel()) if cancel_after is not None else None
        try:
            return await run_pipeline(
                pipeline,
                workspace=workspace,
                executor=SecretsExecutor(docker, secrets or {}),
                reporter=reporter,
                stop=stop,
                context=Context(branch="main", event="push", sha="0" * 40, job_id=7),
            )
        finally:
            if canceller is not None:
                canceller.cancel()
            await docker.aclose()

    return asyncio.run(main()), reporter


def test_steps_share_the_workspace_and_report_output_in_order(
    tmp_path: Path, busybox_image: str, labelled: Any
) -> None:
    conf = config(tmp_path, busybox_image)
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "checkout.txt").write_text("from git\n")
    outcome, log = run(
        conf,
        """
        env: {GREETING: hi}
        steps:
          - name: write
            commands:
              - pwd
              - cat checkout.txt
              - echo "$GREETING $NARWHAL_BRANCH" > shared.txt
              - echo to-stderr >&2
              - echo to-stdout
          - name: read
            command: cat shared.txt
          - name: fail
            command: exit 3
          - name: never
            command: echo never
        """,
        workspace,
    )
    assert outcome.status == "failed", log.text
    assert [(s.status, s.exit_code) for s in log.steps] == [
        ("success", 0),
        ("success", 0),
        ("failed", 3),
        ("skipped", None),
    ]
    text = log.text
    assert "+ pwd\n/workspace\n+ cat checkout.txt\nfrom git\n" in text
    assert "to-stderr\n+ echo to-stdout\nto-stdout\n" in text
    assert "+ cat shared.txt\nhi main\n" in text
    assert "never\n" not in text.replace("echo never", "")
    assert (workspace / "shared.txt").read_text() == "hi main\n"
    assert labelled(conf.runner_id) == []


def test_secrets_reach_steps_and_never_the_log(tmp_path: Path, busybox_image: str) -> None:
    conf = config(tmp_path, busybox_image)
    b64 = base64.b64encode(f"user:{SECRET}".encode()).decode()
    outcome, log = run(
        conf,
        """
        steps:
          - name: leak
            commands:
              - echo "plain $TOKEN"
              - printf 'user:%s' "$TOKEN" | base64
              - printf '%s' "$TOKEN" | head -c 7; sleep 0.3; printf '%s\\n' "$TOKEN" | tail -c +8
              - echo "len=${#TOKEN}"
        """,
        tmp_path / "ws",
        secrets={"TOKEN": SECRET},
    )
    assert outcome.status == "success", log.text
    text = log.text
    assert SECRET not in text and b64 not in text and SECRET[:7] + SECRET[7:] not in text
    assert "plain ********" in text
    assert f"len={len(SECRET)}" in text  # the step saw the real value


def test_limits_isolation_and_labels(
    tmp_path: Path, busybox_image: str, docker_client: Any
) -> None:
    conf = config(tmp_path, busybox_image, max_memory=256 << 20, max_cpus=1.0, max_pids=100)
    seen: list[dict[str, Any]] = []

    class Inspect(Collect):
        async def output(self, data: bytes) -> None:
            await super().output(data)
            if b"inspect-me" in data and not seen:
                found = await asyncio.to_thread(
                    docker_client.containers.list,
                    filters={"label": f"{LABEL_RUNNER}={conf.runner_id}"},
                )
                seen.extend(c.attrs for c in found)

    pipeline = load("""
resources: {memory: 1g, pids: 50}
steps:
  - name: s
    commands: ['echo inspect-me', 'sleep 1', 'test ! -e /var/run/docker.sock']
""").pipeline()

    async def main() -> Outcome:
        async with DockerExecutor(conf) as docker:
            return await run_pipeline(
                pipeline,
                workspace=tmp_path,
                executor=docker,
                reporter=Inspect([]),
                stop=Stop(),
                context=Context(branch="main", event="push", sha="0" * 40),
            )

    assert asyncio.run(main()).status == "success"
    (attrs,) = seen
    host = attrs["HostConfig"]
    assert host["Privileged"] is False and host["NetworkMode"] == "none"
    assert host["Memory"] == 256 << 20  # 1g asked, the runner allows 256m
    assert host["PidsLimit"] == 50 and host["NanoCpus"] == 10**9
    assert "no-new-privileges" in host["SecurityOpt"]
    assert not any("docker.sock" in bind for bind in host["Binds"])
    labels = attrs["Config"]["Labels"]
    assert labels[LABEL_RUNNER] == conf.runner_id and labels["narwhal.job"] == "exec"


def test_a_step_over_its_memory_limit_is_killed(tmp_path: Path, busybox_image: str) -> None:
    conf = config(tmp_path, busybox_image)
    outcome, log = run(
        conf,
        """
        steps:
          - name: hog
            command: x=$(head -c 100000000 /dev/zero | tr '\\0' a); echo survived
            resources: {memory: 16m}
        """,
        tmp_path / "ws",
    )
    assert outcome.status == "failed"
    assert log.steps[0].exit_code == 137
    assert "out of memory (limit of 16 MiB)" in log.text
    assert "\nsurvived\n" not in log.text


def test_timeout_stops_and_removes_the_container(
    tmp_path: Path, busybox_image: str, labelled: Any
) -> None:
    conf = config(tmp_path, busybox_image)
    started = time.monotonic()
    outcome, log = run(
        conf,
        """
        steps:
          - name: slow
            commands: ['echo started', 'sleep 300']
            timeout: 2s
        """,
        tmp_path / "ws",
    )
    assert outcome.status == "timed_out", log.text
    assert log.steps[0].status == "timed_out"
    assert time.monotonic() - started < 15
    assert labelled(conf.runner_id) == []


def test_cancel_sigterm_then_kill_after_the_grace(
    tmp_path: Path, busybox_image: str, labelled: Any
) -> None:
    conf = config(tmp_path, busybox_image, cancel_grace=1.0)
    started = time.monotonic()
    outcome, log = run(
        conf,
        """
        steps:
          - name: stubborn
            commands: ["trap 'echo got TERM' TERM; echo ready; while :; do sleep 0.1; done"]
          - name: after
            command: echo never
        """,
        tmp_path / "ws",
        cancel_after=0.2,
    )
    assert outcome.status == "cancelled" and outcome.reason == "cancelled by test"
    assert [s.status for s in log.steps] == ["cancelled", "skipped"]
    assert "got TERM" in log.text  # SIGTERM first; the trap ignored it, so SIGKILL
    assert time.monotonic() - started < 15
    assert labelled(conf.runner_id) == []


def test_services_are_reachable_by_name_and_removed(
    tmp_path: Path, busybox_image: str, labelled: Any
) -> None:
    conf = config(tmp_path, busybox_image)
    outcome, log = run(
        conf,
        f"""
        services:
          - name: web
            image: {busybox_image}
            env: {{BODY: served-by-web}}
            command: [sh, -c, 'mkdir /www; echo "$BODY" > /www/index.html; httpd -f -p 80 -h /www']
        steps:
          - name: fetch
            commands:
              - for i in $(seq 50); do wget -qO- http://web/ && exit 0; sleep 0.1; done; exit 1
        """,
        tmp_path / "ws",
    )
    assert outcome.status == "success", log.text
    assert "served-by-web" in log.text
    assert labelled(conf.runner_id) == []


def test_missing_image_ends_the_job_in_error(
    tmp_path: Path, busybox_image: str, labelled: Any
) -> None:
    conf = config(tmp_path, busybox_image)
    outcome, log = run(
        conf,
        "steps:\n  - {name: a, command: 'true'}\n"
        f"  - {{name: b, image: {MISSING_IMAGE}, command: 'true'}}\n",
        tmp_path / "ws",
    )
    assert outcome.status == "error"
    assert "No such image: " + MISSING_IMAGE in outcome.reason
    assert "does not pull" in outcome.reason
    assert [s.status for s in log.steps] == ["skipped", "skipped"]
    assert labelled(conf.runner_id) == []


def test_dependencies_without_a_package_manager_are_an_error(
    tmp_path: Path, busybox_image: str
) -> None:
    conf = config(tmp_path, busybox_image)
    outcome, log = run(
        conf,
        """
        steps:
          - {name: present, command: 'true', dependencies: [wget, sed]}
          - {name: build, command: make, dependencies: [sed, make]}
        """,
        tmp_path / "ws",
    )
    assert [s.status for s in log.steps] == ["success", "error"]
    assert outcome.status == "error"
    assert "'build'" in outcome.reason and "dependency make not found" in outcome.reason
    assert "apk, apt-get, dnf" in outcome.reason


def test_engine_down_is_an_error_and_the_executor_recovers(
    tmp_path: Path, busybox_image: str
) -> None:
    dead = config(tmp_path, busybox_image, docker_host=f"unix://{tmp_path}/no-engine.sock")
    outcome, _ = run(dead, "steps: [{name: a, command: 'true'}]", tmp_path / "ws")
    assert outcome.status == "error"
    assert outcome.reason.startswith("docker engine not reachable:")
    assert DockerExecutor(dead).reap(tmp_path) == 0  # logged, not raised: the runner starts
    alive = config(tmp_path, busybox_image)
    outcome, _ = run(alive, "steps: [{name: a, command: 'true'}]", tmp_path / "ws")
    assert outcome.status == "success"


def test_reap_removes_leftovers_of_a_dead_runner(
    tmp_path: Path, busybox_image: str, docker_client: Any, labelled: Any
) -> None:
    conf = config(tmp_path, busybox_image)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    gone_pid = dead.stdout.strip()
    labels = {LABEL_RUNNER: conf.runner_id, LABEL_HOST: os.uname().nodename, LABEL_PID: gone_pid}
    alive = {**labels, LABEL_PID: str(os.getpid()), "narwhal.instance": "other"}
    docker_client.containers.create(busybox_image, ["true"], labels=labels, network_mode="none")
    docker_client.networks.create(f"{conf.runner_id}-left", labels=labels, internal=True)
    kept = docker_client.containers.create(busybox_image, ["true"], labels=alive)
    workspace = tmp_path / "job-1-1-abcd"
    workspace.mkdir()
    try:
        assert DockerExecutor(conf).reap(tmp_path) == 2
        assert labelled(conf.runner_id) == [kept.name]
        assert not workspace.exists()
    finally:
        kept.remove(force=True)


def test_narwhal_exec_with_the_docker_executor(
    tmp_path: Path, busybox_image: str, labelled: Any
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "data.txt").write_text("3\n")
    (repo / "narwhal.yml").write_text("""\
name: sample
steps:
  - name: count
    commands:
      - echo "$(cat data.txt) lines" > out.txt
      - cat out.txt
      - echo "token=$TOKEN"
  - name: check
    command: test -f out.txt
""")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "narwhal",
            "exec",
            str(repo),
            "--executor",
            "docker",
            "--image",
            busybox_image,
            "--network",
            "none",
            "--pull",
            "never",
            "--secret",
            "TOKEN",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "TOKEN": SECRET},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "3 lines\n" in done.stdout and "token=********\n" in done.stdout
    assert SECRET not in done.stdout + done.stderr
    assert "sample: success" in done.stderr
    assert not (repo / "out.txt").exists()
    assert labelled("exec") == []


def test_secret_flags_fail_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "narwhal.yml").write_text("steps: [{name: a, command: 'true'}]\n")
    secrets_file = tmp_path / "secrets"
    cases = [
        (["--secret", "NARWHAL_TEST_UNSET"], "--secret NARWHAL_TEST_UNSET: no environment"),
        (["--secrets-file", str(secrets_file)], f"{secrets_file}:2: expected NAME=VALUE"),
        (["--secrets-file", str(tmp_path / "nope")], "--secrets-file"),
        (["--network", "host"], "--network: expected bridge or none"),
        (["--max-memory", "lots"], "--max-memory: expected a size like 512m or 2g"),
    ]
    secrets_file.write_text("# comment\nnot a pair\n")
    for flags, message in cases:
        done = subprocess.run(
            [sys.executable, "-m", "narwhal", "exec", str(tmp_path), *flags],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert done.returncode == 2, (flags, done.stderr)
        assert done.stderr.count("\n") == 1 and message in done.stderr, (flags, done.stderr)


def test_secrets_file_reaches_local_steps_masked(tmp_path: Path) -> None:
    (tmp_path / "narwhal.yml").write_text("steps: [{name: a, command: 'echo \"k=$API_KEY\"'}]\n")
    secrets_file = tmp_path / "secrets"
    secrets_file.write_text(f"# for tests\n\nAPI_KEY={SECRET}\n")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "narwhal",
            "exec",
            str(tmp_path),
            "--secrets-file",
            str(secrets_file),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "k=********\n" in done.stdout and SECRET not in done.stdout


def test_pull_progress_lines_skip_ticks() -> None:
    from narwhal.runner.docker_pull import progress_line

    assert progress_line("a:1", {"status": "Pulling from library/a", "id": "1"}) == (
        "pull a:1: 1: Pulling from library/a\n"
    )
    tick = {"status": "Downloading", "id": "f00", "progressDetail": {"current": 1, "total": 9}}
    assert progress_line("a:1", tick) is None
    assert (
        progress_line("a:1", {"status": "Digest: sha256:abc"}) == "pull a:1: Digest: sha256:abc\n"
    )
    assert progress_line("a:1", {"error": "denied"}) is None


def test_executor_for_picks_and_closes(tmp_path: Path, busybox_image: str) -> None:
    from narwhal.runner.executor import LocalExecutor
    from narwhal.runner.runner import executor_for

    local = executor_for(RunnerConfig(runner_id="x", secrets={"A": "aaaa"}))
    assert isinstance(local.inner, LocalExecutor)
    wrapped = executor_for(config(tmp_path, busybox_image, executor="docker"))
    assert isinstance(wrapped.inner, DockerExecutor)
    assert wrapped.reap(tmp_path) == 0
    asyncio.run(wrapped.aclose())
