"""Flags, environment variables and secret files of the agent and the AMQP/status options."""

from __future__ import annotations

from pathlib import Path

import pytest

from narwhal.cli import build_parser, main
from narwhal.settings import agent_config, dispatcher_config

HERE = __file__  # a file that exists and is not empty


def test_agent_config_from_flags_env_and_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret_file = tmp_path / "gitea.secret"
    secret_file.write_text("from-a-file\n")
    (tmp_path / "github.secret").write_text("from-another-file")
    monkeypatch.setenv("NARWHAL_GITLAB_SECRET", "from-the-env")
    monkeypatch.setenv("NARWHAL_GITHUB_SECRET", "the-file-flag-wins")
    (tmp_path / "amqp").write_text("amqp://u:p@127.0.0.1/\n")
    args = build_parser().parse_args(
        [
            "agent",
            "--http",
            "0.0.0.0:9000",
            "--amqp-file",
            str(tmp_path / "amqp"),
            "--amqp-queue",
            "ci.commits",
            "--github-secret-file",
            str(tmp_path / "github.secret"),
            "--gitea-secret-file",
            str(secret_file),
        ]
    )
    conf = agent_config(args)
    assert (conf.http_host, conf.http_port) == ("0.0.0.0", 9000)
    assert (conf.amqp.url, conf.amqp.queue) == ("amqp://u:p@127.0.0.1/", "ci.commits")
    assert conf.webhooks.github_secret == "from-another-file"
    assert conf.webhooks.gitea_secret == "from-a-file"
    assert conf.webhooks.gitlab_secret == "from-the-env"


def test_dispatcher_status_and_amqp_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NARWHAL_GITEA_TOKEN", "gt")
    monkeypatch.setenv("NARWHAL_AMQP", "amqp://guest:guest@127.0.0.1/")
    monkeypatch.setenv("NARWHAL_GITHUB_SECRET", "s")
    token_file = tmp_path / "token"
    token_file.write_text("ghp_secret\n")
    args = build_parser().parse_args(
        [
            "up",
            "--data-dir",
            str(tmp_path),
            "--amqp-prefetch",
            "7",
            "--github-token-file",
            str(token_file),
            "--gitea-api",
            "https://gitea.example/api/v1/",
            "--public-url",
            "https://ci.example",
        ]
    )
    conf = dispatcher_config(args)
    assert conf.amqp is not None and conf.amqp.prefetch == 7
    assert conf.amqp.url == "amqp://guest:guest@127.0.0.1/"
    assert conf.webhooks is not None and conf.webhooks.github_secret == "s"
    assert [(a.forge, a.url, a.token) for a in conf.status.forges] == [
        ("github", "https://api.github.com", "ghp_secret"),
        ("gitea", "https://gitea.example/api/v1", "gt"),
    ]
    assert conf.status.public_url == "https://ci.example"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["agent", "--github-secret-file", HERE], "needs --amqp"),
        (["agent", "--amqp", "amqp://127.0.0.1/"], "at least one webhook secret"),
        (["agent", "--amqp", "amqp://u:pw@127.0.0.1/"], "--amqp-file PATH or NARWHAL_AMQP"),
        (["agent", "--amqp-file", "/nonexistent/amqp"], "--amqp-file /nonexistent/amqp"),
        (
            ["agent", "--amqp", "http://127.0.0.1/", "--github-secret-file", HERE],
            "--amqp: expected",
        ),
        (
            ["agent", "--amqp", "amqp://x/", "--github-secret-file", "/nonexistent/secret"],
            "cannot read it",
        ),
        (["dispatcher", "--gitea-token-file", HERE], "a gitea token needs --gitea-api"),
        (["dispatcher", "--github-token-file", HERE, "--github-api", "ftp://x"], "--github-api"),
        (["dispatcher", "--amqp", "amqp://x/", "--amqp-prefetch", "0"], "--amqp-prefetch"),
    ],
)
def test_bad_settings_are_one_line_errors(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    if argv[0] == "dispatcher":
        argv = [*argv, "--data-dir", str(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("narwhal: ") and message in err
    assert err.count("\n") == 1
