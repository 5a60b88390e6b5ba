"""A runner's default id: its host name and a short id kept in its work dir.

``HOSTNAME-PORT`` was the same on every cloned machine (every Raspberry Pi
is ``raspberrypi``), and the dispatcher refuses a second runner with an id
already connected. The short id is random, made once per work dir and
listen port and kept in ``WORK_DIR/runner-ids/PORT``, so the id stays the
same across restarts (the key file named after it, the trust entry on the
dispatcher and the runner's folder all stay valid) and differs for two work
dirs or two ports. The file also records the machine id it was made on
(``/etc/machine-id``): a work dir copied with a cloned disk image gets a
fresh id on the new machine instead of its twin's.

A work dir that already holds a key made under the old default
(``keys/HOSTNAME-PORT.key``) keeps that id: a runner trusted under it is
not locked out by an upgrade.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
from pathlib import Path

from narwhal.errors import ConfigError

#: Where the ids are kept, under the work dir.
ID_DIR = "runner-ids"
_VALID = re.compile(r"[A-Za-z0-9._-]{1,100}")
_MACHINE_ID_FILES = (Path("/etc/machine-id"), Path("/var/lib/dbus/machine-id"))


def default_runner_id(work_dir: Path, port: str) -> str:
    """This machine's id for a runner on ``port`` with ``work_dir``; made at first use."""
    path = work_dir / ID_DIR / (re.sub(r"[^0-9A-Za-z]", "_", port) or "_")
    machine = machine_id()
    try:
        stored = _read(path)
        if stored is not None and stored[1] in ("", machine):
            return stored[0]
        legacy = _safe(f"{socket.gethostname()}-{port}")
        if stored is None and (work_dir / "keys" / f"{legacy}.key").is_file():
            runner_id = legacy  # trusted under the old default: keep it
        else:
            runner_id = f"{host_name()}-{secrets.token_hex(3)}"
        _write(path, runner_id, machine)
    except OSError as e:
        raise ConfigError(f"--work-dir: cannot keep the runner id in {path}: {e}") from None
    return runner_id


def host_name() -> str:
    """The host name as an id may hold it (``[A-Za-z0-9._-]``, at most 60 characters)."""
    return _safe(socket.gethostname().split(".")[0])[:60] or "runner"


def machine_id() -> str:
    """The OS's id of this installation (systemd, D-Bus), or "" if it has none."""
    for path in _MACHINE_ID_FILES:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text:
            return text[:64]
    return ""


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "-", text)


def _read(path: Path) -> tuple[str, str] | None:
    """(id, machine id) from the file, or None when there is none or it is not one."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return None
    if not lines or not _VALID.fullmatch(lines[0]):
        return None
    return lines[0], lines[1].strip() if len(lines) > 1 else ""


def _write(path: Path, runner_id: str, machine: str) -> None:
    """Atomically: a runner that dies mid-write leaves the old file or none."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.write_text(f"{runner_id}\n{machine}\n")
    os.replace(temporary, path)
