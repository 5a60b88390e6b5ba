"""The dispatcher's ROUTER driven by the event loop: nothing waiting is missed.

``ZMQ_FD`` only signals that the socket's state may have changed, and a send
can consume that signal while messages wait. These tests interleave sends
and receives hard enough that a missed signal shows up as a hang.
"""

from __future__ import annotations

import asyncio
import threading
import time

import zmq
import zmq.asyncio

from narwhal.mesh.transport import Router

FRAMES = 5000


def _echo(ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str, stop: threading.Event) -> None:
    """A peer that sends back every frame it gets, in bursts."""
    with ctx.socket(zmq.DEALER) as sock:
        sock.linger = 0
        sock.bind(endpoint)
        while not stop.is_set():
            if sock.poll(50):
                while True:
                    try:
                        frame = sock.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    sock.send(frame)


def test_every_echo_arrives_while_the_router_keeps_sending() -> None:
    async def main() -> list[bytes]:
        ctx = zmq.asyncio.Context()
        peer_ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        with zmq.Context() as probe, probe.socket(zmq.DEALER) as free:
            port = free.bind_to_random_port("tcp://127.0.0.1")
        endpoint = f"tcp://127.0.0.1:{port}"
        stop = threading.Event()
        peer = threading.Thread(target=_echo, args=(peer_ctx, endpoint, stop), daemon=True)
        peer.start()
        router = Router(ctx, linger_ms=0)
        router.sock.setsockopt(zmq.CONNECT_ROUTING_ID, b"peer")
        router.sock.connect(endpoint)
        got: list[bytes] = []

        async def receive() -> None:
            while len(got) < FRAMES:
                batch = router.recv_batch(64)
                if not batch:
                    await router.wait()
                got.extend(frame for _, frame in batch)

        async def send() -> None:
            for n in range(FRAMES):
                router.send(b"peer", b"%d" % n)
                if n % 37 == 0:  # bursts of uneven size, yielding between them
                    await asyncio.sleep(0)

        try:
            await asyncio.wait_for(asyncio.gather(receive(), send()), 20)
        finally:
            stop.set()
            peer.join(5)
            router.close(0)
            peer_ctx.term()
            ctx.term()
        return got

    got = asyncio.run(main())
    assert got == [b"%d" % n for n in range(FRAMES)]


def test_a_frame_that_arrives_just_before_a_send_still_wakes_the_receiver() -> None:
    """The send takes the FD's signal for the frame waiting: the receiver must still see it."""

    async def main() -> list[list[bytes]]:
        ctx = zmq.asyncio.Context()
        with zmq.Context() as peer_ctx, peer_ctx.socket(zmq.DEALER) as peer:
            peer.linger = 0
            port = peer.bind_to_random_port("tcp://127.0.0.1")
            router = Router(ctx, linger_ms=0)
            router.sock.setsockopt(zmq.CONNECT_ROUTING_ID, b"peer")
            router.sock.connect(f"tcp://127.0.0.1:{port}")
            router.send(b"peer", b"hello")
            assert peer.poll(5000) and peer.recv() == b"hello"  # connected both ways

            async def first() -> list[list[bytes]]:
                while not (batch := router.recv_batch(1)):
                    await router.wait()
                return batch

            receiver = asyncio.create_task(first())
            await asyncio.sleep(0.05)  # the receiver sleeps on the FD now
            peer.send(b"late")
            time.sleep(0.1)  # noqa: ASYNC251 - no loop turn: the frame is waiting
            router.send(b"peer", b"ping")  # ... and this send takes its signal
            try:
                return await asyncio.wait_for(receiver, 5)
            finally:
                router.close(0)
                ctx.term()

    assert asyncio.run(main()) == [[b"peer", b"late"]]
