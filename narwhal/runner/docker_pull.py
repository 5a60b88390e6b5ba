"""Pulling a missing image, with a time limit and progress in the job log.

The SDK's pull stream blocks, so a thread reads it and hands the loop one
line per layer and status change (not every progress tick); the loop writes
them to the job log. On timeout the stream is closed under the thread, which
then ends.
"""

from __future__ import annotations

import asyncio
import re
import threading
from typing import Any

from docker.utils import parse_repository_tag  # type: ignore[import-untyped,unused-ignore]

from narwhal.errors import ExecutorError
from narwhal.runner.executor import NotRunnable, Output

#: What a user whose image is missing or lacks a command can do about it.
HINT = "set image: in narwhal.yml, or run with --executor local"

#: What registries say of an image they do not have (or will not show).
_NO_SUCH_IMAGE = re.compile(
    r"not found|manifest unknown|does not exist|pull access denied|invalid reference"
    r"|repository name must",
    re.IGNORECASE,
)

#: The shell's exit code for a command it cannot find.
NOT_FOUND_EXIT = 127


def not_found_reason(image: str, default: str) -> str:
    """What exit code 127 in a container means, and what to do about it."""
    whose = " (the runner's default: the step names no image)" if image == default else ""
    return f"a command of this step is not in image {image}{whose}; {HINT}"


def not_found_line(image: str, default: str) -> bytes:
    """The log line after a step that ended with exit code 127 in a container."""
    return f"narwhal: exit code 127: {not_found_reason(image, default)}\n".encode()


def progress_line(image: str, event: dict[str, Any]) -> str | None:
    """One log line for a pull event, or None for a mere progress tick."""
    if event.get("error"):
        return None
    status = str(event.get("status", "")).strip()
    if not status or event.get("progressDetail", {}).get("total"):
        return None
    layer = event.get("id")
    return f"pull {image}: {layer}: {status}\n" if layer else f"pull {image}: {status}\n"


async def pull_image(client: Any, image: str, *, output: Output, timeout: float) -> None:
    """Pull ``image`` or raise ExecutorError with the engine's message."""
    await output(f"pulling {image} (not on this runner)\n".encode())
    puller = _Puller(client, image)
    try:
        async with asyncio.timeout(timeout):
            while (line := await puller.lines.get()) is not None:
                await output(line.encode())
    except TimeoutError:
        puller.errors.insert(0, f"timed out after {timeout:.0f}s")
    finally:
        puller.cancelled.set()
        await asyncio.to_thread(puller.thread.join)
    if puller.errors:
        message = " ".join(puller.errors[0].split())
        # An image the registry does not have is the job's mistake (it fails
        # on every runner); a registry out of reach may be this runner's.
        kind = NotRunnable if _NO_SUCH_IMAGE.search(message) else ExecutorError
        raise kind(f"pulling image {image} failed: {message}; {HINT}")


class _Puller:
    """Reads a pull's event stream in a thread; hands the loop progress lines."""

    def __init__(self, client: Any, image: str) -> None:
        self._client = client
        self._image = image
        self._loop = asyncio.get_running_loop()
        self.lines: asyncio.Queue[str | None] = asyncio.Queue()
        self.errors: list[str] = []
        self.cancelled = threading.Event()
        self.thread = threading.Thread(target=self._read, name="narwhal-docker-pull")
        self.thread.start()

    def _read(self) -> None:
        repository, tag = parse_repository_tag(self._image)
        events = None
        try:
            events = self._client.api.pull(
                repository, tag=tag or "latest", stream=True, decode=True
            )
            for event in events:
                if self.cancelled.is_set():
                    break
                self._event(event)
        except Exception as e:  # reported on the loop, never lost
            self.errors.append(str(getattr(e, "explanation", None) or e))
        finally:
            if events is not None:
                events.close()
            self._loop.call_soon_threadsafe(self.lines.put_nowait, None)

    def _event(self, event: dict[str, Any]) -> None:
        if event.get("error"):
            self.errors.append(str(event["error"]))
        line = progress_line(self._image, event)
        if line is not None:
            self._loop.call_soon_threadsafe(self.lines.put_nowait, line)
