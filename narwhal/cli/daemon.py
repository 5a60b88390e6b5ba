"""The daemon commands (up, dispatcher, runner, agent): flags to config, then ``narwhal.daemons``.

Each daemon's composition is imported only for its command: the agent
process loads neither pyzmq nor the dispatcher.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path

from narwhal.settings import (
    SECRET_VARIABLES,
    agent_config,
    dispatcher_config,
    embedded_backend,
    embedded_runner,
    runner_config,
)
from narwhal.settings.backend import up_dashboard


def announce(line: str) -> None:
    print(line, flush=True)  # noqa: T201 - the CLI's own output


def scrub_secrets() -> None:
    """Secrets read from the environment are not handed down to child processes."""
    for name in SECRET_VARIABLES:
        os.environ.pop(name, None)


def run_daemon(args: argparse.Namespace) -> int:
    if args.command == "agent":
        from narwhal.daemons.agent import agent_main

        conf = agent_config(args)
        scrub_secrets()
        asyncio.run(agent_main(conf, announce))
        return 0
    if args.command == "runner":
        from narwhal.daemons.runner import runner_main

        asyncio.run(runner_main(runner_config(args), announce))
        return 0
    if args.command == "backend":
        from narwhal.daemons.backend import backend_main
        from narwhal.settings.backend import backend_config

        bconf = backend_config(args)
        scrub_secrets()
        asyncio.run(backend_main(bconf, announce))
        return 0
    from narwhal.daemons.dispatcher import dispatcher_main
    from narwhal.dispatcher import datadir

    # Locked before anything writes into it (keys, the embedded runner's trust).
    with datadir.hold(Path(args.data_dir).expanduser()) as lock:
        dconf = dispatcher_config(args)
        rconf = dashboard = None
        if args.command == "up":
            rconf = runner_config(args, listen="tcp://127.0.0.1:*", default_id="local")
            rconf = embedded_runner(dconf, rconf)
            # The dashboard's key, trusted on the metrics feed.
            curve = embedded_backend(dconf)
            dashboard = up_dashboard(args, curve, public_read=dconf.public_read)
        scrub_secrets()
        asyncio.run(dispatcher_main(dconf, rconf, lock, announce, dashboard))
    return 0
