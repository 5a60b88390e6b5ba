"""Per-repository secrets in a real SQLite store: sealed at rest, opened only for their jobs."""

from __future__ import annotations

import asyncio
import sqlite3
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from narwhal.dispatcher.records import JobRecord
from narwhal.dispatcher.store.base import Write
from narwhal.dispatcher.store.sqlite import SqliteStore
from narwhal.dispatcher.vault import KEY_FILE, Vault, load_key
from narwhal.errors import ConfigError, NotFound, SecretError
from narwhal.secret_rules import MAX_SECRETS_PER_REPO

VALUE = "plain-text-value-7f3a9c"
REPO = "https://user:pw@Git.Example/octo/hello.git"
KEY = "https://git.example/octo/hello"


class Opened:
    """A vault over a real SQLite store, its coroutines run to the end (the tests stay plain)."""

    def __init__(self, data: Path, runner: asyncio.Runner) -> None:
        self.runner = runner
        self.store = SqliteStore(data / "narwhal.db")
        runner.run(self.store.open())

        async def write(*writes: Write) -> list[Any]:  # the dispatcher's ``write``
            return await self.store.apply(writes)

        self.vault = Vault(load_key(data), write)
        runner.run(self.vault.load(self.store))

    def put(self, repo: str, name: str, value: str) -> tuple[str, bool]:
        return self.runner.run(self.vault.put(repo, name, value))

    def delete(self, repo: str, name: str) -> str:
        return self.runner.run(self.vault.delete(repo, name))

    def set_forks(self, repo: str, allowed: bool) -> str:
        return self.runner.run(self.vault.set_forks(repo, allowed))

    def __getattr__(self, name: str) -> Any:  # what is not a coroutine: for_job, listing, _sealer
        return getattr(self.vault, name)

    def close(self) -> None:
        self.runner.run(self.store.close())


@pytest.fixture
def runner() -> Iterator[asyncio.Runner]:
    with asyncio.Runner() as running:
        yield running


def _vault(data: Path, runner: asyncio.Runner) -> tuple[Opened, Opened]:
    """The vault, and its store (one object: ``store.close()`` closes it)."""
    opened = Opened(data, runner)
    return opened, opened


def _job(repo: str, fork_of: str | None = None) -> JobRecord:
    now = time.time()
    return JobRecord(
        id=1,
        repo=repo,
        ref="HEAD",
        sha=None,
        event="pull_request" if fork_of else "push",
        labels={},
        matrix=None,
        parent_id=None,
        pipeline=None,
        state="queued",
        reason="",
        attempt=1,
        runner_id=None,
        cancel_requested=False,
        created_at=now,
        updated_at=now,
        started_at=None,
        finished_at=None,
        fork_of=fork_of,
    )


def test_the_key_file_is_made_private_and_kept(tmp_path: Path) -> None:
    data = tmp_path / "data"
    key = load_key(data)
    assert stat.S_IMODE((data / KEY_FILE).stat().st_mode) == 0o600
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert load_key(data) == key and len(key) == 32
    (data / KEY_FILE).chmod(0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        load_key(data)
    (data / KEY_FILE).chmod(0o600)
    (data / KEY_FILE).write_text("not a key\n")
    with pytest.raises(ConfigError, match="not a secrets key"):
        load_key(data)


def test_values_are_sealed_at_rest_and_reach_only_their_repository(
    tmp_path: Path, runner: asyncio.Runner
) -> None:
    vault, store = _vault(tmp_path, runner)
    assert vault.put(REPO, "API_TOKEN", VALUE) == (KEY, True)
    assert vault.put(KEY + ".git/", "API_TOKEN", VALUE) == (KEY, False)  # same repository
    assert vault.for_job(_job("https://git.example/octo/hello.git")) == {"API_TOKEN": VALUE}
    assert vault.for_job(_job("ssh://git.example/octo/hello")) == {}  # another scheme
    assert vault.for_job(_job("https://git.example/octo/other")) == {}
    files = [p for p in tmp_path.iterdir() if p.name.startswith("narwhal.db")]
    assert any(p.name.endswith("-wal") for p in files)
    for path in files:
        assert VALUE.encode() not in path.read_bytes(), path
    listing = vault.listing(REPO)
    assert listing["repo"] == KEY and listing["forks"] is False
    assert [s["name"] for s in listing["secrets"]] == ["API_TOKEN"]
    assert VALUE not in repr(listing)
    store.close()


def test_forks_get_nothing_unless_their_base_allows_it(
    tmp_path: Path, runner: asyncio.Runner
) -> None:
    vault, store = _vault(tmp_path, runner)
    vault.put(REPO, "API_TOKEN", VALUE)
    fork = _job("https://git.example/attacker/hello.git", fork_of=KEY)
    assert vault.for_job(fork) == {}
    # A fork's pull request whose clone URL is the base's own still gets nothing.
    assert vault.for_job(_job(REPO, fork_of=KEY)) == {}
    vault.set_forks(REPO, True)
    assert vault.for_job(fork) == {"API_TOKEN": VALUE}
    vault.set_forks(REPO, False)
    assert vault.for_job(fork) == {}
    store.close()


def test_a_restart_reads_back_what_was_stored(tmp_path: Path, runner: asyncio.Runner) -> None:
    vault, store = _vault(tmp_path, runner)
    vault.put(REPO, "A_TOKEN", VALUE)
    vault.put(REPO, "B_TOKEN", VALUE + "-b")
    vault.set_forks(REPO, True)
    vault.delete(REPO, "A_TOKEN")
    store.close()
    again, store = _vault(tmp_path, runner)
    assert again.for_job(_job(REPO)) == {"B_TOKEN": VALUE + "-b"}
    assert again.listing(REPO)["forks"] is True
    with pytest.raises(NotFound, match="has no secret A_TOKEN"):
        again.delete(REPO, "A_TOKEN")
    store.close()


def test_a_row_moved_to_another_repository_or_another_key_does_not_open(
    tmp_path: Path, runner: asyncio.Runner
) -> None:
    vault, store = _vault(tmp_path, runner)
    vault.put(REPO, "API_TOKEN", VALUE)
    vault.put("/srv/other", "API_TOKEN", "other-value")
    store.close()
    # Someone with write access to the file copies the ciphertext to their repository.
    db = sqlite3.connect(tmp_path / "narwhal.db")
    with db:
        db.execute(
            "UPDATE secrets SET nonce = (SELECT nonce FROM secrets WHERE repo = ?),"
            " ciphertext = (SELECT ciphertext FROM secrets WHERE repo = ?) WHERE repo = ?",
            (KEY, KEY, "/srv/other"),
        )
    db.close()
    again, store = _vault(tmp_path, runner)  # logs the row that does not open, skips it
    assert again.for_job(_job("/srv/other")) == {}
    assert again.for_job(_job(REPO)) == {"API_TOKEN": VALUE}
    store.close()
    (tmp_path / KEY_FILE).unlink()
    other_key, store = _vault(tmp_path, runner)  # a new key: nothing opens
    assert other_key.for_job(_job(REPO)) == {}
    store.close()
    with pytest.raises(SecretError, match="does not decrypt"):
        other_key._sealer.open(KEY, "API_TOKEN", b"\x00" * 12, b"\x00" * 32)


@pytest.mark.parametrize(
    ("repo", "name", "value", "error"),
    [
        (REPO, "1BAD", VALUE, "expected a variable name"),
        (REPO, "OK", "abc", "shorter than 4"),
        ("relative/path", "OK", VALUE, "expected a clone URL or an absolute path"),
        ("--upload-pack=x", "OK", VALUE, "expected a clone URL or an absolute path"),
        ("/srv/a\nb", "OK", VALUE, "expected a clone URL or an absolute path"),
    ],
)
def test_bad_input_is_refused(
    tmp_path: Path, runner: asyncio.Runner, repo: str, name: str, value: str, error: str
) -> None:
    vault, store = _vault(tmp_path, runner)
    with pytest.raises(ConfigError, match=error):
        vault.put(repo, name, value)
    assert runner.run(store.store.secrets()) == []
    store.close()


def test_a_repository_holds_a_bounded_number_of_secrets(
    tmp_path: Path, runner: asyncio.Runner
) -> None:
    vault, store = _vault(tmp_path, runner)
    for i in range(MAX_SECRETS_PER_REPO):
        vault.put(REPO, f"S{i}", VALUE)
    with pytest.raises(ConfigError, match=f"already has {MAX_SECRETS_PER_REPO} secrets"):
        vault.put(REPO, "ONE_MORE", VALUE)
    vault.put(REPO, "S0", VALUE + "x")  # replacing one is fine
    store.close()


def test_a_job_whose_repository_has_no_key_gets_nothing_and_nothing_raises(
    tmp_path: Path, runner: asyncio.Runner
) -> None:
    vault, store = _vault(tmp_path, runner)
    vault.put(REPO, "API_TOKEN", VALUE)
    assert vault.for_job(_job("https://host:99999/x")) == {}  # no valid URL, no key
    store.close()
