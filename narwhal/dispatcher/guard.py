"""HTTP checks in front of the dispatcher's API, against web pages and DNS rebinding.

The checks themselves, why each is there (simple cross-origin requests,
DNS rebinding, JSON nesting) and the names a server answers to are
``narwhal.httpguard``'s, which the dashboard uses too; for the dispatcher
the public URL is ``--public-url``. This module says why the dispatcher
needs them and which paths skip them: tokens stop requests that are not
allowed whatever their origin; these checks keep the browser out of what a
token does not cover (``--public-read``, ``/health``) and are a second
fence for the rest.

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
