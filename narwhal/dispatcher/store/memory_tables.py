"""The in-memory store's side tables, and the undo log every change goes through.

Endpoints, API tokens, sealed secrets and fork policies, with the rules of
``sqlite_tables``: an endpoint is kept once, a token's digest is unique, a
replaced secret keeps its ``created_at``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, assert_never

from narwhal.dispatcher.store.base import (
    AddEndpoint,
    DeleteSecret,
    DeleteToken,
    PutSecret,
    PutToken,
    SecretRow,
    SetForks,
    SideWrite,
    TokenRow,
    TouchToken,
)
from narwhal.errors import StoreError

#: The writes of the side tables.

_MISSING = object()


class Undo:
    """Changes made to dictionaries during one unit, played back in reverse if it fails.

    Values are never changed in place (records and rows are immutable), so
    putting the old value back undoes a change.
    """

    def __init__(self) -> None:
        self._changes: list[tuple[dict[Any, Any], Any, Any]] = []

    def set(self, table: dict[Any, Any], key: Any, value: Any) -> None:
        self._changes.append((table, key, table.get(key, _MISSING)))
        table[key] = value

    def delete(self, table: dict[Any, Any], key: Any) -> None:
        if key in table:
            self._changes.append((table, key, table[key]))
            del table[key]

    def roll_back(self) -> None:
        for table, key, old in reversed(self._changes):
            if old is _MISSING:
                table.pop(key, None)
            else:
                table[key] = old
        self._changes = []

    def forget(self) -> None:
        """The unit committed: nothing to undo any more."""
        self._changes = []


class MemoryTables:
    """The side tables of one ``MemoryStore``."""

    def __init__(self, undo: Undo) -> None:
        self._undo = undo
        self._endpoints: dict[str, float] = {}
        self._tokens: dict[str, TokenRow] = {}
        self._secrets: dict[tuple[str, str], SecretRow] = {}
        self._forks: dict[str, bool] = {}

    def make(self, write: SideWrite) -> None:
        match write:
            case AddEndpoint():
                if write.url not in self._endpoints:
                    self._undo.set(self._endpoints, write.url, write.at)
            case PutToken() | DeleteToken() | TouchToken():
                self._token(write)
            case PutSecret() | DeleteSecret() | SetForks():
                self._secret(write)
            case _:
                assert_never(write)

    def _token(self, write: PutToken | DeleteToken | TouchToken) -> None:
        match write:
            case PutToken(token=token):
                if any(
                    t.digest == token.digest and t.name != token.name for t in self._tokens.values()
                ):
                    raise StoreError("UNIQUE constraint failed: tokens.digest")
                self._undo.set(self._tokens, token.name, token)
            case DeleteToken():
                self._undo.delete(self._tokens, write.name)
            case TouchToken():
                old = self._tokens.get(write.name)
                if old is not None:
                    self._undo.set(self._tokens, write.name, replace(old, last_used=write.at))

    def _secret(self, write: PutSecret | DeleteSecret | SetForks) -> None:
        match write:
            case PutSecret(secret=secret):
                key = (secret.repo, secret.name)
                old = self._secrets.get(key)
                if old is not None:  # a replaced secret keeps its created_at
                    secret = replace(secret, created_at=old.created_at)
                self._undo.set(self._secrets, key, secret)
            case DeleteSecret():
                self._undo.delete(self._secrets, (write.repo, write.name))
            case SetForks():
                self._undo.set(self._forks, write.repo, write.allowed)

    # reads

    def endpoints(self) -> list[str]:
        return sorted(self._endpoints, key=self._endpoints.__getitem__)

    def tokens(self) -> list[TokenRow]:
        return list(self._tokens.values())

    def secrets(self) -> list[SecretRow]:
        return list(self._secrets.values())

    def fork_repos(self) -> set[str]:
        return {repo for repo, allowed in self._forks.items() if allowed}
