"""Stand-in runners: real ZeroMQ peers that speak the protocol and run nothing.

Each stand-in binds a DEALER on loopback (the dispatcher connects to it as
to a runner), answers HELLO with READY and every JOB at once with ACCEPT and
DONE (success), and sends a HEARTBEAT when idle. They serve from one thread
of the test process, so a test of the dispatcher's own behaviour needs no
runner process and no workspace. The benchmarks keep their own stand-in
(``bench/standin.py``, a separate process, tuned for load); this one is
small on purpose and shares nothing with it.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import zmq

from narwhal import __version__
from narwhal.mesh import protocol as p

#: Under the liveness of any test dispatcher (heartbeat 0.2 s and up, dead after 3).
BEAT = 0.2


class _StandIn:
    """One stand-in runner on one bound DEALER socket."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], capacity: int) -> None:
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"
        session = uuid.uuid4().hex
        ready = p.Ready(
            runner_id=f"standin-{port}",
            session=session,
            capacity=capacity,
            labels={},
            version=__version__,
        )
        self.ready = p.encode(ready)
        self.beat = p.encode(p.Heartbeat(session=session))

    def handle(self) -> None:
        while True:
            try:
                message = p.decode(self.sock.recv(zmq.NOBLOCK))
            except zmq.Again:
                return
            if isinstance(message, p.Hello):
                self.sock.send(self.ready)
            elif isinstance(message, p.Job):
                self.sock.send(
                    p.encode(p.Accept(job_id=message.job_id, attempt=message.attempt, seq=0))
                )
                done = p.Done(
                    job_id=message.job_id,
                    attempt=message.attempt,
                    seq=1,
                    status="success",
                    reason="",
                    duration=0.0,
                )
                self.sock.send(p.encode(done))

    def heartbeat(self) -> None:
        try:
            self.sock.send(self.beat, zmq.NOBLOCK)
        except zmq.Again:  # no dispatcher connected yet
            pass


def _serve(standins: list[_StandIn], stop: threading.Event) -> None:
    poller = zmq.Poller()
    by_socket = {}
    for standin in standins:
        poller.register(standin.sock, zmq.POLLIN)
        by_socket[standin.sock] = standin
    last_beat = time.monotonic()
    while not stop.is_set():
        for sock, _ in poller.poll(50):
            by_socket[sock].handle()
        if time.monotonic() - last_beat > BEAT:
            last_beat = time.monotonic()
            for standin in standins:
                standin.heartbeat()


@contextmanager
def standins(count: int, capacity: int) -> Iterator[list[str]]:
    """``count`` stand-in runners of ``capacity`` slots each; yields their endpoints.

    Plain ZeroMQ (no CurveZMQ): the dispatcher under test runs without
    mesh keys, as ``DispatcherConfig`` does by default.
    """
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    stop = threading.Event()
    started = [_StandIn(ctx, capacity) for _ in range(count)]
    thread = threading.Thread(target=_serve, args=(started, stop), name="standins")
    thread.start()
    try:
        yield [standin.endpoint for standin in started]
    finally:
        stop.set()
        thread.join(10)
        for standin in started:
            standin.sock.close(0)
        ctx.term()
