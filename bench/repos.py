"""Generated git repositories with real history, for benchmarks: made fast, cached.

Each repository is bare, on one branch (``main``), and has ``commits``
commits: the first adds ``narwhal.yml`` (one step, ``true``), and every
commit rewrites one of ``FILES`` files with fresh random bytes (which no
compression or delta shrinks), so the history weighs ``size_mb`` and a
checkout writes only the last version of each file. ``git fast-import``
writes it in one pass: a 3,000-commit, 30 MB repository takes seconds, where
a ``git commit`` loop takes minutes.

Contents and dates come from a seed, so the same repository (and the same
commits appended later, ``append``) has the same commit ids every time.
A made repository holds a ``narwhal-bench.json`` naming its shape and head;
``ensure`` reuses it while that still matches, and makes it again otherwise.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

#: Bump when what a repository holds changes: older caches are made again.
VERSION = 1
BRANCH = "refs/heads/main"
PIPELINE = b"steps:\n  - name: noop\n    command: 'true'\n"
#: Files a commit rewrites one of, in turn: the checkout's tree is FILES blobs.
FILES = 64
#: The first commit's date; commit n is n seconds later.
EPOCH = 1_700_000_000
MARKER = "narwhal-bench.json"

#: git as the benchmark runs it: no user or system configuration.
GIT_ENV = {
    **os.environ,
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_TERMINAL_PROMPT": "0",
}


@dataclass(frozen=True, slots=True)
class Shape:
    """How much history a generated repository has."""

    commits: int
    size_mb: float

    @property
    def blob_bytes(self) -> int:
        """Bytes each commit writes, so that the history weighs ``size_mb``."""
        return max(1, math.ceil(self.size_mb * 2**20 / self.commits))

    @property
    def folder(self) -> str:
        return f"c{self.commits}-s{self.size_mb:g}mb-v{VERSION}"


def cache_root() -> Path:
    """Where generated repositories are kept: $NARWHAL_BENCH_CACHE or ~/.cache."""
    found = os.environ.get("NARWHAL_BENCH_CACHE")
    return Path(found) if found else Path.home() / ".cache" / "narwhal-bench" / "repos"


def git(*args: str, cwd: Path | None = None) -> str:
    done = subprocess.run(
        ["git", *args], cwd=cwd, env=GIT_ENV, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout.strip()


def disk_bytes(path: Path) -> int:
    """Bytes of the files under ``path`` (apparent sizes; 0 if it is not there)."""
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except FileNotFoundError:  # a git process removed it meanwhile
                pass
    return total


def _commits(
    rng: random.Random, first: int, count: int, size: int, *, date: int
) -> Iterator[bytes]:
    """A fast-import stream of ``count`` commits, numbered from ``first``."""
    for n in range(first, first + count):
        message = f"change {n}\n".encode()
        yield b"commit %s\n" % BRANCH.encode()
        yield b"committer bench <bench@narwhal.invalid> %d +0000\n" % (date + n - first)
        yield b"data %d\n%s" % (len(message), message)
        if n == first and n > 0:  # continue the branch the repository has
            yield b"from %s^0\n" % BRANCH.encode()
        if n == 0:
            yield b"M 100644 inline narwhal.yml\ndata %d\n%s\n" % (len(PIPELINE), PIPELINE)
        yield b"M 100644 inline data/f%02d.bin\ndata %d\n" % (n % FILES, size)
        yield rng.randbytes(size) + b"\n"


def _fast_import(repo: Path, stream: Iterable[bytes]) -> None:
    importer = subprocess.Popen(
        ["git", "fast-import", "--quiet", "--date-format=raw"],
        cwd=repo,
        env=GIT_ENV,
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert importer.stdin is not None and importer.stderr is not None
    try:
        for chunk in stream:
            importer.stdin.write(chunk)
        importer.stdin.close()
        error = importer.stderr.read().decode(errors="replace")
    finally:
        if importer.poll() is None and not importer.stdin.closed:
            importer.kill()
        importer.wait()
        importer.stderr.close()
    if importer.returncode != 0:
        raise RuntimeError(f"git fast-import in {repo}: {error.strip()}")


def _valid(path: Path, index: int, shape: Shape) -> bool:
    try:
        marker = json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return False
    wanted = {"version": VERSION, "index": index, "commits": shape.commits}
    if any(marker.get(k) != v for k, v in wanted.items()) or marker.get("blob") != shape.blob_bytes:
        return False
    try:
        head = git("rev-parse", "--verify", "-q", BRANCH, cwd=path)
        git("cat-file", "-e", f"{head}^{{tree}}", cwd=path)
    except RuntimeError:
        return False
    return bool(head == marker.get("head"))


def _make(path: Path, index: int, shape: Shape) -> None:
    """Generate the repository in a folder beside ``path``, then rename it into place."""
    building = path.with_name(f"{path.name}.building-{os.getpid()}")
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    try:
        git("init", "-q", "--bare", "--initial-branch=main", str(building))
        rng = random.Random(f"narwhal-bench-repo-{index}")
        _fast_import(building, _commits(rng, 0, shape.commits, shape.blob_bytes, date=EPOCH))
        head = git("rev-parse", BRANCH, cwd=building)
        marker: dict[str, int | str] = {"version": VERSION, "index": index, "head": head}
        marker |= {"commits": shape.commits, "blob": shape.blob_bytes}
        (building / MARKER).write_text(json.dumps(marker) + "\n")
        shutil.rmtree(path, ignore_errors=True)
        building.rename(path)
    finally:
        shutil.rmtree(building, ignore_errors=True)


@dataclass(frozen=True, slots=True)
class Made:
    """The repositories ``ensure`` returns, and what making them cost."""

    paths: list[Path]
    generated: int
    seconds: float


def ensure(
    count: int, shape: Shape, *, root: Path | None = None, say: Callable[[str], None] = print
) -> Made:
    """``count`` repositories of ``shape`` under ``root``: reused when valid, else made."""
    base = (root or cache_root()) / shape.folder
    paths, generated, started = [], 0, time.monotonic()
    for index in range(count):
        path = base / f"repo-{index}.git"
        if not _valid(path, index, shape):
            began = time.monotonic()
            _make(path, index, shape)
            generated += 1
            size = disk_bytes(path) / 1e6
            say(f"# generated {path} in {time.monotonic() - began:.1f} s ({size:.1f} MB)")
        paths.append(path)
    return Made(paths=paths, generated=generated, seconds=time.monotonic() - started)


def copy(source: Path, target: Path) -> None:
    """A bare clone of ``source`` sharing its objects by hard links (instant, and
    commits appended to the copy leave the source untouched)."""
    git("clone", "-q", "--bare", "--local", str(source), str(target))


def append(repo: Path, count: int, shape: Shape, *, seed: str, first: int) -> list[str]:
    """Add ``count`` commits to ``repo``'s branch (numbered from ``first``, contents
    from ``seed``); return their ids, oldest first."""
    if count == 0:
        return []
    rng = random.Random(seed)
    date = EPOCH + first
    _fast_import(repo, _commits(rng, first, count, shape.blob_bytes, date=date))
    return git("rev-list", "--reverse", f"-{count}", BRANCH, cwd=repo).split()


def head(repo: Path) -> str:
    return git("rev-parse", BRANCH, cwd=repo)


def main() -> None:
    """``python -m bench.repos``: make (or reuse) the repositories; print what was done.

    The last line is JSON: ``{"generated", "paths", "heads"}`` (the tests read it).
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=8)
    parser.add_argument("--commits", type=int, default=3000)
    parser.add_argument("--size-mb", type=float, default=30.0)
    parser.add_argument("--root", type=Path, help="cache folder (default: cache_root())")
    args = parser.parse_args()
    made = ensure(args.count, Shape(commits=args.commits, size_mb=args.size_mb), root=args.root)
    heads = [head(path) for path in made.paths]
    paths = [str(path) for path in made.paths]
    print(json.dumps({"generated": made.generated, "paths": paths, "heads": heads}))


if __name__ == "__main__":
    main()
