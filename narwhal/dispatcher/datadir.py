"""One dispatcher per data directory: an OS file lock held for the process's life.

Two dispatchers on one store would both recover the same running jobs and
run them twice (and a second ``up`` would rewrite the first's trusted
keys). The entrypoint takes the lock before anything is written into the
data dir: ``hold(data_dir)`` takes ``<data_dir>/narwhal.lock`` with
``flock(LOCK_EX | LOCK_NB)``; a second process is refused with one line
naming the holder (its pid and, once it listens, its API address, which the
holder writes into the file).

The lock is the kernel's, not the file's: it goes with the process however
it ends (kill -9 included), so a file left by a killed process never blocks
the next start. The descriptor is close-on-exec, so steps and git children
never inherit it. Some network file systems do not honour flock: keep the
data dir on a local disk.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from narwhal.dispatcher.tokens import prepare_data_dir
from narwhal.errors import StoreError

LOCK_FILE = "narwhal.lock"


class DataDirLock:
    """The held lock of one data directory; ``record`` says where we listen."""

    def __init__(self, fd: int, path: Path) -> None:
        self._fd = fd
        self.path = path

    def record(self, address: str) -> None:
        """Write our pid and API address for a refused second process to show."""
        _write(self._fd, f"pid {os.getpid()} {address}\n")

    def release(self) -> None:
        # Closing the descriptor drops the lock; the file stays (it is harmless).
        os.close(self._fd)


@contextlib.contextmanager
def hold(data_dir: Path) -> Iterator[DataDirLock]:
    """Hold the data directory's lock until the block ends; StoreError when taken."""
    lock = acquire(data_dir)
    try:
        yield lock
    finally:
        lock.release()


def acquire(data_dir: Path) -> DataDirLock:
    """Take the lock (making the directory, 0700) or raise StoreError naming its holder."""
    prepare_data_dir(data_dir)
    path = data_dir / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise StoreError(f"cannot open {path}: {e.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise StoreError(
            f"data dir {data_dir} is in use by another narwhal ({holder}); "
            "stop it first, or give this one another --data-dir"
        ) from None
    except OSError as e:
        os.close(fd)
        raise StoreError(f"cannot lock {path}: {e.strerror}") from None
    _write(fd, f"pid {os.getpid()} starting\n")
    return DataDirLock(fd, path)


def _write(fd: int, text: str) -> None:
    # Write, then cut: a reader never sees an empty file, only a line starting "pid".
    data = text.encode()
    os.pwrite(fd, data, 0)
    os.ftruncate(fd, len(data))


def _holder(fd: int) -> str:
    """What the holder wrote: ``pid N ADDRESS`` (read without the lock: one small write)."""
    try:
        text = os.pread(fd, 512, 0).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    if not text.startswith("pid "):
        return "pid unknown"
    pid, _, address = text[4:].partition(" ")
    if address in ("", "starting"):
        return f"pid {pid}, still starting"
    return f"pid {pid}, API on {address}"
