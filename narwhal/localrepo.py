"""A REPO argument of the CLI as the dispatcher gets it, and what a local one has checked out.

``submit``, ``jobs --repo`` and ``secrets`` resolve a local path the same
way, so what one command stored the others find: a path that exists becomes
the absolute top level of its git work tree (``.`` in a subdirectory names
the repository, not the subdirectory). Clone URLs and scp-like
``user@host:path`` pass unchanged once ``narwhal.repos.check_repo`` accepts
them (the rules of every door, so a URL the dispatcher would refuse is
refused here, before any request); an absolute path that does not exist here
passes too (it may exist on the runner's machine); a relative one that does
not exist is refused here, in one line.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from narwhal.errors import ConfigError
from narwhal.repos import check_repo, meant_as_url


def is_url(text: str) -> bool:
    return meant_as_url(text)


def repo_arg(text: str) -> str:
    """``text`` as the dispatcher should get it (module docstring); ``RepoError`` for a bad URL.

    Local URLs pass (``allow_local``): whether they may be built is the
    dispatcher's policy, which this side does not know.
    """
    if is_url(text):
        return check_repo(text, allow_local=True)
    path = Path(text).expanduser()
    if path.exists():
        top = _git(path, "rev-parse", "--show-toplevel") if path.is_dir() else None
        return top or str(path.resolve())
    if path.is_absolute():
        return text
    raise ConfigError(f"{text}: no such directory (relative to {os.getcwd()}), and not a clone URL")


def checked_out(repo: str) -> tuple[str, str] | None:
    """The ref and commit a local repository has checked out (``HEAD`` when detached).

    None for a URL, a path not here, or no git on this machine: the runner
    fetches the remote's ``HEAD`` then. ``ConfigError`` for a local path that
    is not a git repository, or one without a commit yet.
    """
    path = Path(repo)
    if is_url(repo) or not path.is_dir():
        return None
    try:
        sha = _git(path, "rev-parse", "--verify", "-q", "HEAD^{commit}", raising=True)
    except FileNotFoundError:
        return None
    if sha is None:
        if _git(path, "rev-parse", "--git-dir") is None:
            raise ConfigError(f"{repo}: not a git repository")
        raise ConfigError(f"{repo}: no commit yet (commit narwhal.yml first)")
    ref = _git(path, "symbolic-ref", "-q", "HEAD") or "HEAD"
    return ref, sha


def _git(path: Path, *args: str, raising: bool = False) -> str | None:
    """git's stdout, stripped; None if it fails (or, unless ``raising``, is missing)."""
    try:
        done = subprocess.run(
            ["git", *args],
            cwd=path,
            capture_output=True,
            text=True,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except FileNotFoundError:
        if raising:
            raise
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None
