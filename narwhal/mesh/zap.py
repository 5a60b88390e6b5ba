"""A ZAP handler (RFC 27) that admits only CURVE keys the allow-list holds.

libzmq asks the ZAP handler of a socket's context, at
``inproc://zeromq.zap.01``, about every CURVE handshake on a socket with
``curve_server`` and a ``zap_domain``. Without a handler bound there, any
client that knows the server's public key gets in (MESH-NOTES), so the
dispatcher binds this one before its first connect and keeps it for the
life of the socket.

It is not ``zmq.auth``'s authenticator: that one runs as an unsupervised
task, so an exception would silently leave every handshake unanswered. This
is a reader callback on the socket's FD (like ``transport.Router``): each
request is answered synchronously from an in-memory allow-list, a callback
that raises is logged by the loop and the reader stays, and there is no
task to lose. The reply's User-Id is the client's z85 public key; libzmq
attaches it to every frame of that connection (``Frame.get("User-Id")``),
which is how the pool ties each frame to the key that authenticated it.

Each request also names the connection it is for: its ``identity`` is the
ROUTING_ID the socket had when that connection was made, which the pool sets
to the link's alias before every connect. libzmq keeps retrying a
connection whose handshake was refused even after ``disconnect`` (measured
with libzmq 4.3.5: several ZAP requests a second, for good), and once its
key is trusted such a zombie would get in under a routing id of libzmq's
own: the runner's DEALER would then split its frames between two
connections, and the dispatcher would drop half of them. So ``decide`` is
also told the identity, and admits only connections of live links.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import zmq
import zmq.asyncio
from zmq.utils import z85

from narwhal.errors import ConfigError
from narwhal.quietlog import QuietLog

log = logging.getLogger(__name__)

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
VERSION = b"1.0"
#: The zap_domain of the dispatcher's ROUTER; requests for any other are denied.
DOMAIN = "narwhal"

#: Decides on a z85 client key and the connection's identity (the pool's
#: alias): None to admit it, else the reason it is refused.
Decide = Callable[[bytes, bytes], str | None]


class ZapHandler:
    """Answers ZAP requests on the event loop; ``close`` unbinds it."""

    def __init__(self, ctx: zmq.asyncio.Context, decide: Decide, *, domain: str = DOMAIN) -> None:
        self._decide = decide
        self._domain = domain.encode()
        self._sock: zmq.Socket[bytes] = zmq.Context.shadow(ctx.underlying).socket(zmq.REP)
        self._sock.setsockopt(zmq.LINGER, 0)
        try:
            self._sock.bind(ZAP_ENDPOINT)
        except zmq.ZMQError as e:
            self._sock.close(0)
            raise ConfigError(
                f"cannot start CURVE authentication: {e} (one authenticating dispatcher "
                f"per ZeroMQ context)"
            ) from None
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._sock.FD, self._answer_all)
        self._quiet = QuietLog(log)
        self.refused = 0

    def close(self) -> None:
        if self._sock.closed:
            return
        if not self._loop.is_closed():
            self._loop.remove_reader(self._sock.FD)
        self._sock.close(0)

    def _answer_all(self) -> None:
        # Until EAGAIN: the FD is edge-triggered, a request left waiting
        # would never signal again.
        while True:
            try:
                request = self._sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._sock.send_multipart(self._reply(request))

    def _reply(self, request: list[bytes]) -> list[bytes]:
        if len(request) < 6 or request[0] != VERSION:
            # A REP must answer something; libzmq treats a bad reply as a denial.
            request_id = request[1] if len(request) > 1 else b""
            return [VERSION, request_id, b"500", b"bad ZAP request", b"", b""]
        _, request_id, domain, address, identity, mechanism, *credentials = request
        status, text, user = self._check(domain, identity, mechanism, credentials)
        if status != b"200":
            self.refused += 1
            self._quiet.warning(
                address.decode(errors="replace"),
                "mesh: CURVE handshake from %s refused: %s",
                address.decode(errors="replace"),
                text.decode(errors="replace"),
            )
        return [VERSION, request_id, status, text, user, b""]

    def _check(
        self, domain: bytes, identity: bytes, mechanism: bytes, credentials: list[bytes]
    ) -> tuple[bytes, bytes, bytes]:
        if domain != self._domain:
            return b"400", b"unknown ZAP domain", b""
        if mechanism != b"CURVE" or len(credentials) != 1 or len(credentials[0]) != 32:
            return b"400", b"not a CURVE handshake", b""
        key = z85.encode(credentials[0])
        reason = self._decide(key, identity)
        if reason is not None:
            return b"400", reason.encode()[:200], b""
        return b"200", b"OK", key
