"""A step container's output, carried from a reader thread to the event loop.

The docker SDK's attach stream blocks, so a thread of its own reads it (one
per running step: long blocking calls would starve the loop's shared thread
pool). The thread appends to a bounded buffer and wakes the loop; the loop
takes the buffer in chunks of at most ``MAX_LOG_CHUNK``, so a chatty step
fills frames instead of sending one per write, and a reader that gets ahead
of the job log waits instead of growing memory. After the stream ends the
thread waits for the container's exit status.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from narwhal.mesh.protocol import MAX_LOG_CHUNK
from narwhal.runner.executor import Output, Stop

#: Bytes the reader may hold before it waits for the loop to catch up.
BUFFER_LIMIT = 4 * MAX_LOG_CHUNK


class Follower:
    """Reads one container's attach stream in a thread; the loop pumps it out."""

    def __init__(self, container: Any, stream: Any) -> None:
        self._container = container
        self._stream = stream
        self._loop = asyncio.get_running_loop()
        self._buffer = bytearray()
        self._cond = threading.Condition()
        self._wake = asyncio.Event()
        self._woken = False
        self._eof = False
        self._abandoned = False
        self._status: dict[str, Any] | None = None
        self.error = ""
        self._finished: asyncio.Future[None] = self._loop.create_future()
        self._thread = threading.Thread(target=self._run, name="narwhal-docker-follow")
        self._thread.start()

    def _run(self) -> None:
        try:
            for data in self._stream:
                self._put(data)
            self._status = self._container.wait()
        except Exception as e:  # noqa: BLE001 - reported to the loop, never lost
            self.error = f"{type(e).__name__}: {e}"
        finally:
            with self._cond:
                self._eof = True
            self._notify()
            self._call_soon(self._set_finished)

    def _put(self, data: bytes) -> None:
        with self._cond:
            while len(self._buffer) >= BUFFER_LIMIT and not self._abandoned:
                self._cond.wait()
            if self._abandoned:
                return
            self._buffer += data
        self._notify()

    def _notify(self) -> None:
        with self._cond:
            if self._woken:
                return
            self._woken = True
        self._call_soon(self._wake.set)

    def _call_soon(self, fn: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(fn)
        except RuntimeError:
            pass  # the loop is gone: nobody is left to tell

    def _set_finished(self) -> None:
        if not self._finished.done():
            self._finished.set_result(None)

    async def pump(self, output: Output) -> None:
        """Send everything the container writes to ``output`` until its stream ends."""
        while (chunk := await self._take()) is not None:
            await output(chunk)

    async def _take(self) -> bytes | None:
        while True:
            with self._cond:
                if self._buffer:
                    chunk = bytes(self._buffer[:MAX_LOG_CHUNK])
                    del self._buffer[:MAX_LOG_CHUNK]
                    self._cond.notify()
                    return chunk
                if self._eof:
                    return None
                self._woken = False
                self._wake.clear()
            await self._wake.wait()

    def exit_code(self) -> int | None:
        """The container's exit status, once ``pump`` has returned."""
        if self._status is None:
            return None
        return int(self._status.get("StatusCode", -1))

    async def close(self) -> None:
        """Stop reading and wait for the thread (call after the container is gone)."""
        with self._cond:
            self._abandoned = True
            self._cond.notify_all()
        if not self._finished.done():
            await asyncio.to_thread(self._stream.close)
        await asyncio.shield(self._finished)
        await asyncio.to_thread(self._thread.join)
        await asyncio.to_thread(_close_response, self._stream)


def _close_response(stream: Any) -> None:
    # CancellableStream.close() only shuts the socket when the response is
    # still open; closing the response itself releases the connection.
    response = getattr(stream, "_response", None)
    if response is not None:
        response.close()


async def race(work: asyncio.Task[None], stop: Stop, timeout: float | None) -> str:
    """Wait for ``work``, a stop request or the timeout, whichever comes first."""
    stopped = asyncio.create_task(stop.wait())
    try:
        done, _ = await asyncio.wait(
            {work, stopped}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        stopped.cancel()
    if work in done:
        return "exited"
    return "stopped" if stopped in done else "timed_out"
