"""What each command loads, and where its defaults and vocabularies come from.

The import checks run in a fresh interpreter: this one has loaded every
module some other test needed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from narwhal.agent.webhooks import READERS
from narwhal.cli import build_parser
from narwhal.config import (
    AgentConfig,
    AmqpConfig,
    DispatcherConfig,
    MeshConfig,
    RunnerConfig,
    WebhookConfig,
)
from narwhal.daemons.executors import pick_executor, resolved
from narwhal.forges import FORGE_APIS, FORGES
from narwhal.runner.executor import LocalExecutor
from narwhal.runner.runner import executor_for
from narwhal.runner.secret_env import SecretsExecutor
from narwhal.settings import (
    SECRET_VARIABLES,
    agent_config,
    default_of,
    dispatcher_config,
    runner_config,
)


def loaded_after(code: str) -> set[str]:
    """The modules a fresh interpreter has loaded once ``code`` ran."""
    script = f"{code}\nimport sys\nprint('\\n'.join(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    return set(done.stdout.split())


def docker_modules(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m == "docker" or m.startswith("docker."))


def test_the_cli_and_its_flags_load_no_docker_sdk(tmp_path: Path) -> None:
    modules = loaded_after(
        "import narwhal.cli\n"
        "from narwhal.cli import build_parser\n"
        "from narwhal.settings import runner_config\n"
        "args = build_parser().parse_args(['runner', '--executor', 'local', '--insecure',"
        f" '--work-dir', {str(tmp_path)!r}])\n"
        "assert runner_config(args).executor == 'local'\n"
    )
    assert "narwhal.cli" in modules
    assert docker_modules(modules) == []


def test_reading_auto_asks_no_docker_engine(tmp_path: Path) -> None:
    # auto stays auto until the runner starts: no probe, no SDK, while flags are read.
    modules = loaded_after(
        "from narwhal.cli import build_parser\n"
        "from narwhal.settings import runner_config\n"
        "args = build_parser().parse_args(['runner', '--executor', 'auto', '--insecure',"
        f" '--work-dir', {str(tmp_path)!r}])\n"
        "assert runner_config(args).executor == 'auto'\n"
    )
    assert docker_modules(modules) == []


def test_a_local_runner_loads_no_docker_sdk(tmp_path: Path) -> None:
    modules = loaded_after(
        "import narwhal.daemons.runner\n"
        "from narwhal.config import RunnerConfig\n"
        "from narwhal.runner.runner import executor_for\n"
        f"executor_for(RunnerConfig(runner_id='r', work_dir=__import__('pathlib').Path({str(tmp_path)!r})))\n"  # noqa: E501
    )
    assert "narwhal.runner.runner" in modules
    assert docker_modules(modules) == []


def test_the_docker_executor_is_loaded_when_chosen() -> None:
    modules = loaded_after(
        "from narwhal.config import RunnerConfig\n"
        "from narwhal.runner.runner import executor_for\n"
        "executor_for(RunnerConfig(runner_id='r', executor='docker'))\n"
    )
    assert "narwhal.runner.docker" in modules
    assert "docker" in modules


def test_the_agent_loads_neither_pyzmq_nor_the_dispatcher_nor_the_runner() -> None:
    modules = loaded_after("import narwhal.daemons.agent")
    assert "narwhal.agent.server" in modules
    bad = sorted(m for m in modules if m.split(".")[0] == "zmq" or _daemon_but_agent(m))
    assert bad == []
    assert docker_modules(modules) == []
    # What ``narwhal agent`` runs: the CLI's flag parsing names a runner id
    # (narwhal.runner.identity), but loads no pyzmq and no dispatcher.
    modules = loaded_after(
        "import narwhal.cli, narwhal.cli.daemon, narwhal.daemons.agent\n"
        "narwhal.cli.build_parser().parse_args(['agent'])"
    )
    bad = sorted(m for m in modules if m.split(".")[0] in ("zmq", "docker"))
    assert bad == []
    assert not any(m.startswith(("narwhal.dispatcher", "narwhal.mesh")) for m in modules)


def _daemon_but_agent(module: str) -> bool:
    return module.startswith(("narwhal.dispatcher", "narwhal.runner", "narwhal.mesh"))


def test_pick_executor_local_asks_nothing_and_resolved_keeps_a_settled_choice() -> None:
    assert pick_executor("local", "unix:///nonexistent/docker.sock") == "local"
    conf = RunnerConfig(runner_id="r", executor="local")
    assert asyncio.run(resolved(conf)) == conf
    # docker is kept when asked for, even with no engine (its jobs end in error).
    docker = RunnerConfig(runner_id="r", executor="docker", docker_host="unix:///nonexistent.sock")
    assert asyncio.run(resolved(docker)).executor == "docker"
    auto = dataclasses.replace(docker, executor="auto")
    assert asyncio.run(resolved(auto)).executor == "local"


def test_executor_for_local_is_the_local_executor_wrapped_with_the_secrets() -> None:
    executor = executor_for(RunnerConfig(runner_id="r", secrets={"TOKEN": "s3cret-value"}))
    assert isinstance(executor, SecretsExecutor)
    assert isinstance(executor.inner, LocalExecutor)


# defaults: the config classes are their one home


def test_default_of_reads_field_defaults() -> None:
    assert default_of(RunnerConfig, "cancel_grace") == "10"
    assert default_of(MeshConfig, "heartbeat_interval") == "1"
    assert default_of(RunnerConfig, "max_pids") == "4096"
    assert default_of(AmqpConfig, "queue") == "narwhal.commits"
    assert default_of(RunnerConfig, "work_dir") == str(RunnerConfig(runner_id="r").work_dir)
    with pytest.raises(LookupError):
        default_of(RunnerConfig, "runner_id")  # required: no default
    with pytest.raises(LookupError):
        default_of(RunnerConfig, "no_such_field")


def test_runner_flags_default_to_the_config_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("CANCEL_GRACE", "DRAIN_TIMEOUT", "IMAGE", "NETWORK", "PULL", "PULL_TIMEOUT"):
        monkeypatch.delenv(f"NARWHAL_{name}", raising=False)
    monkeypatch.delenv("NARWHAL_MAX_PIDS", raising=False)
    monkeypatch.delenv("NARWHAL_LISTEN", raising=False)
    args = build_parser().parse_args(
        ["runner", "--executor", "local", "--insecure", "--work-dir", str(tmp_path), "--id", "r"]
    )
    conf = runner_config(args)
    default = RunnerConfig(runner_id="r")
    for field in (
        "listen",
        "cancel_grace",
        "drain_timeout",
        "mesh",
        "docker_image",
        "docker_network",
        "docker_pull",
        "docker_pull_timeout",
        "max_pids",
        "max_memory",
        "max_cpus",
    ):
        assert getattr(conf, field) == getattr(default, field), field
    exe = build_parser().parse_args(["exec"])
    assert float(exe.cancel_grace) == default.cancel_grace


def test_dispatcher_and_agent_flags_default_to_the_config_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("HTTP", "AGENT_HTTP", "MAX_ATTEMPTS", "MAX_RUNNER_CAPACITY", "AMQP_QUEUE"):
        monkeypatch.delenv(f"NARWHAL_{name}", raising=False)
    for name in ("AMQP_PREFETCH", "AMQP_CONFIRM_TIMEOUT", "AMQP_RECONNECT"):
        monkeypatch.delenv(f"NARWHAL_{name}", raising=False)
    amqp = tmp_path / "amqp"
    amqp.write_text("amqp://u:p@127.0.0.1:5672/")
    argv = ["--insecure", "--amqp-file", str(amqp), "--data-dir", str(tmp_path)]
    conf = dispatcher_config(build_parser().parse_args(["dispatcher", *argv]))
    default = DispatcherConfig(data_dir=tmp_path)
    for field in ("http_host", "http_port", "max_attempts", "max_runner_capacity", "mesh"):
        assert getattr(conf, field) == getattr(default, field), field
    assert conf.amqp == AmqpConfig(url="amqp://u:p@127.0.0.1:5672/")
    secret = tmp_path / "secret"
    secret.write_text("a-webhook-secret")
    agent = agent_config(
        build_parser().parse_args(
            ["agent", "--amqp-file", str(amqp), "--github-secret-file", str(secret)]
        )
    )
    assert (agent.http_host, agent.http_port) == (
        AgentConfig.__dataclass_fields__["http_host"].default,
        AgentConfig.__dataclass_fields__["http_port"].default,
    )
    client = build_parser().parse_args(["runners"])
    assert client.server == f"http://{default.http_host}:{default.http_port}"


# the forge list: one home


def test_every_forge_has_a_webhook_reader_flags_and_secret_variables() -> None:
    assert tuple(READERS) == FORGES
    assert set(FORGE_APIS) <= set(FORGES)
    for forge in FORGES:
        assert f"NARWHAL_{forge.upper()}_SECRET" in SECRET_VARIABLES
        assert f"NARWHAL_{forge.upper()}_TOKEN" in SECRET_VARIABLES
        args = build_parser().parse_args(["dispatcher", f"--{forge}-api", "https://x.example"])
        assert getattr(args, f"{forge}_api") == "https://x.example"


def test_webhook_config_names_the_forges_it_serves() -> None:
    hooks = WebhookConfig(gitlab_secret="s1", github_secret="s2")
    assert hooks.forges() == ("github", "gitlab")
    assert hooks.secret("gitlab") == "s1"
    assert hooks.secret("gitea") is None
    assert hooks.secret("bitbucket") is None
