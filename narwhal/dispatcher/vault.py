"""Per-repository secrets: sealed at rest in the job store, opened only to dispatch.

Values are sealed with AES-256-GCM (the ``cryptography`` package) under a key
kept beside the store, ``<data-dir>/secrets.key`` (mode 0600, the directory
0700), made at the first start. Every value has a random 96-bit nonce, and its
repository key and name are the associated data: a ciphertext copied into
another repository's row, or under another name, does not open.
``key_version`` records which key sealed a row, for a future rotation.

The store holds only ciphertext. The dispatcher keeps the sealed rows in
memory (loaded at start, updated on every set and delete), so dispatching
reads nothing from the store: a job of a repository without secrets costs a
set lookup, one with secrets the opening of its own values. Plaintext exists
only in the JOB frame being sent (``mesh.protocol.Job.secrets``, kept out of
its repr).

Which secrets a job gets (``for_job``): those of its repository
(``secret_rules.repo_key(job.repo)``); a pull request from a fork
(``job.fork_of`` set) gets those of the repository it targets only if that
repository allows forks, and nothing otherwise.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from narwhal.dispatcher.records import JobRecord
from narwhal.dispatcher.store.base import (
    DeleteSecret,
    JobStore,
    PutSecret,
    SecretRow,
    SetForks,
    Write,
)
from narwhal.errors import ConfigError, NotFound, RepoError, SecretError
from narwhal.repos import check_repo
from narwhal.secret_rules import (
    MAX_SECRET_BYTES,
    MAX_SECRETS_PER_REPO,
    check_name,
    check_value,
    repo_key,
)

log = logging.getLogger(__name__)

KEY_FILE = "secrets.key"
KEY_VERSION = 1
_NONCE_BYTES = 12


def load_key(data_dir: Path) -> bytes:
    """The data dir's secrets key, made (0600, directory 0700) if there is none yet.

    Blocking (file I/O): call it off the event loop.
    """
    path = data_dir / KEY_FILE
    if not path.exists():
        _create_key(data_dir, path)
    try:
        mode = path.stat().st_mode
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the secrets key: {e}") from None
    if mode & 0o077:
        raise ConfigError(f"{path}: readable by others (mode {mode & 0o777:o}); chmod 600 it")
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except binascii.Error:
        key = b""
    if len(key) != 32:
        raise ConfigError(f"{path}: not a secrets key (32 bytes, base64)")
    return key


def _create_key(data_dir: Path, path: Path) -> None:
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    # The store's directory holds the key: no one else may list or read it.
    os.chmod(data_dir, 0o700)
    text = base64.b64encode(AESGCM.generate_key(bit_length=256)).decode() + "\n"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first: use that one
        return
    with os.fdopen(fd, "w") as out:
        out.write(text)
    log.info("made the secrets key %s", path)


@dataclass(frozen=True, slots=True)
class Sealed:
    """One secret as stored: ciphertext, never the value."""

    nonce: bytes
    ciphertext: bytes
    created_at: float
    updated_at: float


class Sealer:
    """AES-256-GCM with the repository key and the name as associated data."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    def seal(self, repo: str, name: str, value: str) -> tuple[bytes, bytes]:
        nonce = secrets.token_bytes(_NONCE_BYTES)
        return nonce, self._aead.encrypt(nonce, value.encode(), _aad(repo, name))

    def open(self, repo: str, name: str, nonce: bytes, ciphertext: bytes) -> str:
        try:
            return self._aead.decrypt(nonce, ciphertext, _aad(repo, name)).decode()
        except (InvalidTag, UnicodeDecodeError):
            raise SecretError(
                f"secret {name} of {repo} does not decrypt with {KEY_FILE}"
                " (another key, or a changed row): set it again"
            ) from None


def _aad(repo: str, name: str) -> bytes:
    return f"narwhal-secret-v{KEY_VERSION}\x00{repo}\x00{name}".encode()


class Writer(Protocol):
    """The dispatcher's ``write``: the writes in one unit, committed when it returns."""

    async def __call__(self, *writes: Write) -> list[Any]: ...


class Vault:
    """The dispatcher's per-repository secrets and fork policies (see the module docstring).

    Memory changes only after the store committed: a refused write
    (``StoreError``) leaves both as they were.
    """

    def __init__(self, key: bytes, write: Writer) -> None:
        self._sealer = Sealer(key)
        self._write = write
        #: repository key -> name -> sealed value, as the store holds them.
        self._sealed: dict[str, dict[str, Sealed]] = {}
        #: Repository keys whose secrets pull requests from forks get.
        self._forks: set[str] = set()

    async def load(self, store: JobStore) -> None:
        """Read every sealed secret and policy (at start); log the ones that do not open."""
        for row in await store.secrets():
            try:
                self._sealer.open(row.repo, row.name, row.nonce, row.ciphertext)
            except SecretError as e:
                log.error("%s", e)
                continue
            sealed = Sealed(row.nonce, row.ciphertext, row.created_at, row.updated_at)
            self._sealed.setdefault(row.repo, {})[row.name] = sealed
        self._forks = await store.fork_repos()
        if self._sealed:
            log.info("secrets of %d repository(ies) loaded", len(self._sealed))

    # what the API calls

    async def put(self, repo: str, name: str, value: str) -> tuple[str, bool]:
        """Store a secret; its repository key and whether it is new."""
        key = _key(repo)
        check_value(check_name(name), value, limit=MAX_SECRET_BYTES)
        held = self._sealed.get(key, {})
        if name not in held and len(held) >= MAX_SECRETS_PER_REPO:
            raise ConfigError(f"{key}: already has {MAX_SECRETS_PER_REPO} secrets")
        nonce, ciphertext = self._sealer.seal(key, name, value)
        now = time.time()
        new = name not in held
        created = now if new else held[name].created_at
        row = SecretRow(
            repo=key,
            name=name,
            key_version=KEY_VERSION,
            nonce=nonce,
            ciphertext=ciphertext,
            created_at=now,
            updated_at=now,
        )
        await self._write(PutSecret(secret=row))
        self._sealed.setdefault(key, {})[name] = Sealed(nonce, ciphertext, created, now)
        return key, new

    async def delete(self, repo: str, name: str) -> str:
        key = _key(repo)
        check_name(name)
        if name not in self._sealed.get(key, {}):
            raise NotFound(f"{key} has no secret {name}")
        await self._write(DeleteSecret(repo=key, name=name))
        held = self._sealed.get(key, {})
        held.pop(name, None)
        if not held:
            self._sealed.pop(key, None)
        return key

    async def set_forks(self, repo: str, allowed: bool) -> str:
        key = _key(repo)
        await self._write(SetForks(repo=key, allowed=allowed, at=time.time()))
        if allowed:
            self._forks.add(key)
        else:
            self._forks.discard(key)
        return key

    def listing(self, repo: str) -> dict[str, Any]:
        """Names and times of a repository's secrets, and its fork policy; never values."""
        key = _key(repo)
        held = self._sealed.get(key, {})
        return {
            "repo": key,
            "forks": key in self._forks,
            "secrets": [
                {"name": name, "created_at": s.created_at, "updated_at": s.updated_at}
                for name, s in sorted(held.items())
            ],
        }

    # what dispatching calls

    def for_job(self, job: JobRecord) -> dict[str, str]:
        """The secrets ``job`` may have, opened; {} for most jobs, without any lookup.

        Never raises (it runs while a scheduling round sends its JOB frames):
        a repository whose key cannot be computed has no secrets, since
        ``put`` computes the same key, and a secret that does not open is
        logged and left out.
        """
        if not self._sealed:
            return {}
        if job.fork_of is not None:
            if job.fork_of not in self._forks:
                return {}
            key = job.fork_of
        else:
            try:
                key = repo_key(job.repo)
            except ConfigError:
                return {}
        opened = {}
        for name, sealed in self._sealed.get(key, {}).items():
            try:
                opened[name] = self._sealer.open(key, name, sealed.nonce, sealed.ciphertext)
            except SecretError as e:
                log.error("job %d: %s", job.id, e)
        return opened


def _key(repo: str) -> str:
    # The rules every door applies (``narwhal.repos``); a local path may hold
    # secrets, whether its jobs may run is the dispatcher's policy.
    try:
        check_repo(repo, allow_local=True)
    except RepoError as e:
        raise ConfigError(f"repo: expected a clone URL or an absolute path ({e})") from None
    return repo_key(repo)
