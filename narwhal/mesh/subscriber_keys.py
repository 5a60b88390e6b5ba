"""The metrics feed's allow-list: public keys of the programs that may subscribe.

A directory (``KEYS_DIR/subscribers/``) of CURVE public key files, one per
subscriber (a backend), written by ``narwhal keys trust --subscriber``.
Unlike a runner's (``trust``), a subscriber's key binds no id: the feed is
read-only and the same for everyone, so a key is simply trusted or not.

The publisher polls the directory (``TrustedSubscribers.load``, about once
a second, comparing names, sizes, mtimes and inodes as ``trust`` does):
trusting a key needs no restart. Removing one refuses its next handshakes;
a connection already made stays until it drops (a PUB socket cannot close
one peer's connection).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from narwhal.errors import ConfigError, NarwhalError
from narwhal.mesh.keys import PUBLIC_SUFFIX, read_public, write_public
from narwhal.mesh.trust import signature

log = logging.getLogger(__name__)

#: The metadata field naming a subscriber (for ``narwhal keys list``).
SUBSCRIBER = "subscriber"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def scan_keys(directory: Path) -> tuple[frozenset[bytes], tuple[str, ...]]:
    """The keys the directory trusts, and the files refused with why."""
    keys, problems = set(), []
    for name, *_ in signature(directory):
        try:
            keys.add(read_public(directory / name).key)
        except NarwhalError as e:
            problems.append(str(e))
    return frozenset(keys), tuple(problems)


class TrustedSubscribers:
    """The allow-list as the publisher's ZAP handler uses it."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.keys: frozenset[bytes] = frozenset()
        self._signature: tuple[tuple[str, int, int, int], ...] | None = None
        self._problems: tuple[str, ...] = ()

    def load(self) -> bool:
        """Read the directory again if it changed; True when the trusted keys did."""
        listed = signature(self.directory)
        if listed == self._signature:
            return False
        self._signature = listed
        keys, problems = scan_keys(self.directory)
        for problem in problems:
            if problem not in self._problems:
                log.warning("trusted subscriber keys: %s", problem)
        self._problems = problems
        if keys == self.keys:
            return False
        self.keys = keys
        log.info("trusted subscriber keys in %s: %d", self.directory, len(keys))
        return True

    def decide(self, key: bytes, identity: bytes) -> str | None:
        """A ZAP decision (``zap.Decide``): None admits ``key``."""
        return None if key in self.keys else "not a trusted subscriber key"


def file_for(directory: Path, name: str) -> Path:
    safe = _UNSAFE.sub("_", name)[:100] or "subscriber"
    return directory / f"{safe}{PUBLIC_SUFFIX}"


def trust_subscriber(directory: Path, key: bytes, name: str) -> Path:
    """Trust ``key`` as subscriber ``name``; a key trusted already keeps its file.

    Refuses a name whose file holds another key: replacing a backend's key
    is a revoke and a trust, made on purpose.
    """
    directory.mkdir(parents=True, exist_ok=True)
    for listed, *_ in signature(directory):
        try:
            if read_public(directory / listed).key == key:
                return directory / listed
        except NarwhalError:
            continue
    path = file_for(directory, name)
    if path.exists():
        raise ConfigError(
            f"{path} trusts another key: revoke subscriber {name!r} first, or pick another --id"
        )
    write_public(path, key, {SUBSCRIBER: name})
    return path


def revoke_subscriber(directory: Path, name: str) -> Path:
    """Remove subscriber ``name``'s file; the path removed."""
    path = file_for(directory, name)
    try:
        path.unlink()
    except FileNotFoundError:
        raise ConfigError(f"no trusted subscriber {name!r} in {directory}") from None
    return path
