"""CurveZMQ key files: a key pair is ``NAME.key`` (public) and ``NAME.key_secret``.

The files use ZeroMQ's certificate format (ZPL, as ``zmq.auth`` writes it),
so a key made by ``zmq.auth.create_certificates`` works too. Keys are z85
text, 40 characters for 32 bytes. A public file may carry metadata
(``runner-id``, ``labels``): that is how a trusted-runner file binds a key to
one runner id (``narwhal.mesh.trust``).

Every file is written atomically (a temporary file in the same directory,
fsynced, then renamed), a secret file with mode 0600 from its first byte.
A secret file that group or others may read is refused, as ssh refuses one:
the key may already have leaked, and quietly using it would hide that.
zmq's exceptions are translated here and in ``transport``, nowhere else.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import zmq
from zmq.utils import z85

from narwhal.errors import ConfigError

PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"
_FIELD = re.compile(r'^\s*([a-z][a-z0-9-]*)\s*=\s*"([^"\n]*)"\s*$')
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


@dataclass(frozen=True, slots=True)
class KeyPair:
    """A CURVE key pair as z85 bytes (what pyzmq's socket options take)."""

    public: bytes
    secret: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class PublicKey:
    """A public key file's key and metadata (e.g. ``runner-id``)."""

    key: bytes
    metadata: dict[str, str]


def generate() -> KeyPair:
    public, secret = zmq.curve_keypair()
    return KeyPair(public=public, secret=secret)


def check_key(text: str, what: str = "key") -> bytes:
    """A z85 CURVE key as bytes; ConfigError if it is not one."""
    raw = text.strip().encode("ascii", "replace")
    if len(raw) != 40:
        raise ConfigError(f"{what}: expected a 40-character z85 CURVE key, got {len(raw)} chars")
    try:
        z85.decode(raw)
    except (ValueError, KeyError, IndexError, TypeError):
        raise ConfigError(f"{what}: not a z85 CURVE key") from None
    return raw


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ConfigError(f"key name {name!r}: use letters, digits, '.', '_' and '-'")
    return name


def pair_paths(directory: Path, name: str) -> tuple[Path, Path]:
    return directory / f"{name}{PUBLIC_SUFFIX}", directory / f"{name}{SECRET_SUFFIX}"


# writing


def write_pair(directory: Path, name: str, pair: KeyPair) -> tuple[Path, Path]:
    """Write ``NAME.key`` and ``NAME.key_secret``; refuses to replace either."""
    public_path, secret_path = pair_paths(directory, check_name(name))
    for path in (public_path, secret_path):
        if path.exists():
            raise ConfigError(f"{path} exists: not replacing a key")
    directory.mkdir(parents=True, exist_ok=True)
    write_atomic(secret_path, _render("Secret", pair.public, pair.secret, {}), mode=0o600)
    write_public(public_path, pair.public, {})
    return public_path, secret_path


def write_public(path: Path, key: bytes, metadata: Mapping[str, str]) -> None:
    write_atomic(path, _render("Public", key, None, metadata), mode=0o644)


def _render(kind: str, public: bytes, secret: bytes | None, metadata: Mapping[str, str]) -> str:
    lines = [
        f"#   ****  Generated on {datetime.now(UTC):%Y-%m-%d %H:%M:%S} by narwhal  ****",
        f"#   ZeroMQ CURVE **{kind}** Certificate",
    ]
    if secret is not None:
        lines.append("#   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions.")
    lines += ["", "metadata"]
    for name, value in metadata.items():
        if '"' in value or "\n" in value:
            raise ConfigError(f"{name}: quotes and newlines cannot go into a key file")
        lines.append(f'    {name} = "{value}"')
    lines += ["curve", f'    public-key = "{public.decode()}"']
    if secret is not None:
        lines.append(f'    secret-key = "{secret.decode()}"')
    return "\n".join(lines) + "\n"


def write_atomic(path: Path, text: str, *, mode: int) -> None:
    """Write ``path`` whole or not at all; a reader never sees half a file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)  # before the first byte: a secret is never readable by others
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# reading


def _fields(path: Path) -> dict[str, str]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read it: {e}") from None
    found = {}
    for line in text.splitlines():
        match = _FIELD.match(line)
        if match:
            found[match.group(1)] = match.group(2)
    return found


def read_public(path: Path) -> PublicKey:
    """A public key file: its key and its metadata. Refuses a secret file."""
    found = _fields(path)
    if "secret-key" in found:
        raise ConfigError(f"{path} holds a secret key: give the public {PUBLIC_SUFFIX} file")
    if "public-key" not in found:
        raise ConfigError(f"{path}: no public-key in it (not a CURVE key file)")
    key = check_key(found.pop("public-key"), str(path))
    return PublicKey(key=key, metadata=found)


def read_secret(path: Path) -> KeyPair:
    """A secret key file; refused if group or others may read it."""
    try:
        mode = path.stat().st_mode
    except OSError as e:
        raise ConfigError(f"{path}: cannot read it: {e}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"{path} is readable by others (mode {stat.S_IMODE(mode):o}): "
            f"run chmod 600 {path}, or make a new key if it may have leaked"
        )
    found = _fields(path)
    if "secret-key" not in found or "public-key" not in found:
        raise ConfigError(f"{path}: not a CURVE secret key file (public-key and secret-key)")
    public = check_key(found["public-key"], str(path))
    secret = check_key(found["secret-key"], str(path))
    if zmq.curve_public(secret) != public:
        raise ConfigError(f"{path}: its public-key does not belong to its secret-key")
    return KeyPair(public=public, secret=secret)


def load_or_create(directory: Path, name: str) -> tuple[KeyPair, bool]:
    """The key pair ``NAME`` in ``directory``, made on first use; (pair, created)."""
    public_path, secret_path = pair_paths(directory, name)
    if secret_path.exists():
        pair = read_secret(secret_path)
        if not public_path.exists():  # deleted by hand: it can always be made again
            write_public(public_path, pair.public, {})
        return pair, False
    return _create(directory, name), True


def _create(directory: Path, name: str) -> KeyPair:
    pair = generate()
    public_path, _ = pair_paths(directory, name)
    if public_path.exists():
        raise ConfigError(f"{public_path} exists without its {SECRET_SUFFIX} file")
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_pair(directory, name, pair)
    except OSError as e:
        raise ConfigError(f"cannot write a key pair in {directory}: {e}") from None
    return pair


def secret_path_of(path: Path) -> Path:
    """``X.key_secret`` for ``X.key`` (or ``X.key_secret`` itself)."""
    if path.name.endswith(SECRET_SUFFIX):
        return path
    if path.name.endswith(PUBLIC_SUFFIX):
        return path.with_name(path.name[: -len(PUBLIC_SUFFIX)] + SECRET_SUFFIX)
    return path
