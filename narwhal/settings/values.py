"""Flag values turned into Python values: numbers, addresses, labels, secrets, defaults.

The primitives every ``settings`` module uses; each refusal is a one-line
``ConfigError`` naming the flag. Reading a secret's file (``secret``) is the
only I/O here.
"""

from __future__ import annotations

import argparse
import math
import os
import re
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

from narwhal.errors import ConfigError
from narwhal.forges import FORGES


def env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"NARWHAL_{name}", default)


def host_port(text: str, default_port: int) -> tuple[str, int]:
    """Parse ``HOST:PORT`` / ``HOST`` / ``:PORT`` / ``[::1]:PORT``."""
    host, sep, port = text.rpartition(":")
    if not sep or "]" in port:
        host, port = text, str(default_port)
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def feed_endpoint(flag: str, text: str) -> str | None:
    """``tcp://HOST:PORT`` (port 0: a free pair of ports); ``none`` or ``off``: None."""
    if text.strip().lower() in ("", "none", "off"):
        return None
    head, sep, port = text.rpartition(":")
    if not head.startswith("tcp://") or len(head) <= 6 or not port.isdigit() or int(port) > 65534:
        raise ConfigError(f"{flag}: expected tcp://HOST:PORT (PORT + 1 is taken too), got {text!r}")
    return text


def parse_labels(text: str) -> dict[str, str]:
    labels = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"labels must look like key=value,key=value; got {item!r}")
        labels[key.strip()] = value.strip()
    return labels


def positive(kind: type[int] | type[float], name: str, value: str) -> float:
    try:
        number = kind(value)
    except ValueError:
        raise ConfigError(f"{name}: expected a number, got {value!r}") from None
    if not 0 < number < math.inf:  # NaN and infinity are no durations or counts either
        raise ConfigError(f"{name}: must be positive, got {value!r}")
    return number


_BYTE_SIZE = re.compile(r"([0-9]{1,15}(?:\.[0-9]{1,6})?)\s*(?:([kmgt])(?:i?b)?|b)?", re.I)
_SHIFTS = {"k": 10, "m": 20, "g": 30, "t": 40}


def byte_size(name: str, text: str) -> int:
    """A size flag: bytes, or 500M / 2G / 1.5GiB (1024-based); positive."""
    match = _BYTE_SIZE.fullmatch(text.strip())
    size = 0
    if match is not None:
        shift = _SHIFTS[match.group(2).lower()] if match.group(2) else 0
        size = int(float(match.group(1)) * (1 << shift))
    if size <= 0:
        raise ConfigError(f"{name}: expected a size like 500M, 2G or 1.5GiB, got {text!r}")
    return size


def non_negative(name: str, value: str) -> float:
    return 0.0 if value in ("0", "0.0") else positive(float, name, value)


def directory(text: str) -> Path:
    """A directory flag as an absolute path: git and the steps run elsewhere than here."""
    return Path(text).expanduser().absolute()


#: Environment variables that hold a secret's value; a daemon removes them
#: from its environment once read, so its children (steps) do not inherit them.
SECRET_VARIABLES = (
    "NARWHAL_API_TOKEN",
    "NARWHAL_AMQP",
    *(f"NARWHAL_{forge.upper()}_{kind}" for forge in FORGES for kind in ("SECRET", "TOKEN")),
)


def secret(args: argparse.Namespace, flag: str) -> str | None:
    """``--X-file``, ``NARWHAL_X`` or ``NARWHAL_X_FILE``, the first set.

    Never a value on the command line: every local user can read a
    process's argv (``ps``, ``/proc/PID/cmdline``).
    """
    dest = flag.replace("-", "_")
    path = getattr(args, f"{dest}_file", None)
    value = None if path else env(dest.upper())
    path = path or (None if value else env(f"{dest.upper()}_FILE"))
    if path:
        try:
            value = Path(path).expanduser().read_text().strip()
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"--{flag}-file {path}: cannot read it: {e}") from None
        if not value:
            raise ConfigError(f"--{flag}-file {path}: the file is empty")
    return value or None


def http_url(flag: str, url: str) -> str:
    if not url.startswith(("http://", "https://")) or len(url) < 10:
        raise ConfigError(f"{flag}: expected an http(s):// URL, got {url!r}")
    return url.rstrip("/")


def allow_local_repos(args: argparse.Namespace) -> bool:
    """``--allow-local-repos``, else NARWHAL_ALLOW_LOCAL_REPOS, else on for ``up`` only."""
    if args.allow_local_repos is not None:
        return bool(args.allow_local_repos)
    text = (env("ALLOW_LOCAL_REPOS") or "").strip().lower()
    if not text:
        return bool(args.command == "up")
    if text not in ("1", "true", "yes", "0", "false", "no"):
        raise ConfigError(f"NARWHAL_ALLOW_LOCAL_REPOS: expected 1 or 0, got {text!r}")
    return text in ("1", "true", "yes")


def optional_limit(kind: type[int] | type[float], name: str, value: str | None) -> Any:
    """A positive limit, or None for none (unset, or 0)."""
    if not value or value.strip() in ("0", "0.0"):
        return None
    return kind(positive(kind, name, value))


_SIZE = re.compile(r"([0-9]{1,15})([kmg]?)b?", re.IGNORECASE)


def memory_size(text: str) -> int:
    match = _SIZE.fullmatch(text.strip())
    if match is None or int(match.group(1)) == 0:
        raise ConfigError(f"--max-memory: expected a size like 512m or 2g, got {text!r}")
    return int(match.group(1)) << {"": 0, "k": 10, "m": 20, "g": 30}[match.group(2).lower()]


def loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def default_of(cls: type, name: str) -> str:
    """The default of config field ``name`` as a flag's text: the config class is its one home.

    Floats without a needless ``.0`` (``10``, ``0.5``); ``str`` of the rest.
    """
    found = next((f for f in fields(cls) if f.name == name), None)
    if found is None:
        raise LookupError(f"{cls.__name__} has no field {name!r}")
    if found.default is not MISSING:
        value: object = found.default
    elif found.default_factory is not MISSING:
        value = found.default_factory()
    else:
        raise LookupError(f"{cls.__name__}.{name} has no default")
    return f"{value:g}" if isinstance(value, float) else str(value)
