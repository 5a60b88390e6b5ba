"""A minimal protocol-speaking runner stand-in, so benchmarks measure the dispatcher.

It binds a DEALER, answers HELLO with READY (the given capacity), and answers
each JOB at once with ACCEPT and DONE (status success), as a runner whose
jobs take no time would. Run: ``python -m bench.standin PORT CAPACITY``.
With ``--echo`` it answers a bare (non-protocol) ROUTER loop the same way,
for the ceiling measurement.
"""

from __future__ import annotations

import sys
import uuid

import zmq

from narwhal import __version__
from narwhal.mesh import protocol as p


def serve(port: int, capacity: int) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 100_000)
    sock.setsockopt(zmq.RCVHWM, 100_000)
    sock.bind(f"tcp://127.0.0.1:{port}")
    session = uuid.uuid4().hex
    ready = p.encode(
        p.Ready(
            runner_id=f"standin-{port}",
            session=session,
            capacity=capacity,
            labels={},
            version=__version__,
        )
    )
    beat = p.encode(p.Heartbeat(session=session))
    print("ready", flush=True)  # noqa: T201 - the parent waits for this line
    while True:
        if not sock.poll(1000):
            sock.send(beat)
            continue
        message = p.decode(sock.recv())
        if isinstance(message, p.Hello):
            sock.send(ready)
        elif isinstance(message, p.Job):
            job, attempt = message.job_id, message.attempt
            sock.send(p.encode(p.Accept(job_id=job, attempt=attempt, seq=0)))
            done = p.Done(
                job_id=job, attempt=attempt, seq=1, status="success", reason="", duration=0.0
            )
            sock.send(p.encode(done))


if __name__ == "__main__":
    serve(int(sys.argv[1]), int(sys.argv[2]))
