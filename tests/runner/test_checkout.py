"""git checkout against real repositories."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from narwhal.errors import CheckoutError
from narwhal.runner.checkout import checkout
from tests.conftest import Repo


def test_checks_out_exact_commit_and_ref_tip(
    make_repo: Callable[..., Repo], tmp_path: Path
) -> None:
    repo = make_repo({"a.txt": "one\n"})
    first = repo.commit({"a.txt": "two\n"})
    tip = repo.commit({"a.txt": "three\n"})
    ws1, ws2 = tmp_path / "ws1", tmp_path / "ws2"
    got = asyncio.run(checkout(str(repo.path), ref="refs/heads/main", sha=first, workspace=ws1))
    assert got == first and (ws1 / "a.txt").read_text() == "two\n"
    got = asyncio.run(checkout(str(repo.path), ref="refs/heads/main", sha=None, workspace=ws2))
    assert got == tip and (ws2 / "a.txt").read_text() == "three\n"


def test_file_url_and_head(make_repo: Callable[..., Repo], tmp_path: Path) -> None:
    repo = make_repo({"a.txt": "x\n"})
    sha = asyncio.run(
        checkout(f"file://{repo.path}", ref="HEAD", sha=None, workspace=tmp_path / "w")
    )
    assert len(sha) == 40


def test_unknown_commit_and_missing_repo_raise(
    make_repo: Callable[..., Repo], tmp_path: Path
) -> None:
    repo = make_repo({"a.txt": "x\n"})
    with pytest.raises(CheckoutError, match="not found|failed"):
        asyncio.run(
            checkout(str(repo.path), ref="refs/heads/main", sha="1" * 40, workspace=tmp_path / "w1")
        )
    with pytest.raises(CheckoutError, match="git fetch failed"):
        asyncio.run(
            checkout(str(tmp_path / "nope"), ref="HEAD", sha=None, workspace=tmp_path / "w2")
        )
    with pytest.raises(CheckoutError, match="git fetch failed"):
        asyncio.run(
            checkout(str(repo.path), ref="refs/heads/nope", sha=None, workspace=tmp_path / "w3")
        )
