"""A logger for problems that repeat: once per key per interval, counting the rest.

A leaf module (standard library only), so the agent, the dispatcher's status
reporter and the mesh rate-limit their network errors the same way without
the agent loading pyzmq for it (python-zeroconf's QuietLogger is the model).
"""

from __future__ import annotations

import logging
import time


class QuietLog:
    """Logs a repeated problem once per key per interval, counting the rest."""

    def __init__(self, logger: logging.Logger, *, interval: float = 10.0) -> None:
        self._logger = logger
        self._interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, key: str, msg: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last.get(key, -self._interval) < self._interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        self._last[key] = now
        more = self._suppressed.pop(key, 0)
        if more:
            args = (*args, more)
            msg = f"{msg} (%d more since last report)"
        self._logger.warning(msg, *args)
