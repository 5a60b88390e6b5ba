"""``narwhal backend`` and ``narwhal up``'s dashboard as real processes."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from narwhal.cli import build_parser
from narwhal.errors import ConfigError
from narwhal.settings.backend import backend_config
from tests.support.daemons import Client, Daemon, narwhal
from tests.support.eventually import eventually

Up = Callable[..., tuple[Daemon, Client]]


def _synced(http: httpx.Client) -> dict[str, Any] | None:
    """The dashboard's state once its feed is in sync and shows up's runner."""
    state = http.get("/api/state")
    assert state.status_code == 200, state.text
    found = dict(state.json())
    ready = found["feed"]["connected"] and [r["id"] for r in found["runners"]] == ["local"]
    return found if ready else None


def test_up_serves_a_dashboard_and_narwhal_backend_serves_another(
    narwhal_up: Up, tmp_path: Path
) -> None:
    daemon, api = narwhal_up()
    feed = re.search(r"metrics feed on (tcp://\S+)", daemon.announce)
    link = re.search(r"dashboard at (http://\S+)/#token=(\S+)", daemon.announce)
    assert feed and link, daemon.announce
    with httpx.Client(base_url=link.group(1), headers={"origin": link.group(1)}) as board:
        assert board.get("/api/state").status_code == 401
        assert board.post("/session", json={"token": link.group(2)}).status_code == 200
        eventually(lambda: _synced(board), what="up's dashboard in sync")
        assert "<html" in board.get("/").text

    data = tmp_path / "data0"
    made = narwhal("keys", "generate", "--dir", str(tmp_path), "--name", "board")
    assert made.returncode == 0, made.stderr
    trusted = narwhal(
        "keys", "trust", "--subscriber", str(tmp_path / "board.key"), "--data-dir", str(data)
    )
    assert trusted.returncode == 0, trusted.stderr
    backend = Daemon(
        [
            "backend",
            "--http",
            "127.0.0.1:0",
            "--metrics",
            feed.group(1),
            "--api",
            daemon.url,
            "--api-token-file",
            str(data / "admin.token"),
            "--key",
            str(tmp_path / "board.key"),
            "--dispatcher-key",
            str(data / "keys" / "server.key"),
            "--public-read",
        ]
    )
    try:
        with httpx.Client(base_url=backend.url, headers={"origin": backend.url}) as other:
            page = other.get("/")
            assert page.status_code == 200 and "text/html" in page.headers["content-type"]
            state = eventually(lambda: _synced(other), what="narwhal backend in sync")
            assert state["queue"]["queued"] == 0
            assert other.get("/api/jobs").json()["jobs"] == []
    finally:
        assert backend.stop() == 0, "".join(backend.stderr_lines)


def test_narwhal_backend_says_what_it_is_missing() -> None:
    keyless = narwhal("backend", "--metrics", "tcp://127.0.0.1:1", "--api", "http://127.0.0.1:1")
    assert keyless.returncode == 2 and "--key FILE" in keyless.stderr
    bad = narwhal("backend", "--insecure", "--metrics", "udp://x", "--api", "http://127.0.0.1:1")
    assert bad.returncode == 2 and "--metrics" in bad.stderr


def test_several_feeds_are_followed_in_the_order_given() -> None:
    feeds = "tcp://10.0.0.1:8474, tcp://10.0.0.2:8474,tcp://10.0.0.3:8474"
    args = build_parser().parse_args(["backend", "--insecure", "--metrics", feeds])
    conf = backend_config(args)
    assert conf.metrics == "tcp://10.0.0.1:8474"
    assert conf.other_feeds == ("tcp://10.0.0.2:8474", "tcp://10.0.0.3:8474")
    for bad in ("tcp://10.0.0.1:8474,none", "tcp://10.0.0.1:8474,,", "tcp://a:1,udp://b:2"):
        args = build_parser().parse_args(["backend", "--insecure", "--metrics", bad])
        with pytest.raises(ConfigError, match="--metrics"):
            backend_config(args)
