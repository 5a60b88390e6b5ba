"""The allow-list of runner keys: a directory of public key files, one per runner.

Each ``*.key`` file in the directory is a CURVE public key (``keys``) whose
metadata names the one runner id it belongs to (``runner-id``) and,
optionally, the labels the operator pins for it (``labels = "k=v,k=v"``:
they replace whatever the runner claims in READY). One key is one id and one
id is one key: entries that break this are all refused with a logged reason
(failing closed: a duplicate is an operator's mistake that must show, not a
coin toss between two keys).

The dispatcher polls the directory (``scan`` about once a second, names,
sizes, mtimes and inodes) and applies a changed listing at once: trusting a
key needs no restart, and neither does revoking one (the pool drops the
links of keys that are no longer listed).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from narwhal.errors import ConfigError, NarwhalError
from narwhal.mesh.keys import PUBLIC_SUFFIX, read_public, write_public

log = logging.getLogger(__name__)

RUNNER_ID = "runner-id"
LABELS = "labels"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True, slots=True)
class Entry:
    """One trusted runner: its key, its id and (if pinned) its labels."""

    runner_id: str
    key: bytes
    #: Labels the operator pinned; None: the runner's READY says.
    labels: dict[str, str] | None
    path: Path


@dataclass(frozen=True, slots=True)
class Listing:
    """What the directory holds at one moment: entries, and files refused with why."""

    entries: tuple[Entry, ...] = ()
    problems: tuple[str, ...] = ()
    signature: tuple[tuple[str, int, int, int], ...] = field(default=(), compare=False)


def parse_labels(text: str) -> dict[str, str]:
    labels = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"labels must look like key=value,key=value; got {item!r}")
        labels[key.strip()] = value.strip()
    return labels


def signature(directory: Path) -> tuple[tuple[str, int, int, int], ...]:
    """The key files of ``directory`` (names, mtimes, sizes, inodes): what a poll compares."""
    found = []
    try:
        with os.scandir(directory) as it:
            for item in it:
                if item.name.endswith(PUBLIC_SUFFIX) and not item.name.startswith("."):
                    st = item.stat()
                    found.append((item.name, st.st_mtime_ns, st.st_size, st.st_ino))
    except FileNotFoundError:
        return ()
    except OSError as e:
        raise ConfigError(f"cannot read the trusted keys in {directory}: {e}") from None
    return tuple(sorted(found))


def _entry(path: Path) -> Entry:
    public = read_public(path)
    runner_id = public.metadata.get(RUNNER_ID, "").strip()
    if not runner_id:
        raise ConfigError(f"{path}: no {RUNNER_ID} in its metadata (use narwhal keys trust)")
    labels = public.metadata.get(LABELS)
    pinned = parse_labels(labels) if labels is not None else None
    return Entry(runner_id=runner_id, key=public.key, labels=pinned, path=path)


def scan(directory: Path, known: tuple[tuple[str, int, int, int], ...] = ()) -> Listing | None:
    """The directory's entries; None when nothing changed since ``known`` (a signature)."""
    listed = signature(directory)
    if known and listed == known:
        return None
    entries, problems = [], []
    for name, *_ in listed:
        try:
            entries.append(_entry(directory / name))
        except NarwhalError as e:
            problems.append(str(e))
    return _unique(entries, problems, listed)


def _unique(
    entries: list[Entry], problems: list[str], signature: tuple[tuple[str, int, int, int], ...]
) -> Listing:
    """Refuse every entry that shares its key or its id with another."""
    by_key: dict[bytes, list[Entry]] = {}
    by_id: dict[str, list[Entry]] = {}
    for entry in entries:
        by_key.setdefault(entry.key, []).append(entry)
        by_id.setdefault(entry.runner_id, []).append(entry)
    kept = []
    for entry in entries:
        same_key, same_id = by_key[entry.key], by_id[entry.runner_id]
        if len(same_key) > 1:
            ids = ", ".join(sorted(e.runner_id for e in same_key))
            problems.append(f"{entry.path}: refused: its key is also given to {ids}")
        elif len(same_id) > 1:
            files = ", ".join(sorted(e.path.name for e in same_id))
            problems.append(
                f"{entry.path}: refused: runner id {entry.runner_id!r} has 2+ keys ({files})"
            )
        else:
            kept.append(entry)
    return Listing(entries=tuple(kept), problems=tuple(problems), signature=signature)


class TrustedRunners:
    """The allow-list as the dispatcher uses it: look-ups by key and by id."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.listing = Listing()
        self.by_key: dict[bytes, Entry] = {}
        self.by_id: dict[str, Entry] = {}
        #: Bumped by every change that was applied.
        self.generation = 0

    def apply(self, listing: Listing | None) -> bool:
        """Use ``listing`` (from ``scan``); True when what is trusted changed."""
        if listing is None:
            return False
        before, self.listing = self.listing, listing
        for problem in listing.problems:
            if problem not in before.problems:
                log.warning("trusted runner keys: %s", problem)
        if listing == before:
            return False
        self.by_key = {e.key: e for e in listing.entries}
        self.by_id = {e.runner_id: e for e in listing.entries}
        self.generation += 1
        log.info(
            "trusted runner keys in %s: %d runner(s)%s",
            self.directory,
            len(self.by_key),
            f", {len(listing.problems)} file(s) refused" if listing.problems else "",
        )
        return True

    def load(self) -> bool:
        return self.apply(scan(self.directory, self.listing.signature))


# what ``narwhal keys trust`` and ``revoke`` do


def file_for(directory: Path, runner_id: str) -> Path:
    """The file of ``runner_id``'s entry: its id made safe for a file name."""
    safe = _UNSAFE.sub("_", runner_id)[:100] or "_"
    if safe != runner_id:  # two ids that read alike must not share a file
        safe += "-" + hashlib.sha256(runner_id.encode()).hexdigest()[:8]
    return directory / f"{safe}{PUBLIC_SUFFIX}"


def trust(
    directory: Path, key: bytes, runner_id: str, labels: Mapping[str, str] | None = None
) -> Path:
    """Add ``key`` as runner ``runner_id``; refuses a key or id already trusted otherwise."""
    if not runner_id or len(runner_id) > 128 or not runner_id.isprintable():
        raise ConfigError(f"--id {runner_id!r}: expected a printable runner id")
    current = scan(directory)
    assert current is not None  # noqa: S101 - no signature given: always a listing
    for entry in current.entries:
        if entry.key == key and entry.runner_id != runner_id:
            raise ConfigError(
                f"that key is already trusted as runner {entry.runner_id!r} ({entry.path}): "
                f"one key, one runner id; revoke it first"
            )
        if entry.runner_id == runner_id and entry.key != key:
            raise ConfigError(
                f"runner {runner_id!r} already has another key ({entry.path}); "
                f"run narwhal keys revoke {runner_id} first"
            )
    metadata = {RUNNER_ID: runner_id}
    if labels is not None:
        metadata[LABELS] = ",".join(f"{k}={v}" for k, v in labels.items())
    path = file_for(directory, runner_id)
    directory.mkdir(parents=True, exist_ok=True)
    write_public(path, key, metadata)
    return path


def revoke(directory: Path, runner_id: str) -> list[Path]:
    """Remove every file that trusts a key as ``runner_id``; the files removed."""
    removed = []
    for name, *_ in signature(directory):
        path = directory / name
        try:
            entry = _entry(path)
        except NarwhalError:
            continue
        if entry.runner_id == runner_id:
            path.unlink()
            removed.append(path)
    if not removed:
        raise ConfigError(f"no trusted key for runner {runner_id!r} in {directory}")
    return removed
