"""What a secret may be called and hold, and which repository it belongs to.

One set of rules for the runner's own secrets (``--secret``, ``--secrets-file``)
and the dispatcher's per-repository ones (``narwhal secrets set``), so that a
name valid in one place is valid in the other.

A repository's secrets are stored under its *key*, ``repo_key(url)``, which is
computed the same way when a secret is set and when a job is dispatched:

- URLs (``scheme://...``): user name and password dropped, scheme and host
  lowercased, the scheme's default port dropped, query and fragment dropped,
  trailing ``/`` and one trailing ``.git`` dropped from the path (its case is
  kept). ``https://tok@GitHub.com/octo/hello.git/`` is
  ``https://github.com/octo/hello``.
- scp-like ``user@host:path`` is ``ssh://host/path``.
- ``file://`` URLs and local paths: the absolute, normalised path (``.git``
  kept: ``/srv/a.git`` and ``/srv/a`` are different directories).

The scheme stays part of the key: a secret set for ``https://host/o/r`` does
not reach jobs that clone ``ssh://host/o/r``. ``repo_key`` is idempotent, so a
client may send a key where a URL is expected.
"""

from __future__ import annotations

import functools
import os
import re
from urllib.parse import urlsplit

from narwhal.errors import ConfigError

#: A secret's name: an environment variable name like ``API_TOKEN``.
SECRET_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
#: Masking a secret of a character or two would garble every log.
MIN_SECRET = 4
#: Largest value of one per-repository secret, in UTF-8 bytes.
MAX_SECRET_BYTES = 8 * 1024
#: Secrets one repository may hold: all of them travel in one JOB frame.
MAX_SECRETS_PER_REPO = 64

_DEFAULT_PORTS = {"https": 443, "http": 80, "ssh": 22, "git": 9418}
_SCP_LIKE = re.compile(r"(?:[^@/:]+@)?(?P<host>[^@/:]+):(?P<path>.*)")


def check_name(name: str) -> str:
    """``name`` if it is a valid secret name; else a one-line ``ConfigError``."""
    if not SECRET_NAME.fullmatch(name):
        shown = name[:40] + ("..." if len(name) > 40 else "")
        raise ConfigError(f"secret {shown!r}: expected a variable name like API_TOKEN")
    return name


def check_value(name: str, value: str, *, limit: int | None = None) -> str:
    """``value`` if a step can get it as an env var and a log can mask it.

    The message names the secret, never its value.
    """
    if len(value) < MIN_SECRET:
        raise ConfigError(f"secret {name}: shorter than {MIN_SECRET} characters")
    if "\x00" in value:
        raise ConfigError(f"secret {name}: contains a NUL byte (no env var can hold one)")
    if limit is not None and len(value.encode()) > limit:
        raise ConfigError(f"secret {name}: larger than {limit} bytes")
    return value


@functools.lru_cache(maxsize=4096)
def repo_key(repo: str) -> str:
    """The key a repository's secrets are stored under (see the module docstring).

    Cached: the dispatcher computes it for every job it dispatches while
    any repository has secrets.
    """
    if "://" in repo:
        return _url_key(repo)
    scp = _SCP_LIKE.fullmatch(repo)
    if scp is not None and not repo.startswith(("/", ".")):
        return _url_key(f"ssh://{scp['host']}/{scp['path'].lstrip('/')}")
    return os.path.normpath(os.path.abspath(repo))


def _url_key(url: str) -> str:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ConfigError(f"repo: not a valid URL: {_shown(url)}") from None
    scheme = parts.scheme.lower()
    if scheme == "file":
        return os.path.normpath(os.path.abspath(parts.path or "/"))
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    if port is not None and port != _DEFAULT_PORTS.get(scheme):
        host = f"{host}:{port}"
    path = parts.path.rstrip("/")
    path = path.removesuffix(".git").rstrip("/")
    return f"{scheme}://{host}{path}"


def _shown(url: str) -> str:
    # An invalid URL may still carry credentials: show only what precedes them.
    return repr(url.split("@")[-1][:80])
