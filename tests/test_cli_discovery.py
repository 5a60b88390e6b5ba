"""``--discovery`` and ``--mdns-interface``: which interfaces each daemon uses by default.

These check the config the flags turn into; one test runs a dispatcher and
a runner with default interfaces, which only ever use loopback.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path

import pytest

from narwhal.cli import build_parser, main
from narwhal.config import DiscoveryConfig
from narwhal.errors import ConfigError
from narwhal.settings import dispatcher_config, runner_config
from tests.support.daemons import Client, Daemon
from tests.support.eventually import eventually
from tests.support.keys import MeshKeys
from tests.support.repos import Repo

LOOPBACK = DiscoveryConfig(enabled=True, interfaces=("127.0.0.1",))
EVERYWHERE = DiscoveryConfig(enabled=True, interfaces=())


def runner(*argv: str) -> DiscoveryConfig:
    args = build_parser().parse_args(["runner", "--executor", "local", "--insecure", *argv])
    return runner_config(args).discovery


def dispatcher(tmp_path: Path, *argv: str, command: str = "dispatcher") -> DiscoveryConfig:
    args = build_parser().parse_args([command, "--data-dir", str(tmp_path), *argv])
    return dispatcher_config(args).discovery


def test_a_runner_announces_on_the_interface_it_listens_on() -> None:
    assert runner() == LOOPBACK  # the default --listen is tcp://127.0.0.1:8471
    assert runner("--listen", "tcp://127.0.0.5:9000") == LOOPBACK
    assert runner("--listen", "tcp://lo:9000") == LOOPBACK
    assert runner("--listen", "tcp://0.0.0.0:8471") == EVERYWHERE
    assert runner("--listen", "tcp://*:8471") == EVERYWHERE
    assert runner("--listen", "tcp://10.1.2.3:8471").interfaces == ("10.1.2.3",)
    chosen = runner(
        "--listen",
        "tcp://0.0.0.0:8471",
        "--mdns-interface",
        "10.0.0.2",
        "--mdns-interface",
        "10.0.1.2",
    )
    assert chosen.interfaces == ("10.0.0.2", "10.0.1.2")
    assert runner("--discovery", "none") == DiscoveryConfig()
    assert runner("--listen", "ipc:///tmp/narwhal-runner") == DiscoveryConfig()
    assert runner("--listen", "tcp://[::1]:8471") == DiscoveryConfig()
    with pytest.raises(ConfigError, match="--mdns-interface"):
        runner("--listen", "tcp://nosuchif0:8471")


def test_a_dispatcher_browses_loopback_unless_its_api_is_on_the_network(tmp_path: Path) -> None:
    assert dispatcher(tmp_path) == LOOPBACK
    assert dispatcher(tmp_path, "--http", "localhost:0") == LOOPBACK
    assert dispatcher(tmp_path, "--http", "0.0.0.0:0") == EVERYWHERE
    given = dispatcher(tmp_path, "--http", "0.0.0.0:0", "--mdns-interface", "10.9.8.7")
    assert given.interfaces == ("10.9.8.7",)
    assert dispatcher(tmp_path, "--discovery", "none") == DiscoveryConfig()


def test_up_neither_announces_nor_browses_unless_asked(tmp_path: Path) -> None:
    assert dispatcher(tmp_path, command="up") == DiscoveryConfig()
    assert dispatcher(tmp_path, "--discovery", "mdns", command="up") == LOOPBACK
    args = build_parser().parse_args(["up", "--executor", "local", "--discovery", "mdns"])
    assert (
        runner_config(args, listen="tcp://127.0.0.1:*", default_id="local").discovery
        == DiscoveryConfig()
    )


def test_environment_variables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NARWHAL_DISCOVERY", "none")
    assert runner() == DiscoveryConfig()
    monkeypatch.setenv("NARWHAL_DISCOVERY", "mdns")
    monkeypatch.setenv("NARWHAL_MDNS_INTERFACE", "10.0.0.2, 10.0.0.3")
    assert runner().interfaces == ("10.0.0.2", "10.0.0.3")
    assert dispatcher(tmp_path).interfaces == ("10.0.0.2", "10.0.0.3")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["runner", "--discovery", "maybe"], "--discovery: expected mdns or none"),
        (["runner", "--mdns-interface", "eth0"], "--mdns-interface: expected an IPv4 address"),
        (["dispatcher", "--mdns-interface", "::1"], "--mdns-interface: expected an IPv4 address"),
    ],
)
def test_bad_values_are_one_line_errors(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main([*argv, "--data-dir" if argv[0] == "dispatcher" else "--work-dir", str(tmp_path)]) == 2
    )
    assert message in capsys.readouterr().err


def test_default_interfaces_find_each_other_on_loopback(
    tmp_path: Path, make_repo: Callable[..., Repo]
) -> None:
    # Other runs on this machine may announce runners on loopback too: this
    # one's runner is told apart by its id, and its job by a label.
    token = f"lo-{secrets.token_hex(4)}"
    mesh = ["--discovery", "mdns", "--heartbeat-interval", "0.2"]
    keys = MeshKeys(tmp_path)
    runner = Daemon(
        ["runner", *mesh, "--listen", "tcp://127.0.0.1:0", "--id", token, "--labels", f"lo={token}"]
        + ["--executor", "local", "--work-dir", str(tmp_path / "work"), *keys.runner(token)]
    )
    dispatcher = Daemon(
        ["dispatcher", *mesh, "--http", "127.0.0.1:0", "--data-dir", str(tmp_path)]
        + keys.dispatcher()
    )
    api = Client(dispatcher.url)
    try:
        assert "mDNS discovery on 127.0.0.1" in dispatcher.announce
        eventually(
            lambda: any(
                r["id"] == token and r["state"] == "ready" and r["source"] == "mdns"
                for r in api.runners()
            ),
            timeout=15,
            what="the runner to be found on loopback",
        )
        repo = make_repo({"narwhal.yml": "steps:\n  - name: s\n    command: 'true'\n"})
        job = api.wait(api.submit(repo, labels={"lo": token}))
        assert (job["state"], job["runner_id"]) == ("success", token)
    finally:
        api.close()
        assert runner.stop() == 0
        assert dispatcher.stop() == 0
