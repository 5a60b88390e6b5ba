"""What a runner's mirror cache holds, and which mirrors it lets go past its bound.

Each mirror folder holds ``narwhal.json``: the repository it mirrors and
the commit fetched into it last. The file's modification time is the
mirror's last use: every checkout touches it. Sizes are measured (the
folder walked) at start and after each fetch, never on a checkout that
fetched nothing. So a restarted runner rebuilds the whole index, in
least-recently-used order, from disk (``scan``), and reports its warm
repositories in its first READY.

The bound is kept after each fetch (``victims``): the least recently used
mirrors go first, but never one a running job borrows objects from (its
workspace's ``objects/info/alternates`` names the mirror: removing it would
break the job's git) and never the one just used. Evicting renames the
folder first, so that a runner stopped halfway leaves no mirror that looks
whole; ``scan`` removes what such a stop left.

The index itself (``MirrorIndex``) lives on the event loop; the functions
that touch the disk block, and the cache calls them in a thread.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

#: The file in each mirror that says what it is (its mtime: the last use).
META = "narwhal.json"
#: A mirror being removed is renamed to end so first.
_EVICTED = ".evicted"
#: The default bound: this share of the work folder's free disk, at least ``MIN_DEFAULT``.
DEFAULT_SHARE = 4
MIN_DEFAULT = 256 << 20


@dataclass(slots=True)
class Entry:
    """One mirror: the repository it holds ("" for a mirror an older runner made
    that no job has used since), the commit fetched last, bytes on disk, last use."""

    folder: Path
    repo: str
    sha: str
    size: int
    used_at: float
    #: False while its first clone runs: not warm yet.
    filled: bool = True


def default_limit(work: Path) -> int:
    """The bound when none is configured: a quarter of ``work``'s free disk, at least 256 MiB."""
    free = shutil.disk_usage(work).free
    return max(MIN_DEFAULT, free // DEFAULT_SHARE)


def tree_size(folder: Path) -> int:
    """Bytes the files under ``folder`` take on disk (blocks, as ``du`` counts)."""
    total = 0
    pending = [str(folder)]
    while pending:
        try:
            listing = os.scandir(pending.pop())
        except OSError:  # vanished meanwhile (git's gc, an eviction)
            continue
        with listing:
            for item in listing:
                try:
                    if item.is_dir(follow_symlinks=False):
                        pending.append(item.path)
                    else:
                        stat = item.stat(follow_symlinks=False)
                        total += getattr(stat, "st_blocks", 0) * 512 or stat.st_size
                except OSError:
                    continue
    return total


class MirrorIndex:
    """The mirrors under one folder, their sizes and uses; the LRU choice of what goes.

    Changed on the event loop only (``add``, ``forget``), which also reads it.

    ``limit`` None: no bound. ``users`` counts, per mirror folder name, the
    jobs that borrow its objects (``borrow``/``give_back``).
    """

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit
        self.entries: dict[str, Entry] = {}
        self.users: dict[str, int] = {}

    @property
    def total(self) -> int:
        return sum(entry.size for entry in self.entries.values())

    def recent(self) -> list[Entry]:
        """The mirrors of known repositories, the most recently used first."""
        known = (entry for entry in self.entries.values() if entry.repo and entry.filled)
        return sorted(known, key=lambda entry: entry.used_at, reverse=True)

    def borrow(self, name: str) -> None:
        self.users[name] = self.users.get(name, 0) + 1

    def give_back(self, name: str) -> None:
        left = self.users.get(name, 0) - 1
        if left > 0:
            self.users[name] = left
        else:
            self.users.pop(name, None)

    def victims(self, keep: str) -> list[Entry]:
        """Mirrors to evict so the total fits the bound, least recently used first.

        Never ``keep`` (the mirror just used) nor one a job borrows; when
        those alone pass the bound, the cache stays over it until they are free.
        """
        if self.limit is None:
            return []
        excess = self.total - self.limit
        chosen: list[Entry] = []
        for entry in sorted(self.entries.values(), key=lambda entry: entry.used_at):
            if excess <= 0:
                break
            name = entry.folder.name
            if name == keep or self.users.get(name):
                continue
            chosen.append(entry)
            excess -= entry.size
        return chosen

    def add(self, entry: Entry) -> None:
        self.entries[entry.folder.name] = entry

    def forget(self, name: str) -> None:
        self.entries.pop(name, None)


# Blocking, on disk: the cache calls these in a thread. They never change
# the index's mappings (the loop reads them meanwhile), only entries.


def scan(root: Path) -> list[Entry]:
    """The mirrors under ``root``, measured; half-evicted leftovers removed."""
    for folder in sorted(root.glob("*.git" + _EVICTED + "-*")):
        shutil.rmtree(folder, ignore_errors=True)
    found = (read(folder) for folder in sorted(root.glob("*.git")))
    return [entry for entry in found if entry is not None]


def read(folder: Path) -> Entry | None:
    """The entry of a mirror found on disk (measured now), or None if there is none."""
    if not folder.is_dir():
        return None
    repo, sha, used_at = _read_meta(folder)
    return Entry(folder=folder, repo=repo, sha=sha, size=tree_size(folder), used_at=used_at)


def made(folder: Path, repo: str) -> Entry:
    """The entry of a mirror just made (empty, not warm until its first fetch)."""
    size = tree_size(folder)
    return Entry(folder=folder, repo=repo, sha="", size=size, used_at=time.time(), filled=False)


def record_fetch(entry: Entry, repo: str, sha: str) -> int:
    """After a fetch: measure the mirror, record it; the bytes it grew by."""
    before = entry.size
    entry.repo, entry.sha, entry.used_at, entry.filled = repo, sha, time.time(), True
    _write_meta(entry)  # first: the size counts it too
    entry.size = tree_size(entry.folder)
    return max(0, entry.size - before)


def record_use(entry: Entry, repo: str) -> None:
    """A checkout used the mirror: the newest in LRU order, here and on disk."""
    entry.used_at = time.time()
    if entry.repo != repo:  # a mirror of an older runner: now it is known
        entry.repo = repo
        _write_meta(entry)
        return
    try:
        os.utime(entry.folder / META, (entry.used_at, entry.used_at))
    except FileNotFoundError:
        _write_meta(entry)


def discard(folder: Path) -> None:
    """Remove a mirror's folder, renamed first: never half a mirror that looks whole."""
    trash = folder.with_name(f"{folder.name}{_EVICTED}-{uuid.uuid4().hex[:8]}")
    try:
        folder.rename(trash)
    except FileNotFoundError:
        return
    shutil.rmtree(trash, ignore_errors=True)


def _read_meta(folder: Path) -> tuple[str, str, float]:
    """The repository, the last commit and the last use that ``folder``'s META records."""
    path = folder / META
    try:
        data = json.loads(path.read_text())
        used_at = path.stat().st_mtime
    except (OSError, ValueError):
        # A mirror of an older runner (or a file cut short): the folder's
        # own time stands for its last use until a job uses it again.
        with contextlib.suppress(OSError):
            return "", "", folder.stat().st_mtime
        return "", "", 0.0
    repo, sha = (data.get(key) if isinstance(data, dict) else None for key in ("repo", "sha"))
    return (repo if isinstance(repo, str) else ""), (sha if isinstance(sha, str) else ""), used_at


def _write_meta(entry: Entry) -> None:
    """Write META whole (a new file renamed over the old), its mtime the last use."""
    path = entry.folder / META
    draft = path.with_name(META + ".new")
    try:
        draft.write_text(json.dumps({"repo": entry.repo, "sha": entry.sha}))
        os.utime(draft, (entry.used_at, entry.used_at))
        draft.replace(path)
    except FileNotFoundError:  # the mirror went meanwhile
        log.debug("mirror %s vanished before its index entry was written", entry.folder)
