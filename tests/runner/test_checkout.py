"""git checkout through the runner's mirror cache, against real repositories."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from narwhal.errors import CheckoutError
from narwhal.runner import checkout
from narwhal.runner.checkout import MirrorCache
from tests.support.repos import Repo


def _checkout(
    cache: MirrorCache, repo: str, ws: Path, *, ref: str = "refs/heads/main", sha: str | None = None
) -> str:
    return asyncio.run(cache.checkout(repo, ref=ref, sha=sha, workspace=ws)).sha


@pytest.fixture
def cache(tmp_path: Path) -> MirrorCache:
    (tmp_path / "mirrors").mkdir()
    return MirrorCache(tmp_path / "mirrors", allow_local=True)


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


@pytest.fixture
def git_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The git subcommands the cache runs, in order."""
    calls: list[str] = []
    real = checkout.run_git

    async def recording(*args: str, **kwargs: Any) -> bytes:
        calls.append(args[0])
        return await real(*args, **kwargs)

    monkeypatch.setattr(checkout, "run_git", recording)
    return calls


def test_a_known_commit_costs_one_git_process(
    make_repo: Callable[..., Repo], cache: MirrorCache, tmp_path: Path, git_calls: list[str]
) -> None:
    repo = make_repo({"a.txt": "one\n"})
    sha = repo.commit({"a.txt": "two\n"})
    assert _checkout(cache, str(repo.path), tmp_path / "ws1", sha=sha) == sha
    # A new repository: a mirror made, the commit fetched by id (an empty
    # mirror is not asked whether it has it), checked out.
    assert git_calls == ["init", "fetch", "checkout"]
    git_calls.clear()
    assert _checkout(cache, str(repo.path), tmp_path / "ws2", sha=sha) == sha
    assert git_calls == ["checkout"]
    assert (tmp_path / "ws2" / "a.txt").read_text() == "two\n"
    head = subprocess.run(
        ["git", "-C", str(tmp_path / "ws2"), "status", "--porcelain", "--branch"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert head.stdout == "## HEAD (no branch)\n"  # detached at the commit, nothing changed


def test_a_new_cache_asks_the_mirror_before_fetching(
    make_repo: Callable[..., Repo], tmp_path: Path, git_calls: list[str]
) -> None:
    repo = make_repo({"a.txt": "kept\n"})
    (tmp_path / "mirrors").mkdir()
    sha = _checkout(
        MirrorCache(tmp_path / "mirrors", allow_local=True), str(repo.path), tmp_path / "ws1"
    )
    git_calls.clear()
    # A restarted runner: the mirror on disk has the commit, the memory does not.
    again = MirrorCache(tmp_path / "mirrors", allow_local=True)
    assert _checkout(again, str(repo.path), tmp_path / "ws2", sha=sha) == sha
    assert git_calls == ["cat-file", "checkout"]
    assert (tmp_path / "ws2" / "a.txt").read_text() == "kept\n"


def test_new_commits_are_fetched_into_the_mirror(
    make_repo: Callable[..., Repo], cache: MirrorCache, tmp_path: Path
) -> None:
    repo = make_repo({"a.txt": "v1\n"})
    _checkout(cache, str(repo.path), tmp_path / "ws1")
    newer = repo.commit({"a.txt": "v2\n"})
    assert _checkout(cache, str(repo.path), tmp_path / "ws2", sha=newer) == newer
    assert (tmp_path / "ws2" / "a.txt").read_text() == "v2\n"
    # Without a commit id the ref is always fetched: its tip may have moved.
    tip = repo.commit({"a.txt": "v3\n"})
    assert _checkout(cache, str(repo.path), tmp_path / "ws3") == tip
    assert (tmp_path / "ws3" / "a.txt").read_text() == "v3\n"


def test_a_fetch_carries_only_what_the_mirror_lacks(
    make_repo: Callable[..., Repo], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trace = tmp_path / "trace.json"
    real = checkout.git_environment
    # The runner's environment never reaches its git: the trace goes in this way.
    monkeypatch.setattr(
        checkout, "git_environment", lambda home: {**real(home), "GIT_TRACE2_EVENT": str(trace)}
    )
    repo = make_repo({"a.txt": "1\n"})
    first = repo.commit({"a.txt": "2\n"})
    (tmp_path / "mirrors").mkdir()
    cache = MirrorCache(tmp_path / "mirrors", allow_local=True)
    _checkout(cache, str(repo.path), tmp_path / "ws1", sha=first)
    trace.unlink()
    repo.commit({"a.txt": "3\n"})
    newest = repo.commit({"a.txt": "4\n"})
    assert _checkout(cache, str(repo.path), tmp_path / "ws2", sha=newest) == newest
    assert (tmp_path / "ws2" / "a.txt").read_text() == "4\n"
    # Two new commits of one file: a commit, a tree and a blob each. Without
    # the mirror's ref the server sent the whole history again (12 objects).
    sent = re.findall(r"--pack_header=2,(\d+)", trace.read_text())
    assert set(sent) == {"6"}


def test_a_server_refusing_commit_ids_is_fetched_by_ref(
    make_repo: Callable[..., Repo],
    tmp_path: Path,
    git_calls: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    repo = make_repo({"a.txt": "old\n"})
    old = repo.commit({"a.txt": "older\n"})
    repo.commit({"a.txt": "newer\n"})
    (tmp_path / "mirrors").mkdir()
    # Protocol v0 refuses a want for a commit no ref points at.
    v0 = {"protocol.version": "0"}
    cache = MirrorCache(tmp_path / "mirrors", allow_local=True, git_config=v0)
    assert _checkout(cache, str(repo.path), tmp_path / "ws", sha=old) == old
    assert git_calls == ["init", "fetch", "fetch", "cat-file", "checkout"]
    assert (tmp_path / "ws" / "a.txt").read_text() == "older\n"


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


def test_a_missing_path_or_plain_folder_says_what_is_wrong(
    cache: MirrorCache, tmp_path: Path
) -> None:
    # git ends with advice ("... and the repository exists."): the reason
    # keeps what was wrong, the error holds all git said (for the log).
    plain = tmp_path / "plain"
    plain.mkdir()
    for path in (tmp_path / "nope", plain):
        with pytest.raises(checkout.GitFailed) as caught:
            _checkout(cache, str(path), tmp_path / f"w-{path.name}", ref="HEAD")
        message = str(caught.value)
        assert f"fatal: '{path}' does not appear to be a git repository" in message
        assert "\n" not in message and "repository exists" not in message
        assert "and the repository exists." in caught.value.output


def test_summary_keeps_fatal_and_error_lines_or_the_last() -> None:
    assert checkout.summary("hint: x\nerror: one\nfatal: two\nadvice\n") == "error: one; fatal: two"
    assert checkout.summary("just this\n\n") == "just this"
    assert checkout.summary("") == "(no output)"
    assert len(checkout.summary("fatal: " + "x" * 5000)) == 400


def test_a_known_commit_pruned_from_the_mirror_is_fetched_again(
    make_repo: Callable[..., Repo], cache: MirrorCache, tmp_path: Path
) -> None:
    repo = make_repo({"a.txt": "main\n"})
    subprocess.run(["git", "-C", str(repo.path), "checkout", "-q", "-b", "side"], check=True)
    side = repo.commit({"a.txt": "side\n"})
    subprocess.run(["git", "-C", str(repo.path), "checkout", "-q", "main"], check=True)
    tip = repo.commit({"a.txt": "main 2\n"})
    assert _checkout(cache, str(repo.path), tmp_path / "ws1", ref="refs/heads/side", sha=side)
    assert _checkout(cache, str(repo.path), tmp_path / "ws2", sha=tip) == tip
    # What git's gc does weeks later to a commit no ref of the mirror reaches.
    (mirror,) = (tmp_path / "mirrors").iterdir()
    for prune in (["reflog", "expire", "--expire=now", "--all"], ["gc", "-q", "--prune=now"]):
        subprocess.run(["git", "-C", str(mirror), *prune], check=True)
    assert _checkout(cache, str(repo.path), tmp_path / "ws3", ref="refs/heads/side", sha=side)
    assert (tmp_path / "ws3" / "a.txt").read_text() == "side\n"
