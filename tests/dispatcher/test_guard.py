"""The API's HTTP checks as functions: names, authorities, JSON depth."""

from __future__ import annotations

import pytest

from narwhal.dispatcher.guard import HostPolicy, JsonError, is_json, parse_json, split_authority


def test_host_policy_names() -> None:
    loopback = HostPolicy.of("127.0.0.1", 8470, "https://ci.example")
    for host, port in [
        ("127.0.0.1", 8470),
        ("localhost", 8470),
        ("::1", 8470),
        ("ci.example", None),
        ("ci.example", 443),
    ]:
        assert loopback.accepts(host, port), (host, port)
    for host, port in [
        ("evil.example", 8470),
        ("127.0.0.1", None),
        ("10.0.0.1", 8470),
        ("ci.example", 8470),
    ]:
        assert not loopback.accepts(host, port), (host, port)
    lan = HostPolicy.of("10.0.0.5", 80)
    assert lan.accepts("10.0.0.5", None) and lan.accepts("10.0.0.5", 80)
    assert not lan.accepts("localhost", 80)
    wildcard = HostPolicy.of("0.0.0.0", 8470)
    assert wildcard.accepts("192.168.1.7", 8470) and wildcard.accepts("fe80::1", 8470)
    assert not wildcard.accepts("192.168.1.7", 8471) and not wildcard.accepts("evil.example", 8470)


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("Example:80", ("example", 80)),
        ("example", ("example", None)),
        ("[::1]:8470", ("::1", 8470)),
        ("[::1]", ("::1", None)),
        ("h:99999", None),
        ("h:x", None),
        ("[::1", None),
        ("", None),
    ],
)
def test_split_authority(text: str, parsed: tuple[str, int | None] | None) -> None:
    assert split_authority(text) == parsed


def test_json_types_and_depth() -> None:
    assert is_json("application/json") and is_json("Application/JSON; charset=utf-8")
    assert not is_json("text/plain; x=application/json") and not is_json(None)
    assert parse_json(b'{"a": ["[[[[", {"b": 1}]}') == {"a": ["[[[[", {"b": 1}]}
    assert parse_json(b"[" * 32 + b"]" * 32) is not None
    for body in (b"[" * 33 + b"]" * 33, b"[" * 100_000, b'{"a":' * 20_000):
        with pytest.raises(JsonError, match="deeper than 32"):
            parse_json(body)
    with pytest.raises(JsonError, match="not valid JSON"):
        parse_json(b'{"a": "\\"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["')
