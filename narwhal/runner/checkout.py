"""Fetch one commit of a repository into a job's workspace with the git CLI.

The fetch is shallow (``--depth 1``) and asks for the exact commit; servers
that refuse to serve an unadvertised commit get a second, full fetch of the
ref, after which the commit is checked out by its id.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from narwhal.errors import CheckoutError

log = logging.getLogger(__name__)

#: Environment for git: never prompt for credentials, never read the
#: runner's own git config beyond the system's.
_GIT_ENV = {
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_ASKPASS": "true",
}


async def _git(*args: str, cwd: Path, timeout: float) -> str:
    env = {**os.environ, **_GIT_ENV}
    try:
        proc = await asyncio.create_subprocess_exec(
            "git",
            *args,
            cwd=cwd,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except FileNotFoundError as e:
        raise CheckoutError("git is not installed on this runner") from e
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise CheckoutError(f"git {args[0]} took longer than {timeout:.0f}s") from None
    if proc.returncode != 0:
        lines = err.decode(errors="replace").strip().splitlines() or ["(no output)"]
        raise CheckoutError(f"git {args[0]} failed: {lines[-1]}")
    return out.decode(errors="replace").strip()


async def checkout(
    repo: str, *, ref: str, sha: str | None, workspace: Path, timeout: float = 600.0
) -> str:
    """Check out ``sha`` (or the tip of ``ref``) into ``workspace``; return the sha."""
    await _git("init", "-q", str(workspace), cwd=workspace.parent, timeout=timeout)
    want = sha or ref
    try:
        await _git(
            "fetch", "-q", "--no-tags", "--depth", "1", repo, want, cwd=workspace, timeout=timeout
        )
    except CheckoutError:
        if sha is None:
            raise
        log.info("shallow fetch of %s from %s refused; fetching %s in full", sha, repo, ref)
        await _git("fetch", "-q", "--no-tags", repo, ref, cwd=workspace, timeout=timeout)
        want = sha
    target = sha or "FETCH_HEAD"
    try:
        await _git("checkout", "-q", "--detach", target, cwd=workspace, timeout=timeout)
    except CheckoutError as e:
        raise CheckoutError(f"commit {want} not found in {repo}: {e}") from None
    return await _git("rev-parse", "HEAD", cwd=workspace, timeout=timeout)
