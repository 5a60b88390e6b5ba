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

git runs hardened against hostile repository input (which ``narwhal.repos``
has already checked): ``--end-of-options`` before the values a job supplies,
only the transports of the accepted URL forms, no hooks, credential helpers
or submodules, and an environment of its own that never holds the runner's
secrets and never lets git read ``~/.gitconfig`` or ``/etc/gitconfig``.
``narwhal.yml`` is read from the commit's tree (``PipelineFiles``), not from
the workspace, so a file committed as a symbolic link reads nothing of the host.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path

from narwhal.errors import CheckoutError, PipelineError
from narwhal.pipeline import PipelineFile, load
from narwhal.repos import protocols
from narwhal.runner import process
from narwhal.yamlnodes import MAX_FILE_BYTES

log = logging.getLogger(__name__)


def git_environment(home: Path) -> dict[str, str]:
    """The whole environment of the runner's git: never the runner's own.

    The runner's environment holds its ``--secret`` values and ``NARWHAL_*``
    settings, and a hook or helper git runs would see all of it. No global
    or system config (``~/.gitconfig`` can name credential helpers, aliases
    and hooks that run programs), no terminal prompts, ``HOME`` an empty
    folder of the runner's (curl reads ``~/.netrc`` from it). ssh still
    finds the user's keys and known hosts: it looks in the passwd home, not
    ``$HOME``; ``SSH_AUTH_SOCK`` is kept so that an ssh agent works.
    """
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": str(home),
        "LANG": "C",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_TERMINAL_PROMPT": "0",
        # BatchMode: fail instead of asking for a passphrase or a host key.
        "GIT_SSH_COMMAND": "ssh -o BatchMode=yes",
    }
    if "SSH_AUTH_SOCK" in os.environ:
        env["SSH_AUTH_SOCK"] = os.environ["SSH_AUTH_SOCK"]
    return env


def git_options(*, allow_local: bool, extra: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """``-c`` settings for every git process: they win over any config file.

    Only the transports of the repository forms ``narwhal.repos`` accepts
    (``ext::`` and ``fd::`` run programs; ``file`` reads the runner's disk),
    no credential helpers, no hooks, no submodules.
    """
    settings = {
        "protocol.allow": "never",
        **{f"protocol.{name}.allow": "always" for name in protocols(allow_local=allow_local)},
        "credential.helper": "",
        "core.hooksPath": os.devnull,
        "core.fsmonitor": "false",
        "submodule.recurse": "false",
        "fetch.recurseSubmodules": "false",
        **(extra or {}),
    }
    return tuple(arg for key, value in settings.items() for arg in ("-c", f"{key}={value}"))


async def _git(
    *args: str,
    cwd: Path,
    env: Mapping[str, str],
    timeout: float,
    options: Sequence[str] = (),
    output: bool = False,
) -> bytes:
    """Run git; its stdout when ``output``, else nothing (no pipe for what nobody reads)."""
    try:
        child = process.start(
            ["git", *options, *args],
            cwd=cwd,
            env=env,
            stdout="pipe" if output else "devnull",
            stderr="pipe",
        )
    except FileNotFoundError as e:
        # Popen names what it did not find: the program, or the folder to run in.
        if e.filename == "git":
            raise CheckoutError("git is not installed on this runner") from e
        raise CheckoutError(f"git {args[0]}: no folder {cwd} on this runner") from e
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
        text = err.decode(errors="replace")
        raise GitFailed(f"git {args[0]} failed: {summary(text)}", output=text)
    return out


class GitFailed(CheckoutError):
    """git exited non-zero; ``output`` is the whole of its stderr (for the job's log)."""

    def __init__(self, message: str, *, output: str) -> None:
        super().__init__(message)
        self.output = output


#: Longest summary of git's stderr that goes into a job's reason.
_SUMMARY_CHARS = 400


def summary(stderr: str) -> str:
    """One line of what git said went wrong: its ``fatal:`` and ``error:`` lines.

    git ends many failures with advice ("Please make sure you have the
    correct access rights / and the repository exists."): the last line
    alone hid what was wrong, e.g. "'/x' does not appear to be a git repository".
    """
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    wanted = [line for line in lines if line.startswith(("fatal:", "error:"))]
    kept = list(dict.fromkeys(wanted or lines[-1:])) or ["(no output)"]
    text = "; ".join(kept)
    return text if len(text) <= _SUMMARY_CHARS else text[: _SUMMARY_CHARS - 1] + "…"


def _skeleton(workspace: Path, mirror: Path) -> None:
    """The smallest ``.git`` git accepts, borrowing the mirror's objects.

    Written directly rather than by ``git init``: one process less per job.
    """
    # Private to the runner's user: other users of the machine never read a job's files.
    workspace.mkdir(mode=0o700, exist_ok=True)
    git = workspace / ".git"
    (git / "objects" / "info").mkdir(parents=True)
    (git / "refs" / "heads").mkdir(parents=True)
    (git / "HEAD").write_text("ref: refs/heads/main\n")
    # No hooks, also for the git that steps run in the workspace.
    (git / "config").write_text(
        "[core]\n\trepositoryformatversion = 0\n\tbare = false\n\thooksPath = /dev/null\n"
    )
    (git / "objects" / "info" / "alternates").write_text(f"{mirror / 'objects'}\n")


#: The mirror's one ref: the commit (or ref tip) fetched last.
_LAST = "refs/narwhal/last"


#: Modes ``git ls-tree`` shows for a regular file (normal and executable).
_REGULAR = ("100644", "100755")
_NOT_REGULAR = {"120000": "a symbolic link", "160000": "a submodule", "040000": "a directory"}


class MirrorCache:
    """Bare mirrors of the repositories this runner builds, one per clone URL.

    ``allow_local`` also lets git use its ``file`` transport (local paths);
    ``git_config`` adds ``-c`` settings to every git process (tests use it
    to speak an older protocol).
    """

    def __init__(
        self,
        root: Path,
        *,
        timeout: float = 600.0,
        allow_local: bool = False,
        git_config: Mapping[str, str] | None = None,
    ) -> None:
        self._root = root
        self._timeout = timeout
        self._home = root.with_name(root.name + ".home")
        # Built once: the profile of a trivial job showed environment copies.
        self._env = git_environment(self._home)
        self._options = git_options(allow_local=allow_local, extra=git_config)
        self._locks: dict[str, asyncio.Lock] = {}
        #: Mirrors known to exist, so a job does not look for its folder again.
        self._mirrors: set[Path] = set()
        #: Commits known to be in a mirror, so a rebuild asks git nothing.
        self._known: set[tuple[str, str]] = set()
        #: (repo, commit, file name) -> the file's blob id, which never changes.
        self._files: dict[tuple[str, str, str], str] = {}

    def _mirror(self, repo: str) -> Path:
        return self._root / (hashlib.sha256(repo.encode()).hexdigest()[:24] + ".git")

    async def checkout(self, repo: str, *, ref: str, sha: str | None, workspace: Path) -> str:
        """Check out ``sha`` (or the tip of ``ref``) into ``workspace``; return the sha."""
        mirror = self._mirror(repo)
        known = (repo, sha) in self._known
        async with self._locks.setdefault(repo, asyncio.Lock()):
            commit = await self._update(mirror, repo, ref, sha)
        await asyncio.to_thread(_skeleton, workspace, mirror)
        # No --end-of-options here: git 2.39's checkout takes it for a path.
        # ``commit`` is a hex id the runner checked or git itself printed.
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
            await asyncio.to_thread(self._home.mkdir, mode=0o700, exist_ok=True)
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
        found = await self._git("rev-parse", "FETCH_HEAD^{commit}", cwd=mirror, output=True)
        return found.decode().strip()

    async def _fetch_into(self, mirror: Path, repo: str, what: str) -> None:
        # The fetched commit goes to a ref of the mirror's own: git offers the
        # commits its refs reach as ones it has, so the server sends only what
        # is new. With no ref at all every fetch carried the whole history,
        # and gc would count all of it unreachable.
        spec = f"+{what}:{_LAST}"
        await self._git("fetch", "-q", "--no-tags", "--end-of-options", repo, spec, cwd=mirror)

    async def _has(self, mirror: Path, sha: str) -> bool:
        try:
            await self._git("cat-file", "-e", "--end-of-options", f"{sha}^{{commit}}", cwd=mirror)
        except CheckoutError:
            return False
        return True

    async def blob_id(self, repo: str, sha: str, name: str, *, limit: int) -> str:
        """The blob id of the file ``name`` at the root of commit ``sha``.

        Looked up in the mirror's objects, never through a path in a
        workspace: a ``narwhal.yml`` committed as a symbolic link would
        otherwise hand the runner any file of its host. Only a regular file
        of at most ``limit`` bytes passes; anything else is a
        ``PipelineError`` that says what the entry is and nothing of what it
        holds. Cached per commit: what a commit holds never changes.
        """
        key = (repo, sha, name)
        if key not in self._files:
            self._files[key] = await self._blob_id(self._mirror(repo), sha, name, limit)
        return self._files[key]

    async def read_blob(self, repo: str, blob: str) -> bytes:
        """The bytes of a blob that ``blob_id`` found."""
        return await self._git("cat-file", "blob", blob, cwd=self._mirror(repo), output=True)

    async def _blob_id(self, mirror: Path, sha: str, name: str, limit: int) -> str:
        listed = await self._git(
            "ls-tree", "-l", "-z", "--end-of-options", sha, "--", name, cwd=mirror, output=True
        )
        entry = listed.split(b"\0", 1)[0].decode(errors="replace")
        meta, _, path = entry.partition("\t")
        fields = meta.split()
        if path != name or len(fields) != 4:
            raise PipelineError(f"{name}: file not found in commit {sha[:12]}")
        mode, _, blob, size = fields
        if mode not in _REGULAR:
            kind = _NOT_REGULAR.get(mode, f"not a regular file (mode {mode})")
            raise PipelineError(f"{name}: is {kind} in commit {sha[:12]}; commit a regular file")
        if not size.isdigit() or int(size) > limit:
            raise PipelineError(f"{name}: file is larger than {limit // 1024} KiB")
        return blob

    async def _git(self, *args: str, cwd: Path, output: bool = False) -> bytes:
        return await _git(
            *args,
            cwd=cwd,
            env=self._env,
            timeout=self._timeout,
            options=self._options,
            output=output,
        )


class PipelineFiles:
    """The pipeline file of commits, read from the mirror as blobs (``blob_id``).

    Parsed files are kept by blob id: a rebuild of a commit, or another
    matrix combination of it, neither reads nor parses the file again
    (parsing was a tenth of a trivial job's time on the runner).
    """

    def __init__(self, mirrors: MirrorCache, *, name: str, keep: int = 32) -> None:
        self._mirrors = mirrors
        self._name = name
        self._keep = keep
        self._parsed: OrderedDict[str, PipelineFile] = OrderedDict()

    async def load(self, repo: str, sha: str) -> PipelineFile:
        """The parsed file of commit ``sha``; ``PipelineError`` if it is not a valid one."""
        blob = await self._mirrors.blob_id(repo, sha, self._name, limit=MAX_FILE_BYTES)
        parsed = self._parsed.get(blob)
        if parsed is None:
            data = await self._mirrors.read_blob(repo, blob)
            parsed = load(data, filename=self._name)
            self._parsed[blob] = parsed
            if len(self._parsed) > self._keep:
                self._parsed.popitem(last=False)
        else:
            self._parsed.move_to_end(blob)
        return parsed
