"""The real Docker engine, and a busybox image built here, never pulled.

The image is a root filesystem of Debian's static busybox (one binary and a
link per applet), imported with the engine's image import: a few MB, well
under a second. A machine without a reachable engine fails these tests; it
never skips them (scripts/test starts dockerd).
"""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import docker
import pytest

BUSYBOX_IMAGE = "narwhal-test/busybox:1"
MISSING_IMAGE = "narwhal-test/no-such-image:404"


def _busybox_binary() -> Path:
    for candidate in ("/bin/busybox", "/usr/bin/busybox"):
        if Path(candidate).is_file():
            return Path(candidate)
    pytest.fail("busybox is not installed (Debian: busybox-static); scripts/test installs it")


def busybox_rootfs() -> bytes:
    """A tar of /bin/busybox, its applet links, /tmp and /etc/passwd."""
    binary = _busybox_binary().read_bytes()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        _add_dir(tar, "bin")
        _add_dir(tar, "etc")
        _add_dir(tar, "tmp", mode=0o1777)
        _add_file(tar, "bin/busybox", binary, mode=0o755)
        _add_file(tar, "etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n", mode=0o644)
        for applet in _applets():
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type = tarfile.SYMTYPE
            link.linkname = "busybox"
            tar.addfile(link)
    return buffer.getvalue()


def _applets() -> list[str]:
    listed = subprocess.run(
        [str(_busybox_binary()), "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    return [name for name in listed if name != "busybox" and "/" not in name]


def _add_dir(tar: tarfile.TarFile, name: str, mode: int = 0o755) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = mode
    tar.addfile(info)


def _add_file(tar: tarfile.TarFile, name: str, data: bytes, *, mode: int) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    tar.addfile(info, io.BytesIO(data))


def engine() -> Any:
    """A client of the real engine; a missing engine fails the test, never skips it."""
    try:
        client = docker.from_env(timeout=30)
        client.ping()
    except docker.errors.DockerException as e:
        pytest.fail(f"no Docker engine: {e} (scripts/test starts dockerd)")
    return client


def ensure_busybox(client: Any) -> str:
    """narwhal-test/busybox, imported once per machine (kept: importing again is a no-op)."""
    try:
        client.images.get(BUSYBOX_IMAGE)
    except docker.errors.ImageNotFound:
        repository, tag = BUSYBOX_IMAGE.split(":")
        client.api.import_image_from_data(
            busybox_rootfs(), repository=repository, tag=tag, changes=["ENV PATH=/bin"]
        )
    return BUSYBOX_IMAGE


def labelled(client: Any, runner_id: str) -> list[str]:
    """What the engine holds with a given runner label: containers and networks."""
    selector = {"label": f"narwhal.runner={runner_id}"}
    containers = client.containers.list(all=True, filters=selector)
    networks = client.networks.list(filters=selector)
    return [c.name for c in containers] + [n.name for n in networks]
