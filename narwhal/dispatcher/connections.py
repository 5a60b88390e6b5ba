"""The pool's connections: one ROUTER socket, a ``Link`` per runner, and the refusals.

The pool connects out to runner endpoints; each connection has its own
routing alias, never reused (see ``links``). With CurveZMQ (``curve``
given), ``MeshAuth`` admits only trusted keys; an endpoint refused for its
key (or a failed handshake) is disconnected, listed in ``refused`` and
tried again only when the allow-list changes (libzmq alone would retry it
every 100 ms forever), when an operator adds it again, or after an mDNS
goodbye. What a lost or refused link's jobs become is the pool's business:
refusals wait in ``take_refusals`` until the frames being read are settled.
"""

from __future__ import annotations

import contextlib
import logging
import uuid

import zmq
import zmq.asyncio

from narwhal.config import MeshConfig, ServerCurve
from narwhal.dispatcher.auth import MeshAuth
from narwhal.dispatcher.links import Link, check_endpoint
from narwhal.dispatcher.mesh import LinkState, Source
from narwhal.mesh import protocol as p
from narwhal.mesh.transport import Router
from narwhal.quietlog import QuietLog

log = logging.getLogger(__name__)

#: The most a closing dispatcher waits for frames still queued to runners.
CLOSE_LINGER_MS = 200


class Connections:
    """The links of one ROUTER socket, by alias, in connection order."""

    def __init__(
        self, config: MeshConfig, ctx: zmq.asyncio.Context, curve: ServerCurve | None
    ) -> None:
        self.config = config
        self.session = uuid.uuid4().hex
        self.router = Router(ctx, linger_ms=config.linger_ms)
        #: None: the mesh is not authenticated (``--insecure``).
        self.auth = MeshAuth(curve, ctx, self.router.sock) if curve is not None else None
        if self.auth is None:
            log.warning("mesh authentication is OFF: any process can pose as a runner")
        self.links: dict[bytes, Link] = {}
        self._generation = 0
        #: Endpoints refused, and why: a runner id another link holds, or
        #: (with ``auth``) its key.
        self.refused: dict[str, str] = {}
        #: The endpoints of ``refused`` refused for their key, and their source:
        #: tried again when the allow-list changes.
        self.key_refused: dict[str, Source] = {}
        #: Links refused while frames were read, and why: lost once the batch is settled.
        self._refusals: list[tuple[Link, str]] = []
        self.quiet = QuietLog(log)

    def close(self) -> None:
        # Frames to connected runners leave within milliseconds; what is still
        # queued after that is for a runner that is gone (a HELLO queued for
        # the reconnect of the embedded runner that just stopped), and waiting
        # out the whole linger for it only made every shutdown a second longer.
        self.router.close(min(self.config.linger_ms, CLOSE_LINGER_MS))
        if self.auth is not None:
            self.auth.close()

    def connect(self, endpoint: str, source: Source) -> Link | None:
        """Connect to a runner endpoint; idempotent per endpoint.

        A repeated announcement of a known endpoint never connects twice (a
        second connect under the same alias would abort libzmq). Returns
        None for a discovered endpoint that is refused.
        """
        endpoint = check_endpoint(endpoint)
        for link in self.links.values():
            if link.endpoint == endpoint:
                if source == Source.STATIC:
                    link.source = Source.STATIC  # named by an operator: never dropped by mDNS
                return link
        if source == Source.MDNS and endpoint in self.refused:
            return None
        if self.key_refused.pop(endpoint, None) is not None:  # an operator asks again
            self.refused.pop(endpoint, None)
        return self.open(endpoint, source=source)

    def open(self, endpoint: str, backoff: float = 1.0, source: Source = Source.STATIC) -> Link:
        # A fresh alias every time: reusing one aborts libzmq (router.cpp).
        self._generation += 1
        alias = f"{self._generation}:{endpoint}".encode()
        self.router.sock.setsockopt(zmq.CONNECT_ROUTING_ID, alias)
        if self.auth is not None:
            # The connection's ZAP requests carry the socket's ROUTING_ID as
            # it was at connect: the ZAP handler admits live aliases only.
            self.auth.open(alias)
            self.router.sock.setsockopt(zmq.ROUTING_ID, alias)
        self.router.sock.connect(endpoint)
        link = Link(endpoint=endpoint, alias=alias, backoff=backoff, source=source)
        self.links[alias] = link
        self.send(link, p.Hello(session=self.session))
        return link

    def reopen(self, link: Link, backoff: float = 1.0) -> Link:
        """Drop ``link`` and everything queued on it; connect again under a new alias."""
        self.drop(link)
        return self.open(link.endpoint, backoff, link.source)

    def drop(self, link: Link) -> None:
        self.links.pop(link.alias, None)
        link.state = LinkState.LOST
        if self.auth is not None:  # its connection, if libzmq keeps retrying it, stays out
            self.auth.forget(link.alias)
        with contextlib.suppress(zmq.ZMQError):
            self.router.sock.disconnect(link.endpoint)

    def send(self, link: Link, message: p.Message) -> bool:
        return self.send_frame(link, p.encode(message))

    def send_frame(self, link: Link, frame: bytes) -> bool:
        try:
            self.router.send(link.alias, frame)
        except zmq.Again:
            self.quiet.warning(link.endpoint, "runner %s: send queue full", link.endpoint)
            return False
        except zmq.ZMQError as e:
            self.quiet.warning(link.endpoint, "runner %s: cannot send: %s", link.endpoint, e)
            return False
        return True

    # refusals

    def refuse(self, endpoint: str, reason: str, source: Source) -> None:
        """List ``endpoint`` as refused for its key, until the allow-list changes."""
        if self.refused.get(endpoint) != reason:
            log.warning("refusing runner at %s: %s", endpoint, reason)
        self.refused[endpoint] = reason
        self.key_refused[endpoint] = source

    def refuse_link(self, link: Link, reason: str, *, tell: bool = True) -> None:
        """Disconnect ``link`` for its key.

        ``tell``: the runner completed a handshake, so it can be told why;
        the link is then reported lost once the batch is settled. A link
        refused at the handshake is dropped without a report.
        """
        self.refuse(link.endpoint, reason, link.source)
        if tell:
            self.tell_refused(link, reason)
        self.drop(link)

    def tell_refused(self, link: Link, reason: str) -> None:
        """Tell the runner why before its link goes (else it sees a dispatcher gone silent).

        Once per refusal, never answered; queued before the disconnect, which
        delivers what is queued within the socket's linger.
        """
        self.send(link, p.Refused(reason=reason[: p.MAX_REFUSAL_CHARS]))
        self.refusals_later(link, reason)

    def refusals_later(self, link: Link, reason: str) -> None:
        """``link`` is lost for ``reason``, to be reported after the current batch."""
        self._refusals.append((link, reason))

    def take_refusals(self) -> list[tuple[Link, str]]:
        refusals, self._refusals = self._refusals, []
        return refusals

    def retry(self, endpoint: str) -> bool:
        """Forget a refusal of ``endpoint``; whether there was one."""
        self.key_refused.pop(endpoint, None)
        return self.refused.pop(endpoint, None) is not None

    def retry_key_refused(self) -> dict[str, Source]:
        """Forget every refusal for a key (the allow-list changed); return them."""
        retry, self.key_refused = self.key_refused, {}
        for endpoint in retry:
            self.refused.pop(endpoint, None)
        return retry
