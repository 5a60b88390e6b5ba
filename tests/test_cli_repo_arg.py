"""A REPO argument of the client commands: URLs by ``narwhal.repos``' rules, paths resolved.

What the client means as a URL (a scheme, or ``user@host:``) is checked
by the validator every door uses, so one the dispatcher would refuse is
refused here, before any request.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from narwhal.errors import ConfigError, RepoError
from narwhal.localrepo import is_url, repo_arg


@pytest.mark.parametrize(
    "url",
    [
        "https://github.com/octo/hello.git",
        "https://user:token@gitea.example/octo/hello",
        "ssh://git@host:2222/octo/hello.git",
        "git@github.com:octo/hello.git",
        "file:///srv/repos/hello",
    ],
)
def test_accepted_urls_pass_unchanged(url: str) -> None:
    assert is_url(url)
    assert repo_arg(url) == url


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("foo://host/x", "repo: expected an https://"),
        ("https://-oProxyCommand=x/y", "repo: looks like a git option"),
        ("https://-host/y", "repo: expected an https://"),
        ("-oProxyCommand=sh@host:x", "repo: looks like a git option"),
        ("https://host/a b", "repo: contains whitespace"),
        ("me@host:x\x01", "repo: contains whitespace or control characters"),
    ],
)
def test_urls_the_dispatcher_would_refuse_are_refused_here(url: str, reason: str) -> None:
    with pytest.raises(RepoError, match=reason):
        repo_arg(url)


def test_what_is_not_a_url_is_a_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for text in ("ext::sh -c x", "no/such/dir", "-uMARKER"):
        assert not is_url(text)
        with pytest.raises(ConfigError, match="no such directory"):
            repo_arg(text)
    assert repo_arg("/srv/not/here") == "/srv/not/here"  # it may exist on the runner
    (tmp_path / "plain").mkdir()
    assert repo_arg("plain") == str((tmp_path / "plain").resolve())


def test_submit_refuses_a_bad_url_in_one_line_before_any_request(tmp_path: Path) -> None:
    # No dispatcher listens there: the refusal comes before any request.
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "narwhal",
            "submit",
            "foo://host/x",
            "--server",
            "http://127.0.0.1:9",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "repo: expected an https://" in done.stderr
    assert "cannot reach" not in done.stderr
