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

The cache is bounded (``mirror_index``): past its bound, the mirrors used
least recently and borrowed by no running job are evicted, and cloned
again when a job needs them. Each checkout says what it cost (``Checkout``:
seconds, whether it cloned, bytes fetched), which placement weighs.

git runs hardened against hostile repository input (which ``narwhal.repos``
has already checked; ``gitcli``): ``--end-of-options`` before the values a
job supplies, and the options and environment of ``gitcli``.
``narwhal.yml`` is read from the commit's tree (``PipelineFiles``), not
from the workspace, so a file committed as a symbolic link reads nothing
of the host.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from narwhal.errors import CheckoutError, PipelineError
from narwhal.pipeline import PipelineFile, load
from narwhal.quietlog import QuietLog
from narwhal.runner import mirror_index
from narwhal.runner.gitcli import GitFailed, git_environment, git_options, run_git, summary
from narwhal.runner.mirror_index import Entry, MirrorIndex
from narwhal.yamlnodes import MAX_FILE_BYTES

log = logging.getLogger(__name__)

__all__ = ["Checkout", "GitFailed", "MirrorCache", "PipelineFiles", "summary"]


def _skeleton(workspace: Path, mirror: Path, entry: Entry | None, repo: str) -> None:
    """The smallest ``.git`` git accepts, borrowing the mirror's objects; the mirror marked used.

    Written directly rather than by ``git init``: one process less per job.
    """
    if entry is not None:  # in the same thread: no hop of its own for the LRU order
        mirror_index.record_use(entry, repo)
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


@dataclass(frozen=True, slots=True)
class Checkout:
    """A checked-out commit and what getting it cost."""

    sha: str
    #: Seconds from asking to a ready workspace (waiting for another job's fetch too).
    seconds: float
    #: The mirror did not exist: the repository was cloned whole.
    cold: bool
    #: Bytes the mirror grew by (0 when nothing was fetched).
    fetched: int


@dataclass(slots=True)
class _Update:
    commit: str
    cold: bool = False
    fetched: int | None = None  # None: no fetch


class MirrorCache:
    """Bare mirrors of the repositories this runner builds, one per clone URL.

    ``limit`` bounds the bytes the mirrors take (None: no bound; ``load``
    may set it): after a fetch, the least recently used mirrors no job
    borrows are evicted (``mirror_index``), and cloned again when needed.
    A job holds ``borrow(repo)`` from before its checkout until its
    workspace is gone. ``allow_local`` also lets git use its ``file``
    transport (local paths); ``git_config`` adds ``-c`` settings to every
    git process (tests use it to speak an older protocol).
    """

    def __init__(
        self,
        root: Path,
        *,
        limit: int | None = None,
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
        #: The mirrors known to exist (so a job does not look for its folder
        #: again), their sizes and last uses.
        self.index = MirrorIndex(limit)
        #: Commits known to be in a mirror, so a rebuild asks git nothing.
        self._known: set[tuple[str, str]] = set()
        #: (repo, commit, file name) -> the file's blob id, which never changes.
        self._files: dict[tuple[str, str, str], str] = {}
        self._quiet = QuietLog(log)

    async def load(self, limit: int | None) -> None:
        """Bound the cache at ``limit`` bytes and rebuild its index from disk (at start)."""
        self.index.limit = limit
        for entry in await asyncio.to_thread(mirror_index.scan, self._root):
            self.index.add(entry)
        await self._evict(keep="")

    @contextlib.contextmanager
    def borrow(self, repo: str) -> Iterator[None]:
        """While held, ``repo``'s mirror is never evicted (a job's workspace borrows from it)."""
        name = self._mirror(repo).name
        self.index.borrow(name)
        try:
            yield
        finally:
            self.index.give_back(name)

    def _mirror(self, repo: str) -> Path:
        return self._root / (hashlib.sha256(repo.encode()).hexdigest()[:24] + ".git")

    async def checkout(self, repo: str, *, ref: str, sha: str | None, workspace: Path) -> Checkout:
        """Check out ``sha`` (or the tip of ``ref``) into ``workspace``; say what it cost."""
        started = time.monotonic()
        mirror = self._mirror(repo)
        known = (repo, sha) in self._known
        async with self._locks.setdefault(repo, asyncio.Lock()):
            update = await self._update(mirror, repo, ref, sha)
        entry = self.index.entries.get(mirror.name)
        await asyncio.to_thread(_skeleton, workspace, mirror, entry, repo)
        # No --end-of-options here: git 2.39's checkout takes it for a path.
        # ``commit`` is a hex id the runner checked or git itself printed.
        try:
            await self._git("checkout", "-q", "--detach", update.commit, cwd=workspace)
        except CheckoutError:
            if not known:  # git looked in the mirror just now: a real failure
                raise
            # The commit was known to be in the mirror, but git's gc prunes
            # objects no ref reaches (a commit of another branch, fetched
            # weeks ago): look again, fetch if need be, and try once more.
            self._known.discard((repo, update.commit))
            async with self._locks[repo]:
                update = await self._update(mirror, repo, ref, sha)
            await self._git("checkout", "-q", "--detach", update.commit, cwd=workspace)
        if update.fetched:
            await self._evict(keep=mirror.name)
        return Checkout(
            sha=update.commit,
            seconds=time.monotonic() - started,
            cold=update.cold,
            fetched=update.fetched or 0,
        )

    async def _update(self, mirror: Path, repo: str, ref: str, sha: str | None) -> _Update:
        """Make sure the mirror has the commit; fetch only when it does not."""
        if sha is not None and (repo, sha) in self._known:
            return _Update(sha)
        cold = False
        if mirror.name not in self.index.entries:
            await asyncio.to_thread(self._home.mkdir, mode=0o700, exist_ok=True)
            found = await asyncio.to_thread(mirror_index.read, mirror)
            if found is None:
                # No templates: no sample hooks (never run anyway) taking disk in every mirror.
                await self._git("init", "-q", "--bare", "--template=", str(mirror), cwd=self._root)
                found = await asyncio.to_thread(mirror_index.made, mirror, repo)
                cold = True
            self.index.add(found)
        if not cold and sha is not None and await self._has(mirror, sha):
            self._known.add((repo, sha))
            return _Update(sha)
        try:
            commit = await self._fetch(mirror, repo, ref, sha)
        except CheckoutError:
            if cold:  # nothing came of it: no empty mirror to list as warm
                self.index.forget(mirror.name)
                await asyncio.to_thread(mirror_index.discard, mirror)
            raise
        self._known.add((repo, commit))
        entry = self.index.entries[mirror.name]
        if entry.filled and entry.sha == commit and entry.repo == repo:
            # The ref's tip is the commit fetched last: git offered it as
            # common ground and got nothing new. Nothing to measure (the
            # walk would be a trivial job's largest cost after git's).
            return _Update(commit, fetched=0)
        fetched = await asyncio.to_thread(mirror_index.record_fetch, entry, repo, commit)
        return _Update(commit, cold=cold, fetched=fetched)

    async def _evict(self, *, keep: str) -> None:
        """Evict least recently used mirrors until the cache fits its bound."""
        for entry in self.index.victims(keep):
            lock = self._locks.get(entry.repo)
            if lock is not None and lock.locked():
                continue  # a checkout is at it
            async with lock or contextlib.nullcontext():
                if self.index.users.get(entry.folder.name) or (
                    self.index.entries.get(entry.folder.name) is not entry
                ):
                    continue  # borrowed, or gone, meanwhile
                self.index.forget(entry.folder.name)
                self._known = {k for k in self._known if k[0] != entry.repo}
                self._files = {k: v for k, v in self._files.items() if k[0] != entry.repo}
                await asyncio.to_thread(mirror_index.discard, entry.folder)
            log.info(
                "mirror cache: evicted %s (%d MiB, unused for %.0fs)",
                entry.repo or entry.folder.name,
                entry.size >> 20,
                time.time() - entry.used_at,
            )
        limit = self.index.limit
        if limit is not None and self.index.total > limit:
            self._quiet.warning(
                "over-bound",
                "mirror cache: %d MiB held, over its bound of %d MiB: the rest is in use",
                self.index.total >> 20,
                limit >> 20,
            )

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
        return await run_git(
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
