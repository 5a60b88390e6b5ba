"""CurveZMQ keys from flags (docs/ARCHITECTURE.md, mesh): the dispatcher's, a runner's, up's.

A key pair is made at first start, in the keys directory; the CLI calls
these with the data directory's lock held.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import re
from pathlib import Path

from narwhal.config import (
    DispatcherConfig,
    RunnerConfig,
    RunnerCurve,
    ServerCurve,
    SubscriberCurve,
)
from narwhal.errors import ConfigError
from narwhal.settings.values import directory, env

log = logging.getLogger("narwhal")


SERVER_KEY = "server"


EMBEDDED_RUNNER_KEY = "local-runner"
#: ``narwhal up``'s own backend: its key pair in ``DATA_DIR/keys``.
EMBEDDED_BACKEND_KEY = "backend"


def keys_dir(args: argparse.Namespace) -> Path:
    given = args.keys_dir or env("KEYS_DIR")
    return directory(given) if given else directory(args.data_dir) / "keys"


def server_curve(keys_dir: Path) -> ServerCurve:
    """The dispatcher's key pair (made at first start), its trusted runners' and
    subscribers' directories."""
    from narwhal.mesh.keys import load_or_create

    pair, created = load_or_create(keys_dir, SERVER_KEY)
    runners, subscribers = keys_dir / "runners", keys_dir / "subscribers"
    try:
        runners.mkdir(parents=True, exist_ok=True)
        subscribers.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--keys-dir {keys_dir}: {e}") from None
    if created:
        log.info(
            "made the dispatcher's CURVE key pair in %s: give runners %s (--dispatcher-key)",
            keys_dir,
            keys_dir / f"{SERVER_KEY}.key",
        )
    return ServerCurve(
        public_key=pair.public,
        secret_key=pair.secret,
        runners_dir=runners,
        subscribers_dir=subscribers,
    )


def embedded_runner(dconf: DispatcherConfig, rconf: RunnerConfig) -> RunnerConfig:
    """``narwhal up``'s own runner: a key pair of its own, trusted as its id without asking."""
    if dconf.curve is None:
        return rconf
    from narwhal.mesh.keys import load_or_create
    from narwhal.mesh.trust import revoke, scan, trust

    keys_dir = dconf.curve.runners_dir.parent
    pair, _ = load_or_create(keys_dir, EMBEDDED_RUNNER_KEY)
    listing = scan(dconf.curve.runners_dir)
    for entry in listing.entries if listing is not None else ():
        if entry.key == pair.public and entry.runner_id != rconf.runner_id:
            revoke(dconf.curve.runners_dir, entry.runner_id)  # our own key, under an old --id
    trust(dconf.curve.runners_dir, pair.public, rconf.runner_id)
    curve = RunnerCurve(
        public_key=pair.public, secret_key=pair.secret, server_key=dconf.curve.public_key
    )
    return dataclasses.replace(rconf, curve=curve)


def embedded_backend(dconf: DispatcherConfig) -> SubscriberCurve | None:
    """``narwhal up``'s own backend: ``DATA_DIR/keys/backend.key(_secret)``, trusted as a
    subscriber of the metrics feed without asking; None without CurveZMQ."""
    if dconf.curve is None or dconf.curve.subscribers_dir is None:
        return None
    from narwhal.mesh.keys import load_or_create
    from narwhal.mesh.subscriber_keys import trust_subscriber

    pair, _ = load_or_create(dconf.data_dir / "keys", EMBEDDED_BACKEND_KEY)
    trust_subscriber(dconf.curve.subscribers_dir, pair.public, EMBEDDED_BACKEND_KEY)
    return SubscriberCurve(
        public_key=pair.public, secret_key=pair.secret, server_key=dconf.curve.public_key
    )


def runner_curve(args: argparse.Namespace, runner_id: str, work_dir: Path) -> RunnerCurve | None:
    """``--key`` (made at first start) and ``--dispatcher-key``; None with ``--insecure``."""
    from narwhal.mesh.keys import load_or_create, read_public, read_secret, secret_path_of

    if args.insecure:
        return None
    server_file = args.dispatcher_key or env("DISPATCHER_KEY")
    if not server_file:
        raise ConfigError(
            "narwhal runner needs --dispatcher-key FILE (the dispatcher's server.key, "
            "in its <data-dir>/keys/), or --insecure"
        )
    server = read_public(Path(server_file).expanduser()).key
    key_file = args.key or env("KEY")
    if key_file:
        pair = read_secret(secret_path_of(Path(key_file).expanduser()))
        public_file = Path(key_file).expanduser()
    else:
        name = re.sub(r"[^A-Za-z0-9._-]", "_", runner_id)[:100] or "runner"
        pair, _ = load_or_create(work_dir / "keys", name)
        public_file = work_dir / "keys" / f"{name}.key"
    log.info(
        "runner %s: CURVE public key %s; on the dispatcher run: narwhal keys trust %s --id %s",
        runner_id,
        pair.public.decode(),
        public_file.with_suffix(".key"),
        runner_id,
    )
    return RunnerCurve(public_key=pair.public, secret_key=pair.secret, server_key=server)
