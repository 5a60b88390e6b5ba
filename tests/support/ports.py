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


def free_port_pair() -> int:
    """A port P on 127.0.0.1 with P + 1 free too, a moment ago (a metrics feed's pair)."""
    while True:
        port = free_port()
        if port >= 65535:
            continue
        with socket.socket() as a, socket.socket() as b:
            try:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
