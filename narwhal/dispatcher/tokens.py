"""API tokens: scopes, the admin token file, and who may call what.

Scopes are ordered, ``read < write < admin``: a token may do what its scope
and every lower one allow. Tokens live in the store's ``tokens`` table as
SHA-256 digests; the registry keeps them in memory too, so a check costs a
hash, and a revoke takes effect at the next request (no restart, no cache to
expire). ``narwhal up`` and ``narwhal dispatcher`` write an admin token to
``<data-dir>/admin.token`` (0600, in a 0700 directory) at first start; the
CLI on the same machine reads it. ``NARWHAL_API_TOKEN`` is one more admin
token, held only in memory, for operators and tests.

Why SHA-256 and not a slow KDF (bcrypt, scrypt): a token is 256 random bits,
not a password a person chose. Guessing one from its digest means searching
2**256 values, which no work factor makes harder than it already is; a KDF
would only make every request slower.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import re
import secrets
import socket
import stat
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from narwhal.config import DispatcherConfig
from narwhal.dispatcher.core import Conflict
from narwhal.dispatcher.store.base import (
    DeleteToken,
    JobStore,
    PutToken,
    TokenRow,
    TouchToken,
    Write,
)
from narwhal.errors import ConfigError, NotFound, StoreError

log = logging.getLogger(__name__)

SCOPES = ("read", "write", "admin")
#: The token of ``<data-dir>/admin.token``; ``tokens create`` cannot take its name.
ADMIN = "admin"
TOKEN_FILE = "admin.token"
#: Name shown for the ``NARWHAL_API_TOKEN`` admin token (it has no row).
ENV_NAME = "NARWHAL_API_TOKEN"
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
#: ``last_used`` is written back at most this often per token (seconds).
LAST_USED_EVERY = 60.0
#: Seconds between two reads of the tokens of a shared store (``follow``).
FOLLOW_EVERY = 5.0


def new_token() -> str:
    """256 random bits; the prefix lets secret scanners recognise a leaked one."""
    return "nw_" + secrets.token_urlsafe(32)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenInfo:
    """One token as stored: never the token itself."""

    name: str
    digest: str
    scope: str
    created_at: float
    last_used: float | None = None

    def allows(self, needed: str) -> bool:
        return SCOPES.index(self.scope) >= SCOPES.index(needed)

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "scope": self.scope,
            "created_at": self.created_at,
            "last_used": self.last_used,
        }


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request may not go on: 401 (no or bad token) or 403 (too little scope)."""

    status: int
    message: str


class Host(Protocol):
    """What the registry needs of the dispatcher: its store and its writes."""

    @property
    def config(self) -> DispatcherConfig: ...

    @property
    def store(self) -> JobStore: ...

    async def write(self, *writes: Write) -> list[Any]:
        """The writes in one unit, committed when this returns (``StoreError`` if not)."""
        ...

    def write_soon(self, write: Write) -> None:
        """``write`` in the next unit the dispatcher commits (within a second)."""
        ...


def _info(row: TokenRow) -> TokenInfo:
    return TokenInfo(
        name=row.name,
        digest=row.digest,
        scope=row.scope,
        created_at=row.created_at,
        last_used=row.last_used,
    )


def _row(info: TokenInfo) -> TokenRow:
    return TokenRow(
        name=info.name,
        digest=info.digest,
        scope=info.scope,
        created_at=info.created_at,
        last_used=info.last_used,
    )


class Tokens:
    """The dispatcher's tokens, checked in memory and written through to the store."""

    def __init__(
        self, dispatcher: Host, rows: Sequence[TokenInfo], *, env_token: str | None = None
    ) -> None:
        self._dispatcher = dispatcher
        self._by_name = {info.name: info for info in rows}
        self._env = None
        if env_token:
            self._env = TokenInfo(
                name=ENV_NAME, digest=digest(env_token), scope=ADMIN, created_at=time.time()
            )
        self._written: dict[str, float] = {}

    @classmethod
    async def open(
        cls, dispatcher: Host, *, env_token: str | None = None, admin: str = ADMIN
    ) -> Tokens:
        """Load the stored tokens and make sure ``<data-dir>/admin.token`` holds a valid one.

        ``admin``: the name of that token's row (``shared_admin`` when
        several dispatchers share the store).
        """
        tokens = cls.loaded(dispatcher, await dispatcher.store.tokens(), env_token=env_token)
        await tokens._ensure_admin_file(dispatcher.config.data_dir / TOKEN_FILE, admin)
        return tokens

    @classmethod
    def loaded(
        cls, dispatcher: Host, rows: Sequence[TokenRow], *, env_token: str | None = None
    ) -> Tokens:
        """The stored tokens as read: a standby's, which writes no admin token file."""
        return cls(dispatcher, [_info(row) for row in rows], env_token=env_token)

    def reload(self, rows: Sequence[TokenRow]) -> None:
        """The stored tokens as read again (``follow``)."""
        self._by_name = {row.name: _info(row) for row in rows}

    async def follow(self, interval: float = FOLLOW_EVERY) -> None:
        """Read the stored tokens again every ``interval`` seconds, until cancelled.

        For dispatchers that share a store: each learns the tokens the
        others made or revoked (an admin token of its own each, a token made
        on the leader) within ``interval``.
        """
        while True:
            await asyncio.sleep(interval)
            try:
                rows = await self._dispatcher.store.tokens()
            except StoreError as e:
                log.warning("cannot read the API tokens again: %s", e)
                continue
            self.reload(rows)

    # checking

    def find(self, token: str) -> TokenInfo | None:
        """The token's entry, or None. Every entry is compared, in constant time,
        so how long a check takes says nothing about which digest came close."""
        given = digest(token)
        found = None
        for info in [*self._by_name.values(), *([self._env] if self._env else [])]:
            if hmac.compare_digest(info.digest, given):
                found = info
        return found

    def authorize(self, header: str | None, needed: str, *, public: bool = False) -> Refusal | None:
        """None if ``Authorization: header`` may do what scope ``needed`` allows."""
        if not header:
            if public:
                return None
            return Refusal(401, f"this needs a token with scope {needed} (Authorization: Bearer)")
        scheme, _, token = header.partition(" ")
        info = self.find(token.strip()) if scheme.lower() == "bearer" else None
        if info is None:
            return Refusal(401, "unknown or revoked API token")
        self._used(info)
        if not info.allows(needed):
            return Refusal(403, f"token {info.name!r} has scope {info.scope}; this needs {needed}")
        return None

    def _used(self, info: TokenInfo) -> None:
        now = time.time()
        if info.name not in self._by_name:  # the environment's token has no row
            return
        self._by_name[info.name] = replace(info, last_used=now)
        if now - self._written.get(info.name, 0.0) >= LAST_USED_EVERY:
            self._written[info.name] = now
            # Not worth a commit of its own, nor making the request wait.
            self._dispatcher.write_soon(TouchToken(name=info.name, at=now))

    # managing

    def listing(self) -> list[TokenInfo]:
        return sorted(self._by_name.values(), key=lambda info: info.created_at)

    async def create(self, name: str, scope: str) -> str:
        """A new token (returned once; only its digest is kept)."""
        if not _NAME.fullmatch(name):
            raise ConfigError(f"name: expected 1-64 of A-Z a-z 0-9 _ . -, got {name!r}")
        if scope not in SCOPES:
            raise ConfigError(f"scope: expected one of {', '.join(SCOPES)}, got {scope!r}")
        if name == ADMIN or name.startswith(f"{ADMIN}-") or name in self._by_name:
            raise Conflict(f"a token named {name!r} exists; revoke it first")
        token = new_token()
        info = TokenInfo(name=name, digest=digest(token), scope=scope, created_at=time.time())
        await self._store(info)
        return token

    async def revoke(self, name: str) -> None:
        if name not in self._by_name:
            raise NotFound(f"no token named {name!r}")
        await self._dispatcher.write(DeleteToken(name=name))
        self._by_name.pop(name, None)

    async def _store(self, info: TokenInfo) -> None:
        # First the store: a failed write changes nothing.
        await self._dispatcher.write(PutToken(token=_row(info)))
        self._by_name[info.name] = info

    async def _ensure_admin_file(self, path: Path, name: str) -> None:
        """Keep the file's token if the store knows it, else write a new one.

        The store does not know it after ``tokens revoke admin`` (or with a
        new database): the next start rotates it.
        """
        text = await asyncio.to_thread(_read_if_there, path)
        known = self.find(text.strip()) if text is not None else None
        if known is not None and known.name == name:
            return
        token = new_token()
        await asyncio.to_thread(write_secret_file, path, token)
        now = time.time()
        await self._store(TokenInfo(name=name, digest=digest(token), scope=ADMIN, created_at=now))
        log.info("wrote a new admin API token to %s (mode 0600)", path)


def shared_admin(data_dir: Path) -> str:
    """The admin token's row name of one of several dispatchers on one store.

    Each has its own ``admin.token`` in its own data dir; under one shared
    name, each start would replace the others' token.
    """
    place = f"{socket.gethostname()}:{data_dir.resolve()}"
    return f"{ADMIN}-{hashlib.blake2b(place.encode(), digest_size=4).hexdigest()}"


def _read_if_there(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


def write_secret_file(path: Path, text: str) -> None:
    """Replace ``path`` with ``text``, never readable by anyone else, even for a moment."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text + "\n")
    os.replace(temporary, path)


def prepare_data_dir(path: Path) -> None:
    """Create the data directory 0700, or take group and other access off one of ours.

    It holds the job store (repository URLs, logs), the admin token and
    later the secrets key. A directory another user owns, or a shared one
    with the sticky bit (/tmp), is left alone with a warning.
    """
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.stat()
    if not info.st_mode & 0o077:
        return
    if info.st_uid == os.getuid() and not info.st_mode & stat.S_ISVTX:
        path.chmod(0o700)
        log.info("data directory %s: access for other users removed (now 0700)", path)
    else:
        log.warning("data directory %s is open to other users: make it 0700", path)
