"""Parsed command-line arguments and ``NARWHAL_*`` variables, turned into config objects.

The one place where flag values are checked and converted (the parser that
defines the flags is ``narwhal.cli``); every other module gets frozen config
objects. Bad values raise ``ConfigError`` with a one-line message naming the
flag. By concept: ``values`` (numbers, addresses, secrets, defaults),
``keys`` (CurveZMQ), ``discovery`` (mDNS), ``daemons`` (each daemon's config).
"""

from narwhal.settings.daemons import (
    agent_config,
    amqp_config,
    dispatcher_config,
    docker_options,
    runner_config,
    status_config,
    webhook_config,
)
from narwhal.settings.discovery import dispatcher_discovery, runner_discovery
from narwhal.settings.keys import (
    EMBEDDED_BACKEND_KEY,
    EMBEDDED_RUNNER_KEY,
    SERVER_KEY,
    embedded_backend,
    embedded_runner,
    runner_curve,
    server_curve,
)
from narwhal.settings.values import (
    SECRET_VARIABLES,
    allow_local_repos,
    default_of,
    env,
    host_port,
    parse_labels,
    positive,
    secret,
)

__all__ = [
    "EMBEDDED_BACKEND_KEY",
    "EMBEDDED_RUNNER_KEY",
    "SECRET_VARIABLES",
    "SERVER_KEY",
    "agent_config",
    "allow_local_repos",
    "amqp_config",
    "default_of",
    "dispatcher_config",
    "dispatcher_discovery",
    "docker_options",
    "embedded_backend",
    "embedded_runner",
    "env",
    "host_port",
    "parse_labels",
    "positive",
    "runner_config",
    "runner_curve",
    "runner_discovery",
    "secret",
    "server_curve",
    "status_config",
    "webhook_config",
]
