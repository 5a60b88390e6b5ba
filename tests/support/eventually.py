"""Wait until something is true: the one polling loop of the test suite.

Tests of real processes cannot be told when a state is reached; they look
again until it is, or until a deadline. Every such wait goes through here,
so all of them poll at the same pace, give up the same way, and say what
they were waiting for (and, with ``detail``, what they saw instead).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

#: Long enough for a loaded CI machine starting Python processes; a test
#: that waits on something quicker passes a shorter timeout.
TIMEOUT = 30.0
#: Short next to the heartbeats the tests use (0.2 s), cheap next to a request.
INTERVAL = 0.05


def _failure(
    check: object, what: str, timeout: float, detail: Callable[[], object] | None
) -> AssertionError:
    message = f"timed out after {timeout:g} s waiting for {what or check}"
    if detail is not None:
        message += f": {detail()}"
    return AssertionError(message)


def eventually(
    check: Callable[[], T],
    *,
    timeout: float = TIMEOUT,
    interval: float = INTERVAL,
    what: str = "",
    detail: Callable[[], object] | None = None,
) -> T:
    """The first truthy value ``check()`` returns, asked every ``interval`` seconds.

    Raises ``AssertionError`` after ``timeout`` seconds, naming ``what`` and,
    when given, the ``detail()`` seen at that moment. ``check`` is asked once
    more after the deadline, so a slow last poll does not lose a late success.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise _failure(check, what, timeout, detail)
        time.sleep(interval)


async def eventually_async(
    check: Callable[[], T | Awaitable[T]],
    *,
    timeout: float = TIMEOUT,
    interval: float = INTERVAL,
    what: str = "",
    detail: Callable[[], object] | None = None,
) -> T:
    """``eventually`` inside an event loop: sleeps without blocking it.

    ``check`` may be a plain function (reading state the loop changes) or a
    coroutine function (asking a store or a client); both are awaited alike.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise _failure(check, what, timeout, detail)
        await asyncio.sleep(interval)
