"""The one set of rules for secret names and values, and the repository key."""

from __future__ import annotations

import os

import pytest

from narwhal.errors import ConfigError
from narwhal.secret_rules import MAX_SECRET_BYTES, check_name, check_value, repo_key


@pytest.mark.parametrize(
    ("repo", "key"),
    [
        ("https://github.com/octo/hello.git", "https://github.com/octo/hello"),
        ("https://tok:x-oauth@GitHub.COM/octo/hello.git/", "https://github.com/octo/hello"),
        ("HTTPS://github.com:443/octo/hello/", "https://github.com/octo/hello"),
        ("https://github.com:8443/octo/hello", "https://github.com:8443/octo/hello"),
        ("https://github.com/Octo/Hello?x=1#frag", "https://github.com/Octo/Hello"),
        ("ssh://git@host.example:22/o/r.git", "ssh://host.example/o/r"),
        ("git@host.example:o/r.git", "ssh://host.example/o/r"),
        ("host.example:o/r", "ssh://host.example/o/r"),
        ("git://host.example/o/r.git", "git://host.example/o/r"),
        ("http://[::1]:8080/o/r", "http://[::1]:8080/o/r"),
        ("file:///srv/git/r.git", "/srv/git/r.git"),
        ("/srv/git/r.git/", "/srv/git/r.git"),
        ("/srv/git/./a/../r", "/srv/git/r"),
    ],
)
def test_repo_key(repo: str, key: str) -> None:
    assert repo_key(repo) == key
    assert repo_key(key) == key  # idempotent: a client may send the key


def test_relative_paths_become_absolute() -> None:
    assert repo_key("some/dir") == os.path.join(os.getcwd(), "some/dir")


def test_an_invalid_url_never_echoes_its_credentials() -> None:
    with pytest.raises(ConfigError) as caught:
        repo_key("https://user:hunter2@host:99999/x")
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize("name", ["API_TOKEN", "_x", "a1"])
def test_good_names(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["", "1ABC", "A-B", "A B", "A=B", "Ä", "X" * 129])
def test_bad_names(name: str) -> None:
    with pytest.raises(ConfigError, match="expected a variable name like API_TOKEN"):
        check_name(name)


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("", "shorter than 4"),
        ("abc", "shorter than 4"),
        ("abc\x00def", "NUL"),
        ("x" * (MAX_SECRET_BYTES + 1), "larger than"),
        ("é" * (MAX_SECRET_BYTES // 2 + 1), "larger than"),  # bytes, not characters
    ],
)
def test_bad_values_never_echo_the_value(value: str, error: str) -> None:
    with pytest.raises(ConfigError, match=error) as caught:
        check_value("TOKEN", value, limit=MAX_SECRET_BYTES)
    message = str(caught.value)
    assert message.startswith("secret TOKEN:") and "\n" not in message
    assert len(message) < 100
