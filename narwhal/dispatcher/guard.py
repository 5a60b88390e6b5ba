"""HTTP checks in front of the dispatcher's API, against web pages and DNS rebinding.

The checks themselves live in ``narwhal.httpguard`` (the dashboard uses
them too); this module says why the dispatcher needs them and which paths
skip them.

A web page in a user's browser can send requests to a loopback dispatcher:
"simple" cross-origin requests (a form post, ``fetch`` with ``no-cors``)
go out without a CORS preflight, and with DNS rebinding a page on
``evil.example`` even reads the answers. So every request (ASGI middleware,
before routing) must name this dispatcher in ``Host``; a request with an
``Origin`` must come from one of its own origins; and a ``POST``, ``PUT`` or
``PATCH`` must say ``Content-Type: application/json``, a type no simple
request can have, so a browser never sends one cross-origin without a
preflight, and no CORS header ever answers a preflight. ``DELETE`` is never
simple: it always needs a preflight, and none succeeds. JSON bodies are
parsed with a nesting limit (``parse_json``), so a deep one is a 400, not a
``RecursionError``.

Names this dispatcher answers to: the bound ``host:port``; for a loopback
bind also ``localhost``, ``127.0.0.1`` and ``[::1]`` with that port; for a
wildcard bind (``0.0.0.0``, ``::``) any IP address with that port and the
machine's host name (an IP address in ``Host`` cannot be a rebinding: the
attacker's page would have to be served from that very address); and the
host of ``--public-url``. Tokens stop requests that are not allowed whatever
their origin; these checks keep the browser out of what a token does not
cover (``--public-read``, ``/health``) and are a second fence for the rest.

Webhook paths (``/webhooks/``, mounted next to the API by ``narwhal up``)
are exempt: a forge reaches them through whatever name the operator gave it
(a proxy, a tunnel), sends no ``Origin``, and may send form-encoded bodies,
while each delivery must carry an HMAC signature made with the forge's
secret, which a web page cannot produce. The checks would refuse genuine
deliveries and add nothing against forged ones.
"""

from __future__ import annotations

from starlette.types import ASGIApp

from narwhal.httpguard import (
    MAX_DEPTH,
    HostPolicy,
    JsonError,
    is_json,
    parse_json,
    split_authority,
)
from narwhal.httpguard import Guard as _Guard

__all__ = [
    "MAX_DEPTH",
    "Guard",
    "HostPolicy",
    "JsonError",
    "is_json",
    "parse_json",
    "split_authority",
]

_EXEMPT = ("/webhooks/",)


class Guard(_Guard):
    """The checks above, for the dispatcher's API (and ``up``'s webhook endpoints)."""

    def __init__(self, app: ASGIApp, policy: HostPolicy) -> None:
        super().__init__(app, policy, exempt=_EXEMPT, server="this dispatcher (see --public-url)")
