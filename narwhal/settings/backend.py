"""``narwhal backend``'s config, and the dashboard ``narwhal up`` serves beside its API.

The backend's CurveZMQ side on the metrics feed is ``--key FILE`` (its
pair, made with ``narwhal keys generate``; the dispatcher trusts the public
half with ``narwhal keys trust --subscriber``) and ``--dispatcher-key
FILE`` (the dispatcher's ``server.key``, which runners pin too), or
``--insecure`` for a feed without CurveZMQ.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from narwhal.config import (
    DEFAULT_BACKEND_PORT,
    DEFAULT_HTTP_PORT,
    BackendConfig,
    SubscriberCurve,
)
from narwhal.errors import ConfigError
from narwhal.settings.values import env, feed_endpoint, host_port, http_url, positive, secret


def backend_config(args: argparse.Namespace) -> BackendConfig:
    host, port = host_port(args.http, DEFAULT_BACKEND_PORT)
    feeds = [feed_endpoint("--metrics", text.strip()) for text in str(args.metrics).split(",")]
    if not feeds or None in feeds:
        raise ConfigError(
            "narwhal backend needs --metrics tcp://HOST:PORT (the dispatcher's; with several"
            " dispatchers on one database, each one's, comma-separated)"
        )
    metrics, *others = [feed for feed in feeds if feed is not None]
    return BackendConfig(
        http_host=host,
        http_port=port,
        metrics=metrics,
        other_feeds=tuple(others),
        api=http_url("--api", args.api),
        api_token=secret(args, "api-token"),
        public_read=bool(args.public_read),
        curve=None if args.insecure else subscriber_curve(args),
        feed_timeout=positive(float, "--feed-timeout", args.feed_timeout),
    )


def subscriber_curve(args: argparse.Namespace) -> SubscriberCurve:
    """``--key`` and ``--dispatcher-key``, both required unless ``--insecure``."""
    from narwhal.mesh.keys import read_public, read_secret, secret_path_of

    key_file = args.key or env("KEY")
    server_file = args.dispatcher_key or env("DISPATCHER_KEY")
    if not key_file or not server_file:
        raise ConfigError(
            "narwhal backend needs --key FILE (its key pair: narwhal keys generate --name backend;"
            " on the dispatcher: narwhal keys trust --subscriber backend.key) and"
            " --dispatcher-key FILE (the dispatcher's server.key), or --insecure"
        )
    pair = read_secret(secret_path_of(Path(key_file).expanduser()))
    server = read_public(Path(server_file).expanduser()).key
    return SubscriberCurve(public_key=pair.public, secret_key=pair.secret, server_key=server)


def up_dashboard(
    args: argparse.Namespace, curve: SubscriberCurve | None, *, public_read: bool
) -> BackendConfig | None:
    """``narwhal up --dashboard HOST:PORT`` (``none``: off); its feed, API and token are
    filled in once they exist (``daemons.backend.start_dashboard``).

    Unless asked for, the dashboard is on ``127.0.0.1:DEFAULT_BACKEND_PORT``,
    or on any free port when the API's is any free port (``--http HOST:0``).
    """
    text = args.dashboard
    if text is not None and text.strip().lower() in ("none", "off"):
        return None
    if text is not None:
        host, port = host_port(text, DEFAULT_BACKEND_PORT)
    else:
        api_port = host_port(args.http, DEFAULT_HTTP_PORT)[1]
        host, port = "127.0.0.1", DEFAULT_BACKEND_PORT if api_port else 0
    return BackendConfig(http_host=host, http_port=port, public_read=public_read, curve=curve)
