"""Hand-driven mesh peers for attack and fault tests: every raw socket is made here.

A ``RawRunner`` is a real ZeroMQ DEALER bound on loopback, where a real
dispatcher connects as it would to a runner; the test decides every frame it
sends (speaking ``narwhal.mesh.protocol``, or not). Tests create raw peers
only through this module, so that mesh security settings (keys, once the
mesh is authenticated) are added in one place.
"""

from __future__ import annotations

import zmq

from narwhal.mesh import protocol as p
from tests.support.keys import MeshKeys


class RawRunner:
    """A DEALER the dispatcher connects to; the test decides what it says.

    Given ``keys``, it is a CurveZMQ client whose key the dispatcher trusts
    as ``runner_id`` (the same key a real runner of that id uses): the attacks
    are then those of a runner the dispatcher lets in. Without, it speaks
    plain ZeroMQ, which only an ``--insecure`` dispatcher accepts.
    """

    def __init__(self, keys: MeshKeys | None = None, runner_id: str = "raw") -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        if keys is not None:
            pair = keys.pair(runner_id)
            keys.trust(pair.public, runner_id)
            self.sock.curve_serverkey = keys.server.public
            self.sock.curve_publickey, self.sock.curve_secretkey = pair.public, pair.secret
        port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"

    def recv(self, timeout: float = 10) -> p.Message:
        if not self.sock.poll(int(timeout * 1000)):
            raise AssertionError("nothing from the dispatcher")
        return p.decode(self.sock.recv())

    def recv_until(self, kind: type[p.Message], timeout: float = 10) -> p.Message:
        """The first frame of type ``kind``, skipping heartbeats and the like."""
        while True:
            message = self.recv(timeout)
            if isinstance(message, kind):
                return message

    def send(self, frame: bytes | p.Message, *more: bytes) -> None:
        data = p.encode(frame) if isinstance(frame, p.Message) else frame
        self.sock.send_multipart([data, *more])

    def ready(
        self,
        runner_id: str,
        *,
        session: str = "raw-session",
        capacity: int = 1,
        active: tuple[tuple[int, ...], ...] = (),
        labels: dict[str, str] | None = None,
    ) -> p.Ready:
        """Send READY as a runner would after HELLO; return it."""
        ready = p.Ready(
            runner_id=runner_id,
            session=session,
            capacity=capacity,
            labels=labels or {},
            version="0",
            active=active,
        )
        self.send(ready)
        return ready

    def close(self) -> None:
        """Close the socket at once: the dispatcher sees the connection drop."""
        self.sock.close(0)
        self.ctx.term()
