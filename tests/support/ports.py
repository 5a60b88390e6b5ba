"""Free loopback ports, for daemons that must be restarted on the same address."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago.

    Binding port 0 is better wherever the code allows it (ZeroMQ's
    ``bind_to_random_port``, ``--http 127.0.0.1:0``); this is for the cases
    that need the number before the daemon starts, or again after a restart.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
