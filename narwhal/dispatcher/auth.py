"""Which runner may speak on a link: CurveZMQ keys checked against the allow-list.

The dispatcher's ROUTER is the CURVE server (``transport.serve_curve``); the
ZAP handler (``mesh.zap``) admits only keys in the allow-list
(``mesh.trust``), and is bound before the first connect. That decides who
may *connect*. ``MeshAuth.check`` decides what each frame may *say*: every
frame carries the key its connection was authenticated with (User-Id), and

- a READY is accepted only with the runner id that key is bound to (one
  trusted runner cannot speak for another); the link is then bound to that
  key, and pinned labels from the allow-list replace the READY's;
- every later frame on the link must carry that same key: after a reconnect
  libzmq may have put another process behind the same alias;
- a key that is no longer listed (revoked) is refused wherever it shows up.

``reload`` looks at the allow-list directory about once a second; the pool
drops links whose key went away and retries endpoints refused for their key.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from dataclasses import dataclass

import zmq
import zmq.asyncio

from narwhal.config import ServerCurve
from narwhal.dispatcher.links import Link
from narwhal.errors import ConfigError
from narwhal.mesh import protocol as p
from narwhal.mesh.transport import serve_curve
from narwhal.mesh.trust import TrustedRunners, scan
from narwhal.mesh.zap import DOMAIN, ZapHandler

log = logging.getLogger(__name__)

#: What a failed handshake means, by monitor event (and protocol error code).
_HANDSHAKE_FAILURES: dict[int, str] = {
    int(zmq.EVENT_HANDSHAKE_FAILED_AUTH): "its CURVE key is not trusted here",
}
_PROTOCOL_ERRORS: dict[int, str] = {
    int(zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH): "it does not speak CURVE (--insecure?)",
    int(zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC): "it pins another dispatcher key (--dispatcher-key)",
}
HANDSHAKE_EVENTS = int(
    zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
)


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to do with a frame: pass ``message`` on, or act on the link."""

    message: p.Message | None = None
    #: "refuse": drop the link, list the endpoint refused; "reopen": another
    #: trusted process is behind the alias, connect afresh.
    action: str = ""
    reason: str = ""
    #: A frame that lies about who sent it (counted in ``bad_frames``).
    forged: bool = False


def handshake_failure(event: int, value: int) -> str:
    """Why a handshake failed for good, from a monitor event, for ``refused``.

    "" for a failure that can be passing: a peer that closes in the middle
    of a handshake (a runner being killed or restarted) fails it with an
    unspecified protocol error, and must be tried again, not refused.
    """
    if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
        return _PROTOCOL_ERRORS.get(value, "")
    reason = _HANDSHAKE_FAILURES.get(event, "")
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        reason += ": run narwhal keys trust FILE --id ID on the dispatcher"
    return reason


class MeshAuth:
    """The allow-list, the ZAP handler, and the key check of every frame."""

    def __init__(self, curve: ServerCurve, ctx: zmq.asyncio.Context, sock: zmq.Socket[bytes]):
        self.curve = curve
        self.trust = TrustedRunners(curve.runners_dir)
        self.trust.load()
        # ZAP first: a CURVE server without a handler admits every client.
        self._zap = ZapHandler(ctx, self._admit)
        serve_curve(sock, curve.public_key, curve.secret_key, DOMAIN)
        self._next_scan = 0.0
        #: Aliases of the pool's links: only their connections are admitted
        #: (see ``mesh.zap`` on connections libzmq keeps retrying).
        self.live: set[bytes] = set()
        #: Aliases whose handshake was refused for the key, since the pool
        #: last looked (``denied``).
        self._denied: set[bytes] = set()

    def close(self) -> None:
        self._zap.close()

    def _admit(self, key: bytes, alias: bytes) -> str | None:
        if alias not in self.live:
            return "a connection the dispatcher has dropped (libzmq retries it)"
        if key not in self.trust.by_key:
            self._denied.add(alias)
            return "key not in the trusted runner keys"
        return None

    def open(self, alias: bytes) -> None:
        """Admit connections under ``alias`` (a link the pool is about to connect)."""
        self.live.add(alias)

    def forget(self, alias: bytes) -> None:
        """Turn away connections under ``alias`` from now on (its link was dropped)."""
        self.live.discard(alias)
        self._denied.discard(alias)

    def denied(self, alias: bytes) -> bool:
        """Whether the key on ``alias``'s connection was refused (once: it is forgotten)."""
        if alias in self._denied:
            self._denied.discard(alias)
            return True
        return False

    def check(self, link: Link, user: str, message: p.Message) -> Verdict:
        """The slow path: a frame whose key is not (yet) the one its link is bound to."""
        entry = self.trust.by_key.get(user.encode())
        if entry is None:
            return Verdict(action="refuse", reason=f"its key {user[:8]}... is not trusted")
        if link.key is not None and user != link.key:  # a new connection on the alias
            return Verdict(action="reopen", reason=f"{link.endpoint} now speaks as {user[:8]}...")
        if not isinstance(message, p.Ready):
            return Verdict(message=message)  # not bound yet: frames before READY (see _stray)
        if message.runner_id != entry.runner_id:
            reason = (
                f"a runner whose key is trusted as {entry.runner_id!r} "
                f"claims runner id {message.runner_id!r}"
            )
            return Verdict(action="refuse", reason=reason, forged=True)
        link.key = user
        if entry.labels is not None:  # the operator's word, not the runner's
            message = dataclasses.replace(message, labels=dict(entry.labels))
        return Verdict(message=message)

    def announced(self, runner_id: str, key: str | None) -> str:
        """Why an mDNS announcement is not worth a connection ("" if it is)."""
        if key is None:
            return "announces no CURVE key (curve= in TXT): is the runner --insecure?"
        entry = self.trust.by_key.get(key.encode())
        if entry is None:
            return (
                f"key not trusted: run narwhal keys trust FILE --id {runner_id} on the "
                f"dispatcher, FILE holding the runner's public key {key}"
            )
        if entry.runner_id != runner_id:
            return f"announces id {runner_id!r}, but its key is trusted as {entry.runner_id!r}"
        return ""

    def revoked(self, link: Link) -> bool:
        """Whether ``link``'s key is no longer trusted as its runner id."""
        if link.key is None:
            return False
        entry = self.trust.by_key.get(link.key.encode())
        if entry is None or entry.runner_id != link.runner_id:
            return True
        if entry.labels is not None:
            link.labels = dict(entry.labels)
        return False

    async def reload(self, now: float) -> bool:
        """Look at the allow-list if it is time; True when what is trusted changed."""
        if now < self._next_scan:
            return False
        self._next_scan = now + self.curve.poll_interval
        directory, known = self.curve.runners_dir, self.trust.listing.signature
        try:
            listing = await asyncio.to_thread(scan, directory, known)
        except (OSError, ConfigError) as e:  # e.g. the directory being replaced: look again
            log.warning("trusted runner keys in %s: %s", directory, e)
            return False
        return self.trust.apply(listing)
