"""A small websocket client (wsproto over asyncio streams), as a browser talks to ``/ws``.

It sends what a browser sends in the handshake (``Origin``, the session
cookie) and lets a test refuse to read (``receive_buffer``: a small
SO_RCVBUF, so the kernel does not soak up much of what a non-reading
client is sent).
"""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)


class Refused(Exception):
    """The server answered the handshake with an HTTP status instead of accepting."""

    def __init__(self, status: int) -> None:
        super().__init__(f"handshake refused with HTTP {status}")
        self.status = status


class Closed(Exception):
    """The server closed the websocket (``code``) or the connection."""

    def __init__(self, code: int | None, reason: str = "") -> None:
        super().__init__(f"closed: {code} {reason}")
        self.code = code
        self.reason = reason


class WsClient:
    """One websocket connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.conn = WSConnection(ConnectionType.CLIENT)
        self._text: list[str] = []
        self._messages: list[str] = []

    @classmethod
    async def connect(
        cls,
        port: int,
        *,
        origin: str | None,
        cookie: str | None = None,
        host: str | None = None,
        path: str = "/ws",
        receive_buffer: int | None = None,
    ) -> WsClient:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if receive_buffer is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
            reader, writer = await asyncio.open_connection(sock=sock)
        except BaseException:
            sock.close()
            raise
        client = cls(reader, writer)
        try:
            await client._handshake(host or f"127.0.0.1:{port}", path, origin, cookie)
        except BaseException:
            await client.close()
            raise
        return client

    async def _handshake(
        self, host: str, path: str, origin: str | None, cookie: str | None
    ) -> None:
        headers = []
        if origin is not None:
            headers.append((b"origin", origin.encode()))
        if cookie is not None:
            headers.append((b"cookie", cookie.encode()))
        await self._write(self.conn.send(Request(host=host, target=path, extra_headers=headers)))
        status = None
        accepted = False
        while not accepted:
            for event in await self._events():
                if accepted:  # what came with the answer: the first messages
                    await self._handle(event)
                elif isinstance(event, AcceptConnection):
                    accepted = True
                elif isinstance(event, RejectConnection):
                    status = event.status_code
                    if not event.has_body:
                        raise Refused(status)
                elif isinstance(event, RejectData) and event.body_finished:
                    raise Refused(status or 0)

    async def _write(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def _events(self) -> list[Any]:
        data = await self.reader.read(65536)
        if not data:
            raise Closed(None, "connection closed")
        self.conn.receive_data(data)
        return list(self.conn.events())

    async def send(self, message: Any) -> None:
        text = message if isinstance(message, str) else json.dumps(message)
        await self._write(self.conn.send(TextMessage(data=text)))

    async def send_bytes(self, data: bytes) -> None:
        await self._write(self.conn.send(BytesMessage(data=data)))

    async def receive(self, timeout: float = 10.0) -> dict[str, Any]:
        """The next message (a JSON object); Closed once the server closed."""
        async with asyncio.timeout(timeout):
            while not self._messages:
                for event in await self._events():
                    await self._handle(event)
        return dict(json.loads(self._messages.pop(0)))

    async def _handle(self, event: Any) -> None:
        if isinstance(event, TextMessage):
            self._text.append(event.data)
            if event.message_finished:
                self._messages.append("".join(self._text))
                self._text = []
        elif isinstance(event, Ping):
            await self._write(self.conn.send(event.response()))
        elif isinstance(event, CloseConnection):
            raise Closed(event.code, event.reason or "")

    async def receive_until(self, check: Any, timeout: float = 20.0) -> list[dict[str, Any]]:
        """Messages until one for which ``check(message)`` is true (it included)."""
        seen = []
        async with asyncio.timeout(timeout):
            while True:
                message = await self.receive(timeout)
                seen.append(message)
                if check(message):
                    return seen

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, OSError):
            pass
