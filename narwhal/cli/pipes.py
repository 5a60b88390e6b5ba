"""When stdout's reader goes away (``narwhal logs -f | head``): quietly, as CLIs do."""

from __future__ import annotations

import os
import signal
import sys
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    from narwhal.runner.executor import Stop

#: Exit status when stdout's reader went away, as of a program SIGPIPE stopped.
SIGPIPE_STATUS = 128 + signal.SIGPIPE


class PipeGuard:
    """stdout for ``exec``: once its reader is gone (``| head``), stop the build.

    Steps would block on a full pipe, or their output be lost: the build is
    cancelled in order instead, the rest of the output dropped, and the exit
    status that of a program stopped by SIGPIPE.
    """

    def __init__(self, out: BinaryIO, stop: Stop) -> None:
        self._out, self._stop = out, stop
        self.broken = False

    def write(self, data: bytes) -> int:
        if not self.broken:
            try:
                self._out.write(data)
            except BrokenPipeError:
                self._broke()
        return len(data)

    def flush(self) -> None:
        if not self.broken:
            try:
                self._out.flush()
            except BrokenPipeError:
                self._broke()

    def _broke(self) -> None:
        self.broken = True
        drop_stdout()
        self._stop.set("cancelled", "stdout closed")


def drop_stdout() -> None:
    """Point stdout at /dev/null: Python's last flush must not fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


#: Arguments that name files: the operating system takes any bytes there.
