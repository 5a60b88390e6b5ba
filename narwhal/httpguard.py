"""HTTP checks in front of a web app, against web pages and DNS rebinding.

Shared by the dispatcher's API (``dispatcher.guard`` says why it needs each
check) and the dashboard (``narwhal.backend``): a leaf module, so the
backend never imports the dispatcher.

A web page in a user's browser can send requests to a server on loopback:
"simple" cross-origin requests (a form post, ``fetch`` with ``no-cors``) go
out without a CORS preflight, and with DNS rebinding a page on
``evil.example`` even reads the answers. So every request (ASGI middleware,
before routing) must name this server in ``Host``; a request with an
``Origin`` must come from one of its own origins; and a ``POST``, ``PUT`` or
``PATCH`` must say ``Content-Type: application/json``, a type no simple
request can have, so a browser never sends one cross-origin without a
preflight, and no CORS header ever answers a preflight. ``DELETE`` is never
simple: it always needs a preflight, and none succeeds. JSON bodies are
parsed with a nesting limit (``parse_json``), so a deep one is a 400, not a
``RecursionError``.

A websocket handshake is never subject to CORS: any page may open one to
any server, and the browser sends the user's cookies with it. A server
that wants them checked (``websocket_origin``) gets a refusal (HTTP 403)
for every handshake whose ``Origin`` is missing or not its own.

Names a server answers to: the bound ``host:port``; for a loopback bind
also ``localhost``, ``127.0.0.1`` and ``[::1]`` with that port; for a
wildcard bind (``0.0.0.0``, ``::``) any IP address with that port and the
machine's host name (an IP address in ``Host`` cannot be a rebinding: the
attacker's page would have to be served from that very address); and the
host of a public URL, when the server is reached through a proxy.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

#: Deepest nesting of arrays and objects a JSON body may have (ours need 2).
MAX_DEPTH = 32
_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})
_DEFAULT_PORTS = {"http": 80, "https": 443}


class JsonError(ValueError):
    """A body is not JSON or nests deeper than allowed; the message is for the client."""


def parse_json(body: bytes | str, *, max_depth: int = MAX_DEPTH) -> Any:
    """``json.loads`` that refuses deep nesting before the parser recurses into it."""
    raw = body.encode() if isinstance(body, str) else body
    if _depth(raw) > max_depth:
        raise JsonError(f"JSON nested deeper than {max_depth} levels")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise JsonError(f"body is not valid JSON: {e}") from None


def _depth(body: bytes) -> int:
    """Deepest bracket nesting outside strings (one pass, for bodies of some kB)."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in body:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
    return deepest


def is_json(content_type: str | None) -> bool:
    """``application/json``, parameters (``; charset=utf-8``) allowed."""
    media = (content_type or "").partition(";")[0]
    return media.strip().lower() == "application/json"


@dataclass(frozen=True, slots=True)
class HostPolicy:
    """The names and ports a request may address this server by."""

    #: (host, port) pairs; port None: the Host header or Origin gave none.
    names: frozenset[tuple[str, int | None]]
    #: Accept any IP address with this port (a wildcard bind), or None.
    any_address_port: int | None = None

    @classmethod
    def of(cls, host: str, port: int, public_url: str | None = None) -> HostPolicy:
        names: set[tuple[str, int | None]] = set()
        hosts = [host.lower()]
        wildcard = host in ("0.0.0.0", "::", "")
        if wildcard or _loopback(host):
            hosts += ["localhost", "127.0.0.1", "::1"]
        if wildcard:
            hosts.append(socket.gethostname().lower())
        names.update(_with_port(hosts, port, 80))
        if public_url:
            url = urlsplit(public_url)
            default = _DEFAULT_PORTS.get(url.scheme, 80)
            names.update(_with_port([url.hostname or ""], url.port or default, default))
        return cls(names=frozenset(names), any_address_port=port if wildcard else None)

    def accepts(self, host: str, port: int | None) -> bool:
        if (host, port) in self.names:
            return True
        return port is not None and port == self.any_address_port and _is_address(host)

    def own_origin(self, origin: str) -> bool:
        """``Origin: scheme://host[:port]`` names this server."""
        url = urlsplit(origin)
        if url.scheme not in _DEFAULT_PORTS or url.path or not url.netloc:
            return False
        where = split_authority(url.netloc)
        return where is not None and self.accepts(*where)


def _with_port(hosts: Iterable[str], port: int, default: int) -> set[tuple[str, int | None]]:
    pairs: set[tuple[str, int | None]] = {(h, port) for h in hosts}
    if port == default:  # "Host: example" means the scheme's default port
        pairs |= {(h, None) for h in hosts}
    return pairs


def _loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def split_authority(text: str) -> tuple[str, int | None] | None:
    """``host``, ``host:port``, ``[v6]:port`` as (lowercase host, port); None if malformed."""
    text = text.strip().lower()
    if text.startswith("["):
        host, close, rest = text[1:].partition("]")
        if not close or (rest and not rest.startswith(":")):
            return None
        port_text = rest[1:] if rest else None
    else:
        host, colon, port_text_raw = text.partition(":")
        port_text = port_text_raw if colon else None
    if not host:
        return None
    if port_text is None:
        return host, None
    if not port_text.isdigit() or int(port_text) > 65535:
        return None
    return host, int(port_text)


class Guard:
    """ASGI middleware: the Host, Origin and Content-Type checks above.

    ``exempt``: path prefixes that skip the checks; ``server``: how a Host
    refusal names this server (``"this dispatcher (see --public-url)"``);
    ``websocket_origin``: check websocket handshakes too, and require their
    ``Origin``.
    """

    def __init__(
        self,
        app: ASGIApp,
        policy: HostPolicy,
        *,
        exempt: tuple[str, ...] = (),
        server: str = "this server",
        websocket_origin: bool = False,
    ) -> None:
        self.app = app
        self.policy = policy
        self.exempt = exempt
        self.server = server
        self.websocket_origin = websocket_origin

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        checked = kind == "http" or (kind == "websocket" and self.websocket_origin)
        if not checked or scope["path"].startswith(self.exempt):
            await self.app(scope, receive, send)
            return
        problem = self._problem(scope)
        if problem is None:
            await self.app(scope, receive, send)
        elif kind == "websocket":
            await _refuse_handshake(receive, send)
        else:
            await _refuse(send, *problem)

    def _problem(self, scope: Scope) -> tuple[int, str] | None:
        headers = _headers(scope)
        host = headers.get("host", "")
        where = split_authority(host)
        if where is None or not self.policy.accepts(*where):
            return 421, f"Host {host!r} is not an address of {self.server}"
        origin = headers.get("origin")
        if origin is None and scope["type"] == "websocket":
            return 403, "a websocket handshake must say its Origin"
        if origin is not None and not self.policy.own_origin(origin):
            return 403, f"requests from origin {origin!r} are refused"
        if scope.get("method") in _WITH_BODY and not is_json(headers.get("content-type")):
            return 415, "expected Content-Type: application/json"
        return None


async def _refuse(send: Send, status: int, message: str) -> None:
    body = json.dumps({"error": message}, separators=(",", ":")).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _refuse_handshake(receive: Receive, send: Send) -> None:
    """A close before the accept: the server answers the handshake with HTTP 403."""
    message = await receive()
    if message["type"] == "websocket.connect":
        await send({"type": "websocket.close", "code": 1008})


def _headers(scope: Scope) -> dict[str, str]:
    """The request's headers by lowercase name; a repeated Host or Origin counts as bad."""
    found: dict[str, str] = {}
    for raw_name, raw_value in scope["headers"]:
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        if name in found and name in ("host", "origin", "content-type"):
            value = "\x00repeated"
        found[name] = value
    return found
