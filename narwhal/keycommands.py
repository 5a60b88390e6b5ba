"""``narwhal keys``: make key pairs, trust and revoke runner keys, list what is trusted.

A dispatcher's keys live in its keys directory (``--keys-dir``, default
``DATA_DIR/keys``): ``server.key`` / ``server.key_secret``, the trusted
runners in ``runners/`` and the metrics feed's subscribers (backends) in
``subscribers/`` (``--subscriber``). Running dispatchers notice a change within about a
second; nothing needs a restart. The flags are the CLI's (``cli.parser``),
which loads this module (and pyzmq, which makes the keys) only for
``narwhal keys``.
"""

from __future__ import annotations

import argparse
import socket
from pathlib import Path

from narwhal.config import default_data_dir
from narwhal.errors import ConfigError
from narwhal.mesh.keys import PUBLIC_SUFFIX, generate, read_public, write_pair
from narwhal.mesh.subscriber_keys import SUBSCRIBER, revoke_subscriber, trust_subscriber
from narwhal.mesh.trust import parse_labels, revoke, scan, signature, trust
from narwhal.settings import SERVER_KEY, env


def keys_dir(args: argparse.Namespace) -> Path:
    if args.keys_dir:
        return Path(args.keys_dir).expanduser()
    if args.data_dir:
        return Path(args.data_dir).expanduser() / "keys"
    given = env("KEYS_DIR")
    if given:
        return Path(given).expanduser()
    return Path(env("DATA_DIR") or str(default_data_dir())).expanduser() / "keys"


def run_keys(args: argparse.Namespace) -> int:
    command = args.keys_command
    try:
        if command == "generate":
            return _generate(args)
        if command == "trust":
            return _trust(args)
        if command == "revoke":
            return _revoke(args)
        return _list(args)
    except OSError as e:
        raise ConfigError(f"keys {command}: {e}") from None


def _out(line: str) -> None:
    print(line)  # noqa: T201 - the CLI's own output


def _generate(args: argparse.Namespace) -> int:
    name = args.name or socket.gethostname().split(".")[0] or "narwhal"
    pair = generate()
    public, secret = write_pair(Path(args.dir).expanduser(), name, pair)
    _out(f"public key {pair.public.decode()}")
    _out(f"wrote {public} (give it out) and {secret} (mode 0600, keep it)")
    return 0


def _trust(args: argparse.Namespace) -> int:
    path = Path(args.file).expanduser()
    key = read_public(path).key
    if args.subscriber:
        name = args.id or path.name.removesuffix(PUBLIC_SUFFIX)
        trusted = trust_subscriber(keys_dir(args) / "subscribers", key, name)
        _out(f"trusted subscriber {name} (key {key.decode()}) on the metrics feed: {trusted}")
        return 0
    if not args.id:
        raise ConfigError("narwhal keys trust FILE needs --id RUNNER_ID (or --subscriber)")
    labels = parse_labels(args.labels) if args.labels is not None else None
    path = trust(keys_dir(args) / "runners", key, args.id, labels)
    pinned = f" with labels pinned to {args.labels!r}" if labels is not None else ""
    _out(f"trusted runner {args.id} (key {key.decode()}){pinned}: {path}")
    return 0


def _revoke(args: argparse.Namespace) -> int:
    if args.subscriber:
        removed = revoke_subscriber(keys_dir(args) / "subscribers", args.runner_id)
        _out(f"revoked subscriber {args.runner_id}: removed {removed}")
        return 0
    for path in revoke(keys_dir(args) / "runners", args.runner_id):
        _out(f"revoked runner {args.runner_id}: removed {path}")
    return 0


def _list(args: argparse.Namespace) -> int:
    directory = keys_dir(args)
    server = directory / f"{SERVER_KEY}{PUBLIC_SUFFIX}"
    if server.exists():
        _out(f"dispatcher key {read_public(server).key.decode()} ({server})")
    else:
        _out(f"no dispatcher key in {directory} yet (made at the dispatcher's first start)")
    listing = scan(directory / "runners")
    assert listing is not None  # noqa: S101 - no signature given: always a listing
    for entry in sorted(listing.entries, key=lambda e: e.runner_id):
        labels = (
            ""
            if entry.labels is None
            else " labels=" + ",".join(f"{k}={v}" for k, v in entry.labels.items())
        )
        _out(f"runner {entry.runner_id} {entry.key.decode()}{labels} ({entry.path.name})")
    for problem in listing.problems:
        _out(f"refused {problem}")
    _list_subscribers(directory / "subscribers")
    return 0


def _list_subscribers(directory: Path) -> None:
    for name, *_ in signature(directory):
        try:
            public = read_public(directory / name)
        except ConfigError as e:
            _out(f"refused {e}")
            continue
        shown = public.metadata.get(SUBSCRIBER) or name.removesuffix(PUBLIC_SUFFIX)
        _out(f"subscriber {shown} {public.key.decode()} ({name})")
