"""``narwhal secrets``: set, list and delete a repository's secrets, and its fork policy.

A value is read from stdin (a prompt without echo on a terminal), never from
the command line, where other users see it in ``ps``; one trailing newline is
dropped, so ``echo "$TOKEN" | narwhal secrets set . TOKEN`` stores the token
itself. REPO is a clone URL or a local path (``.`` too), made into its key
(``secret_rules.repo_key``) here, so credentials in a URL never leave this
machine.
"""

from __future__ import annotations

import argparse
import getpass
import sys
import time
from typing import Any, Protocol

from narwhal.errors import ConfigError
from narwhal.localrepo import repo_arg as local_repo_arg
from narwhal.secret_rules import MAX_SECRET_BYTES, check_name, check_value, repo_key


class Caller(Protocol):
    """What these commands need of ``client.Api``."""

    def call(self, method: str, path: str, **kwargs: Any) -> Any: ...


def run_secrets(api: Caller, args: argparse.Namespace) -> int:
    actions = {"set": _set, "list": _list, "delete": _delete, "forks": _forks}
    return actions[args.secrets_command](api, args)


def repo_arg(text: str) -> str:
    """The key of REPO; a local path is resolved as ``narwhal submit`` does."""
    return repo_key(local_repo_arg(text))


def read_value(name: str) -> str:
    """The secret's value from stdin, without one trailing newline."""
    if sys.stdin.isatty():
        value = getpass.getpass(f"value of {name}: ")
    else:
        raw = sys.stdin.buffer.read(MAX_SECRET_BYTES + 3)
        try:
            value = raw.decode()
        except UnicodeDecodeError:
            raise ConfigError(f"secret {name}: the value on stdin is not UTF-8") from None
        value = value.removesuffix("\n").removesuffix("\r") if value.endswith("\n") else value
    if not value:
        raise ConfigError(
            f"secret {name}: no value on stdin (pipe it in: ... | narwhal secrets set)"
        )
    return check_value(name, value, limit=MAX_SECRET_BYTES)


def _set(api: Caller, args: argparse.Namespace) -> int:
    repo, name = repo_arg(args.repo), check_name(args.name)
    answer = api.call(
        "POST", "/api/secrets", json={"repo": repo, "name": name, "value": read_value(name)}
    )
    _progress(f"{'set' if answer['created'] else 'replaced'} secret {name} of {answer['repo']}")
    return 0


def _list(api: Caller, args: argparse.Namespace) -> int:
    listing = api.call("GET", "/api/secrets", params={"repo": repo_arg(args.repo)})
    _out(f"{'NAME':<32} UPDATED")
    for secret in listing["secrets"]:
        _out(f"{secret['name']:<32} {_when(secret['updated_at'])}")
    forks = "get them" if listing["forks"] else "do not get them"
    _progress(
        f"{listing['repo']}: {len(listing['secrets'])} secret(s); pull requests from forks {forks}"
    )
    return 0


def _delete(api: Caller, args: argparse.Namespace) -> int:
    repo, name = repo_arg(args.repo), check_name(args.name)
    answer = api.call("DELETE", "/api/secrets", params={"repo": repo, "name": name})
    _progress(f"deleted secret {name} of {answer['repo']}")
    return 0


def _forks(api: Caller, args: argparse.Namespace) -> int:
    if args.policy not in ("on", "off"):
        raise ConfigError(f"secrets forks: expected on or off, got {args.policy!r}")
    body = {"repo": repo_arg(args.repo), "allow": args.policy == "on"}
    answer = api.call("POST", "/api/secrets/forks", json=body)
    forks = "get" if answer["forks"] else "no longer get"
    _progress(f"pull requests from forks of {answer['repo']} {forks} its secrets")
    return 0


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)  # noqa: T201 - CLI output


def _out(text: str) -> None:
    print(text, flush=True)  # noqa: T201 - CLI output
