"""Check out one commit of a repository into a job's workspace with the git CLI.

Each runner keeps a mirror cache: one bare repository per clone URL under
its work folder. A job fetches into the mirror only what the mirror lacks
(nothing at all when the commit is already there), and its workspace is a
fresh ``.git`` that borrows the mirror's objects through
``objects/info/alternates`` before a detached checkout. A commit the cache
has already checked out costs one git process (the checkout), a new one
three (look in the mirror, fetch, checkout) instead of a clone. Steps still
get a real git repository in their workspace.

Fetching a commit by its id needs a server that serves unadvertised
commits; otherwise the ref is fetched and the commit looked up in it. What
was fetched last is kept under a ref of the mirror (``refs/narwhal/last``),
so the next fetch offers it as common ground and carries only new objects.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import Mapping
from pathlib import Path

from narwhal.errors import CheckoutError
from narwhal.runner import process

log = logging.getLogger(__name__)

#: Environment for git: never prompt for credentials, never read the
#: runner's own git config beyond the system's.
_GIT_ENV = {
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_ASKPASS": "true",
}


async def _git(
    *args: str, cwd: Path, env: Mapping[str, str], timeout: float, output: bool = False
) -> str:
    """Run git; its stdout when ``output``, else nothing (no pipe for what nobody reads)."""
    try:
        child = process.start(
            ["git", *args], cwd=cwd, env=env, stdout="pipe" if output else "devnull", stderr="pipe"
        )
    except FileNotFoundError as e:
        raise CheckoutError("git is not installed on this runner") from e
    try:
        async with asyncio.timeout(timeout):
            out, err = await child.communicate()
    except TimeoutError:
        child.kill()
        await child.wait()
        raise CheckoutError(f"git {args[0]} took longer than {timeout:.0f}s") from None
    finally:
        child.close()
    if child.returncode != 0:
        lines = err.decode(errors="replace").strip().splitlines() or ["(no output)"]
        raise CheckoutError(f"git {args[0]} failed: {lines[-1]}")
    return out.decode(errors="replace").strip()


def _skeleton(workspace: Path, mirror: Path) -> None:
    """The smallest ``.git`` git accepts, borrowing the mirror's objects.

    Written directly rather than by ``git init``: one process less per job.
    """
    git = workspace / ".git"
    (git / "objects" / "info").mkdir(parents=True)
    (git / "refs" / "heads").mkdir(parents=True)
    (git / "HEAD").write_text("ref: refs/heads/main\n")
    (git / "config").write_text("[core]\n\trepositoryformatversion = 0\n\tbare = false\n")
    (git / "objects" / "info" / "alternates").write_text(f"{mirror / 'objects'}\n")


#: The mirror's one ref: the commit (or ref tip) fetched last.
_LAST = "refs/narwhal/last"


class MirrorCache:
    """Bare mirrors of the repositories this runner builds, one per clone URL."""

    def __init__(self, root: Path, *, timeout: float = 600.0) -> None:
        self._root = root
        self._timeout = timeout
        # Built once: copying os.environ for every git process showed up in
        # the profile of a trivial job.
        self._env = {**os.environ, **_GIT_ENV}
        self._locks: dict[str, asyncio.Lock] = {}
        #: Mirrors known to exist, so a job does not look for its folder again.
        self._mirrors: set[Path] = set()
        #: Commits known to be in a mirror, so a rebuild asks git nothing.
        self._known: set[tuple[str, str]] = set()

    def _mirror(self, repo: str) -> Path:
        return self._root / (hashlib.sha256(repo.encode()).hexdigest()[:24] + ".git")

    async def checkout(self, repo: str, *, ref: str, sha: str | None, workspace: Path) -> str:
        """Check out ``sha`` (or the tip of ``ref``) into ``workspace``; return the sha."""
        mirror = self._mirror(repo)
        known = (repo, sha) in self._known
        async with self._locks.setdefault(repo, asyncio.Lock()):
            commit = await self._update(mirror, repo, ref, sha)
        await asyncio.to_thread(_skeleton, workspace, mirror)
        try:
            await self._git("checkout", "-q", "--detach", commit, cwd=workspace)
        except CheckoutError:
            if not known:  # git looked in the mirror just now: a real failure
                raise
            # The commit was known to be in the mirror, but git's gc prunes
            # objects no ref reaches (a commit of another branch, fetched
            # weeks ago): look again, fetch if need be, and try once more.
            self._known.discard((repo, commit))
            async with self._locks[repo]:
                commit = await self._update(mirror, repo, ref, sha)
            await self._git("checkout", "-q", "--detach", commit, cwd=workspace)
        return commit

    async def _update(self, mirror: Path, repo: str, ref: str, sha: str | None) -> str:
        """Make sure the mirror has the commit; fetch only when it does not."""
        if sha is not None and (repo, sha) in self._known:
            return sha
        if mirror not in self._mirrors:
            if not await asyncio.to_thread(mirror.is_dir):
                await self._git("init", "-q", "--bare", str(mirror), cwd=self._root)
            self._mirrors.add(mirror)
        if sha is not None and await self._has(mirror, sha):
            self._known.add((repo, sha))
            return sha
        commit = await self._fetch(mirror, repo, ref, sha)
        self._known.add((repo, commit))
        return commit

    async def _fetch(self, mirror: Path, repo: str, ref: str, sha: str | None) -> str:
        """Fetch ``sha`` (or ``ref``) into the mirror; return the commit now there."""
        try:
            await self._fetch_into(mirror, repo, sha or ref)
        except CheckoutError:
            if sha is None:
                raise
            log.info("fetch of %s from %s refused; fetching %s", sha, repo, ref)
            await self._fetch_into(mirror, repo, ref)
            # The ref's history may well not hold the commit asked for.
            if not await self._has(mirror, sha):
                raise CheckoutError(f"commit {sha} not found in {repo}") from None
            return sha
        if sha is not None:
            # git fetched that very object (and checked it is connected).
            return sha
        return await self._git("rev-parse", "FETCH_HEAD^{commit}", cwd=mirror, output=True)

    async def _fetch_into(self, mirror: Path, repo: str, what: str) -> None:
        # The fetched commit goes to a ref of the mirror's own: git offers the
        # commits its refs reach as ones it has, so the server sends only what
        # is new. With no ref at all every fetch carried the whole history,
        # and gc would count all of it unreachable.
        spec = f"+{what}:{_LAST}"
        await self._git("fetch", "-q", "--no-tags", repo, spec, cwd=mirror)

    async def _has(self, mirror: Path, sha: str) -> bool:
        try:
            await self._git("cat-file", "-e", f"{sha}^{{commit}}", cwd=mirror)
        except CheckoutError:
            return False
        return True

    async def _git(self, *args: str, cwd: Path, output: bool = False) -> str:
        return await _git(*args, cwd=cwd, env=self._env, timeout=self._timeout, output=output)
