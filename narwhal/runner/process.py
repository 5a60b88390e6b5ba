"""Child processes for the job path, with less machinery than asyncio's subprocesses.

The runner starts two children for every job (the git checkout, then each
step). On Python 3.11 asyncio spends about 0.4 ms of the event loop's time on
each: a transport and a protocol per pipe, futures to connect them, and a
thread per child that blocks in ``waitpid``. In ``narwhal up`` that loop also
serves the API and the dispatcher, so a ``Child`` is a plain ``Popen`` whose
pipes are read through ``loop.add_reader`` and whose exit is seen on a pidfd
(Linux 5.3+); about half the cost, and no thread. Where there is no pidfd
(macOS, older kernels) a thread waits for the exit, as asyncio's would.
"""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import subprocess
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

Sink = Literal["pipe", "devnull", "stdout"]


class Child:
    """A started process: its output pipes (as asked) and its exit, awaitable."""

    def __init__(
        self, popen: subprocess.Popen[bytes], stdout: int | None, stderr: int | None
    ) -> None:
        self._popen = popen
        self.pid = popen.pid
        self._stdout = stdout
        self._stderr = stderr
        #: Our pipe ends still open: a read cancelled after ``close`` must not
        #: remove the reader of another pipe that got the same number since.
        self._open = {fd for fd in (stdout, stderr) if fd is not None}
        self._loop = asyncio.get_running_loop()
        self._exited: asyncio.Future[int] = self._loop.create_future()
        #: What the process and the children it waited for used (``wait4``),
        #: once reaped; None before, or where a thread waits (no pidfd).
        self.rusage: resource.struct_rusage | None = None
        self._pidfd = _pidfd(popen.pid)
        if self._pidfd is not None:
            self._loop.add_reader(self._pidfd, self._reap)
        else:
            threading.Thread(target=self._wait_in_thread, daemon=True).start()

    @property
    def returncode(self) -> int | None:
        """The exit status once the process has been reaped (``-N``: killed by signal N)."""
        return self._popen.returncode

    async def wait(self) -> int:
        """Wait for the process to end; cancelling the wait leaves the process alone."""
        return await asyncio.shield(self._exited)

    def exit_future(self) -> asyncio.Future[int]:
        """Done when the process has ended; for ``asyncio.wait`` (never cancel it)."""
        return self._exited

    async def read(self, size: int) -> bytes:
        """Up to ``size`` bytes of stdout as soon as there are any; ``b""`` at its end."""
        assert self._stdout is not None  # noqa: S101 - asked for with stdout="pipe"
        return await self._read(self._stdout, size)

    async def communicate(self) -> tuple[bytes, bytes]:
        """Everything the piped outputs carry until they close, then wait for the exit."""
        if self._stdout is not None and self._stderr is not None:
            out, err = await asyncio.gather(self._drain(self._stdout), self._drain(self._stderr))
        else:  # one pipe at most: no tasks needed to read both at once
            out, err = await self._drain(self._stdout), await self._drain(self._stderr)
        await self.wait()
        return out, err

    async def _read(self, fd: int, size: int) -> bytes:
        while True:
            try:
                return os.read(fd, size)
            except BlockingIOError:
                ready = self._loop.create_future()
                self._loop.add_reader(fd, _set, ready)
                try:
                    await ready
                finally:
                    if fd in self._open:
                        self._loop.remove_reader(fd)

    async def _drain(self, fd: int | None) -> bytes:
        chunks = []
        while fd is not None and (chunk := await self._read(fd, 65536)):
            chunks.append(chunk)
        return b"".join(chunks)

    def kill(self) -> None:
        """SIGKILL the process itself (not its group); nothing if it already ended."""
        if self._popen.returncode is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def close(self) -> None:
        """Close our ends of the pipes; SIGKILL the process if it still runs.

        Its exit is still collected when it comes, so no zombie is left.
        """
        for fd in self._open:
            self._loop.remove_reader(fd)
            os.close(fd)
        self._open.clear()
        self.kill()

    def _reap(self) -> None:
        # The pidfd is readable once the process is a zombie: wait() returns at once.
        assert self._pidfd is not None  # noqa: S101 - closed only here
        self._loop.remove_reader(self._pidfd)
        os.close(self._pidfd)
        self._pidfd = None
        if self._popen.returncode is None:  # not reaped by Popen's own poll meanwhile
            # wait4, not Popen.wait: the same reaping, with what the process used.
            _, status, self.rusage = os.wait4(self.pid, 0)
            self._popen.returncode = os.waitstatus_to_exitcode(status)
        self._settle(self._popen.returncode)

    def _wait_in_thread(self) -> None:
        code = self._popen.wait()
        try:
            self._loop.call_soon_threadsafe(self._settle, code)
        except RuntimeError:  # the loop is closed: nobody waits any more
            pass

    def _settle(self, code: int) -> None:
        if not self._exited.done():
            self._exited.set_result(code)


def start(
    args: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    stdout: Sink,
    stderr: Sink,
    new_session: bool = False,
    stdin: int | None = None,
) -> Child:
    """Start ``args``; raises OSError when it cannot start.

    stdin is /dev/null unless ``stdin`` gives a descriptor (the child gets a
    copy; the caller keeps and closes its own). ``stderr="stdout"`` sends
    both outputs into the one stdout pipe, in order.
    """
    read_out, write_out = os.pipe() if stdout == "pipe" else (None, None)
    read_err, write_err = os.pipe() if stderr == "pipe" else (None, None)
    try:
        popen = subprocess.Popen(
            args,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL if stdin is None else stdin,
            stdout=write_out if write_out is not None else subprocess.DEVNULL,
            stderr=_stderr_target(stderr, write_err),
            start_new_session=new_session,
        )
    except BaseException:
        for fd in (read_out, read_err):
            if fd is not None:
                os.close(fd)
        raise
    finally:
        # The child has its copies; ours would keep the pipes from ever ending.
        for fd in (write_out, write_err):
            if fd is not None:
                os.close(fd)
    for fd in (read_out, read_err):
        if fd is not None:
            os.set_blocking(fd, False)
    return Child(popen, read_out, read_err)


def _stderr_target(stderr: Sink, write_err: int | None) -> int:
    if stderr == "stdout":
        return subprocess.STDOUT
    return write_err if write_err is not None else subprocess.DEVNULL


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):  # not Linux, or a kernel older than 5.3
        return None


def _set(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
