"""The mirror cache's bound, its LRU order and what checkouts cost, against real repositories."""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from narwhal.errors import CheckoutError
from narwhal.runner import mirror_index
from narwhal.runner.checkout import Checkout, MirrorCache
from narwhal.runner.mirror_index import MIN_DEFAULT, default_limit, tree_size
from tests.support.repos import Repo

#: Each repository holds this much that does not compress.
BLOB = 400 << 10


def _bulky(make_repo: Callable[..., Repo]) -> Repo:
    """A repository of about ``BLOB`` bytes on disk, whatever git's compression."""
    noise = base64.b64encode(os.urandom(BLOB)).decode()[:BLOB]
    return make_repo({"blob.txt": noise, "a.txt": "1\n"})


class Jobs:
    """Checkouts into fresh workspaces of one cache, as a runner's jobs make them."""

    def __init__(self, cache: MirrorCache, tmp_path: Path) -> None:
        self.cache = cache
        self._tmp = tmp_path
        self._count = 0

    async def run(self, repo: Repo, *, sha: str | None = None) -> Checkout:
        self._count += 1
        workspace = self._tmp / f"ws{self._count}"
        with self.cache.borrow(str(repo.path)):
            return await self.cache.checkout(
                str(repo.path), ref="refs/heads/main", sha=sha, workspace=workspace
            )

    def warm(self) -> list[str]:
        """The repositories in the cache, the most recently used first."""
        return [entry.repo for entry in self.cache.index.recent()]


def _cache(tmp_path: Path, limit: int | None = None) -> MirrorCache:
    root = tmp_path / "mirrors"
    root.mkdir(exist_ok=True)
    return MirrorCache(root, limit=limit, allow_local=True)


def test_a_checkout_says_what_it_cost(make_repo: Callable[..., Repo], tmp_path: Path) -> None:
    repo = _bulky(make_repo)
    jobs = Jobs(_cache(tmp_path), tmp_path)

    async def scenario() -> tuple[Checkout, Checkout, Checkout]:
        first = await jobs.run(repo)
        again = await jobs.run(repo, sha=first.sha)
        repo.commit({"a.txt": "2\n"})
        newer = await jobs.run(repo)
        return first, again, newer

    first, again, newer = asyncio.run(scenario())
    assert first.cold and first.fetched >= BLOB // 2
    assert first.seconds > 0
    # A commit the mirror has: nothing fetched, nothing cloned.
    assert not again.cold and again.fetched == 0 and again.sha == first.sha
    # A new commit: only what is new comes, into the warm mirror.
    assert not newer.cold and 0 < newer.fetched < BLOB // 4
    assert jobs.cache.index.recent()[0].sha == newer.sha


def test_a_checkout_that_fetches_nothing_measures_nothing(
    make_repo: Callable[..., Repo], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = make_repo({"a.txt": "1\n"})
    jobs = Jobs(_cache(tmp_path), tmp_path)
    sha = asyncio.run(jobs.run(repo)).sha
    walks: list[Path] = []
    monkeypatch.setattr(mirror_index, "tree_size", lambda folder: walks.append(folder) or 0)
    assert asyncio.run(jobs.run(repo, sha=sha)).fetched == 0
    # The branch's tip, fetched again: git brings nothing new, nothing is walked.
    assert asyncio.run(jobs.run(repo)).fetched == 0
    assert walks == []


def test_past_its_bound_the_least_recently_used_mirror_goes(
    make_repo: Callable[..., Repo], tmp_path: Path
) -> None:
    a, b, c = (_bulky(make_repo) for _ in range(3))
    jobs = Jobs(_cache(tmp_path), tmp_path)

    async def scenario() -> tuple[Checkout, Checkout]:
        await jobs.run(a)
        await jobs.run(b)
        # Room for two mirrors, not three.
        jobs.cache.index.limit = jobs.cache.index.total + BLOB // 2
        await jobs.run(c)
        assert jobs.warm() == [str(c.path), str(b.path)]
        assert not any(path.name.startswith(".") for path in (tmp_path / "mirrors").iterdir())
        b.commit({"a.txt": "2\n"})
        warm = await jobs.run(b)  # b is kept, c goes now
        cloned = await jobs.run(a)
        return warm, cloned

    warm, cloned = asyncio.run(scenario())
    assert not warm.cold and warm.fetched < BLOB // 4
    assert cloned.cold and cloned.fetched >= BLOB // 2
    assert jobs.warm() == [str(a.path), str(b.path)]
    assert jobs.cache.index.total <= jobs.cache.index.limit  # type: ignore[operator]
    assert len(list((tmp_path / "mirrors").glob("*.git"))) == 2


def test_a_mirror_a_running_job_borrows_is_never_evicted(
    make_repo: Callable[..., Repo], tmp_path: Path
) -> None:
    a, b, c = (_bulky(make_repo) for _ in range(3))
    jobs = Jobs(_cache(tmp_path), tmp_path)

    async def scenario() -> None:
        await jobs.run(a)
        await jobs.run(b)
        jobs.cache.index.limit = jobs.cache.index.total + BLOB // 2
        # a is the least recently used, but a job's workspace still borrows
        # its objects: b goes instead.
        with jobs.cache.borrow(str(a.path)):
            await jobs.run(c)
            assert jobs.warm() == [str(c.path), str(a.path)]
        again = await jobs.run(a)
        assert not again.cold

    asyncio.run(scenario())


def test_the_warm_list_survives_a_restart(make_repo: Callable[..., Repo], tmp_path: Path) -> None:
    a, b, c = (make_repo({"f": str(n)}) for n in range(3))
    jobs = Jobs(_cache(tmp_path), tmp_path)

    async def before() -> list[tuple[str, str, int]]:
        for repo in (a, b, c, a):
            await jobs.run(repo)
        return [(e.repo, e.sha, e.size) for e in jobs.cache.index.recent()]

    listed = asyncio.run(before())
    assert [repo for repo, _, _ in listed] == [str(a.path), str(c.path), str(b.path)]

    restarted = _cache(tmp_path)
    asyncio.run(restarted.load(None))
    again = [(e.repo, e.sha, e.size) for e in restarted.index.recent()]
    assert again == listed
    # What it lists, it has: a known commit is checked out without a fetch.
    later = Jobs(restarted, tmp_path / "later")
    (tmp_path / "later").mkdir()
    result = asyncio.run(later.run(b, sha=listed[2][1]))
    assert not result.cold and result.fetched == 0


def test_a_smaller_bound_at_start_evicts_at_once(
    make_repo: Callable[..., Repo], tmp_path: Path
) -> None:
    a, b = (_bulky(make_repo) for _ in range(2))
    jobs = Jobs(_cache(tmp_path), tmp_path)

    async def before() -> None:
        await jobs.run(a)
        await jobs.run(b)

    asyncio.run(before())
    restarted = _cache(tmp_path)
    asyncio.run(restarted.load(jobs.cache.index.total - BLOB // 2))
    assert [e.repo for e in restarted.index.recent()] == [str(b.path)]


def test_a_clone_that_fails_leaves_no_mirror(tmp_path: Path) -> None:
    jobs = Jobs(_cache(tmp_path), tmp_path)
    with pytest.raises(CheckoutError):
        asyncio.run(_missing(jobs, tmp_path))
    assert list((tmp_path / "mirrors").iterdir()) == []
    assert jobs.cache.index.entries == {}


async def _missing(jobs: Jobs, tmp_path: Path) -> Checkout:
    missing = str(tmp_path / "no-such-repo")
    with jobs.cache.borrow(missing):
        return await jobs.cache.checkout(
            missing, ref="refs/heads/main", sha=None, workspace=tmp_path / "ws"
        )


def test_a_mirror_of_an_older_runner_is_adopted(
    make_repo: Callable[..., Repo], tmp_path: Path
) -> None:
    repo = make_repo({"a.txt": "1\n"})
    jobs = Jobs(_cache(tmp_path), tmp_path)
    sha = asyncio.run(jobs.run(repo)).sha
    for meta in (tmp_path / "mirrors").glob("*.git/" + mirror_index.META):
        meta.unlink()  # as an older runner left it: nothing says whose it is
    restarted = _cache(tmp_path)
    asyncio.run(restarted.load(None))
    assert restarted.index.recent() == []  # not listed: its repository is not known
    assert restarted.index.total > 0  # but counted against the bound
    later = Jobs(restarted, tmp_path / "later")
    (tmp_path / "later").mkdir()
    assert not asyncio.run(later.run(repo, sha=sha)).cold
    assert [e.repo for e in restarted.index.recent()] == [str(repo.path)]


def test_sizes_and_the_default_bound(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(b"x" * 10000)
    assert tree_size(tmp_path / "d") >= 10000
    assert tree_size(tmp_path / "gone") == 0
    assert default_limit(tmp_path) >= MIN_DEFAULT
