"""Credentials in URLs, taken out of text and log lines (narwhal.redact)."""

from __future__ import annotations

import logging

import pytest

from narwhal.redact import RedactingFilter, redacted


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("https://user:tok@host/x.git", "https://***@host/x.git"),
        ("https://ghp_TOKEN@github.com/o/r", "https://***@github.com/o/r"),
        ("https://u:p@ss@host:8443/x", "https://***@host:8443/x"),
        ("amqp://guest:guest@mq:5672/", "amqp://***@mq:5672/"),
        ("ssh://git@host/x.git", "ssh://git@host/x.git"),
        ("ssh://git:pw@host/x.git", "ssh://***@host/x.git"),
        ("git@github.com:o/r.git", "git@github.com:o/r.git"),
        ("/srv/repo", "/srv/repo"),
        ("https://host/x?mail=a@b", "https://host/x?mail=a@b"),
        (
            "fatal: unable to access 'https://u:t@h/x/': and http://a:b@c/",
            "fatal: unable to access 'https://***@h/x/': and http://***@c/",
        ),
    ],
)
def test_redacted(text: str, shown: str) -> None:
    assert redacted(text) == shown


def test_filter_redacts_formatted_records() -> None:
    record = logging.LogRecord(
        "x", logging.INFO, "f", 1, "fetch from %s: %d", ("https://a:b@h/", 3), None
    )
    assert RedactingFilter().filter(record)
    assert record.getMessage() == "fetch from https://***@h/: 3"
