"""``narwhal agent``: webhook endpoints over HTTP, commit events out to RabbitMQ.

Imports the agent only: the agent process loads neither pyzmq nor the
dispatcher.
"""

from __future__ import annotations

from collections.abc import Callable

from narwhal.agent.server import serve_agent
from narwhal.config import AgentConfig
from narwhal.daemons.signals import one_signal


async def agent_main(conf: AgentConfig, announce: Callable[[str], None]) -> None:
    """Serve webhooks until SIGINT or SIGTERM (``agent.server`` has the shutdown order)."""
    await serve_agent(conf, stop=one_signal(), announce=announce)
