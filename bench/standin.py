"""Minimal protocol-speaking runner stand-ins, so benchmarks measure the dispatcher.

Each stand-in binds a DEALER, answers HELLO with READY (the given capacity),
sends a HEARTBEAT when idle, and answers each JOB at once with ACCEPT and
DONE (status success), like a runner whose jobs take no time. The DONE's
``reason`` carries the wall-clock time the JOB arrived (``recv=<time>``), so
latency benchmarks can measure queued -> runner has it.

Run: ``python -m bench.standin CAPACITY COUNT [SERVER_KEY]``: one process
serves COUNT stand-ins (so 500 stand-ins need not be 500 processes), each on
a free loopback port; it prints ``ready PORT ...`` once all are bound. With
a dispatcher's z85 public key, each stand-in is a CurveZMQ client pinning it
with a key pair of its own, and prints ``PORT=PUBLIC_KEY`` instead.
"""

from __future__ import annotations

import sys
import time
import uuid

import zmq

from narwhal import __version__
from narwhal.mesh import protocol as p


class StandIn:
    """One stand-in runner on one bound DEALER socket."""

    def __init__(
        self, ctx: zmq.Context[zmq.Socket[bytes]], capacity: int, server_key: bytes | None = None
    ) -> None:
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.key = b""
        if server_key is not None:
            self.key, secret = zmq.curve_keypair()
            self.sock.curve_serverkey = server_key
            self.sock.curve_publickey, self.sock.curve_secretkey = self.key, secret
        self.sock.setsockopt(zmq.SNDHWM, 100_000)
        self.sock.setsockopt(zmq.RCVHWM, 100_000)
        self.port = port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        session = uuid.uuid4().hex
        self.ready = p.encode(
            p.Ready(
                runner_id=f"standin-{port}",
                session=session,
                capacity=capacity,
                labels={},
                version=__version__,
            )
        )
        self.beat = p.encode(p.Heartbeat(session=session))

    def handle(self) -> None:
        while True:
            try:
                frame = self.sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            message = p.decode(frame)
            if isinstance(message, p.Hello):
                self.sock.send(self.ready)
            elif isinstance(message, p.Job):
                self.finish(message)

    def finish(self, job: p.Job) -> None:
        received = time.time()
        self.sock.send(p.encode(p.Accept(job_id=job.job_id, attempt=job.attempt, seq=0)))
        done = p.Done(
            job_id=job.job_id,
            attempt=job.attempt,
            seq=1,
            status="success",
            reason=f"recv={received:.6f}",
            duration=0.0,
        )
        self.sock.send(p.encode(done))


def serve(capacity: int, count: int, server_key: bytes | None = None) -> None:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    standins = [StandIn(ctx, capacity, server_key) for _ in range(count)]
    poller = zmq.Poller()
    by_socket = {}
    for standin in standins:
        poller.register(standin.sock, zmq.POLLIN)
        by_socket[standin.sock] = standin
    ports = " ".join(f"{s.port}={s.key.decode()}" if s.key else str(s.port) for s in standins)
    print(f"ready {ports}", flush=True)  # noqa: T201 - the parent reads the ports
    last_beat = time.monotonic()
    while True:
        for sock, _ in poller.poll(500):
            by_socket[sock].handle()
        if time.monotonic() - last_beat > 0.5:
            last_beat = time.monotonic()
            for standin in standins:
                try:
                    standin.sock.send(standin.beat, zmq.NOBLOCK)
                except zmq.Again:  # no dispatcher connected yet
                    pass


if __name__ == "__main__":
    serve(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3].encode() if len(sys.argv) > 3 else None)
