"""git checkout through the runner's mirror cache, against real repositories."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from narwhal.errors import CheckoutError
from narwhal.runner.checkout import MirrorCache
from tests.conftest import Repo


def _checkout(
    cache: MirrorCache, repo: str, ws: Path, *, ref: str = "refs/heads/main", sha: str | None = None
) -> str:
    return asyncio.run(cache.checkout(repo, ref=ref, sha=sha, workspace=ws))


@pytest.fixture
def cache(tmp_path: Path) -> MirrorCache:
    (tmp_path / "mirrors").mkdir()
    return MirrorCache(tmp_path / "mirrors")


def test_checks_out_exact_commit_and_ref_tip(
    make_repo: Callable[..., Repo], cache: MirrorCache, tmp_path: Path
) -> None:
    repo = make_repo({"a.txt": "one\n"})
    first = repo.commit({"a.txt": "two\n"})
    tip = repo.commit({"a.txt": "three\n"})
    ws1, ws2 = tmp_path / "ws1", tmp_path / "ws2"
    assert _checkout(cache, str(repo.path), ws1, sha=first) == first
    assert (ws1 / "a.txt").read_text() == "two\n"
    assert _checkout(cache, str(repo.path), ws2) == tip
    assert (ws2 / "a.txt").read_text() == "three\n"
    # The workspace is a real repository: steps may run git in it.
    head = subprocess.run(
        ["git", "-C", str(ws1), "log", "-1", "--format=%H"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert head.stdout.strip() == first


def test_cached_commit_needs_no_fetch(
    make_repo: Callable[..., Repo], cache: MirrorCache, tmp_path: Path
) -> None:
    repo = make_repo({"a.txt": "cached\n"})
    sha = _checkout(cache, str(repo.path), tmp_path / "ws1")
    shutil.rmtree(repo.path)  # the origin is gone: only the mirror can serve it now
    assert _checkout(cache, str(repo.path), tmp_path / "ws2", sha=sha) == sha
    assert (tmp_path / "ws2" / "a.txt").read_text() == "cached\n"


def test_new_commits_are_fetched_into_the_mirror(
    make_repo: Callable[..., Repo], cache: MirrorCache, tmp_path: Path
) -> None:
    repo = make_repo({"a.txt": "v1\n"})
    _checkout(cache, str(repo.path), tmp_path / "ws1")
    newer = repo.commit({"a.txt": "v2\n"})
    assert _checkout(cache, str(repo.path), tmp_path / "ws2", sha=newer) == newer
    assert (tmp_path / "ws2" / "a.txt").read_text() == "v2\n"


def test_file_url_and_head(
    make_repo: Callable[..., Repo], cache: MirrorCache, tmp_path: Path
) -> None:
    repo = make_repo({"a.txt": "x\n"})
    sha = _checkout(cache, f"file://{repo.path}", tmp_path / "w", ref="HEAD")
    assert len(sha) == 40


def test_unknown_commit_and_missing_repo_raise(
    make_repo: Callable[..., Repo], cache: MirrorCache, tmp_path: Path
) -> None:
    repo = make_repo({"a.txt": "x\n"})
    with pytest.raises(CheckoutError, match="not found|failed"):
        _checkout(cache, str(repo.path), tmp_path / "w1", sha="1" * 40)
    with pytest.raises(CheckoutError, match="git fetch failed"):
        _checkout(cache, str(tmp_path / "nope"), tmp_path / "w2", ref="HEAD")
    with pytest.raises(CheckoutError, match="git fetch failed"):
        _checkout(cache, str(repo.path), tmp_path / "w3", ref="refs/heads/nope")
