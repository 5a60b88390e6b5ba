"""The ZAP handler admits only connections of live links, on real sockets.

libzmq 4.3.5 keeps retrying a connection whose CURVE handshake was refused,
even after ``disconnect``; once the key is trusted such a zombie gets in
under a routing id of libzmq's own, beside the connection made afresh, and
the runner's DEALER splits its frames between the two. The ZAP request names
the connection (the socket's ROUTING_ID at connect), so the handler turns
away every connection that is not a live link's.
"""

from __future__ import annotations

import asyncio

import zmq
import zmq.asyncio

from narwhal.mesh.transport import pin_curve, serve_curve
from narwhal.mesh.zap import DOMAIN, ZapHandler


def test_a_refused_connection_that_libzmq_retries_never_gets_in() -> None:
    async def main() -> tuple[list[bytes], int]:
        ctx = zmq.asyncio.Context()
        plain = zmq.Context.shadow(ctx.underlying)
        live: set[bytes] = set()
        trusted = {"yes": False}
        asked: list[bytes] = []

        def decide(key: bytes, identity: bytes) -> str | None:
            asked.append(identity)
            if identity not in live:
                return "dropped"
            return None if trusted["yes"] else "untrusted"

        zap = ZapHandler(ctx, decide)
        server_public, server_secret = zmq.curve_keypair()
        client_public, client_secret = zmq.curve_keypair()
        dealer = plain.socket(zmq.DEALER)
        pin_curve(dealer, client_public, client_secret, server_public)
        endpoint = f"tcp://127.0.0.1:{dealer.bind_to_random_port('tcp://127.0.0.1')}"
        router = plain.socket(zmq.ROUTER)
        serve_curve(router, server_public, server_secret, DOMAIN)

        def connect(alias: bytes) -> None:
            live.add(alias)
            router.setsockopt(zmq.ROUTING_ID, alias)
            router.setsockopt(zmq.CONNECT_ROUTING_ID, alias)
            router.connect(endpoint)

        connect(b"1:first")
        await asyncio.sleep(0.5)  # refused: the key is not trusted yet
        router.disconnect(endpoint)
        live.discard(b"1:first")
        await asyncio.sleep(0.5)
        retried = asked.count(b"1:first")
        trusted["yes"] = True
        connect(b"2:again")
        await asyncio.sleep(1.0)  # long enough for the zombie's next tries
        for i in range(10):
            dealer.send(b"frame %d" % i)
        await asyncio.sleep(0.5)
        senders = []
        while router.poll(200):
            senders.append(router.recv_multipart()[0])
        for sock in (dealer, router):
            sock.close(0)
        zap.close()
        ctx.term()
        return senders, retried

    senders, retried = asyncio.run(main())
    assert retried > 1, "libzmq stopped retrying: the scenario did not happen"
    assert senders == [b"2:again"] * 10
