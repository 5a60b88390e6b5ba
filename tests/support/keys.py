"""CurveZMQ keys for tests and benchmarks that start ``narwhal dispatcher`` and ``runner``.

The mesh is authenticated by default, so separate processes need what an
operator would set up: a dispatcher keys directory (its server key pair and
``runners/``) and, per runner, a key pair trusted under its id. ``narwhal
up`` needs none of this: it makes and trusts its own keys.
"""

from __future__ import annotations

from pathlib import Path

from narwhal.mesh import keys, trust


class MeshKeys:
    """A dispatcher keys directory and runner keys, as ``narwhal keys`` would make them."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "keys"
        self.runner_keys = root / "runner-keys"
        self.server, _ = keys.load_or_create(self.dir, "server")
        (self.dir / "runners").mkdir(exist_ok=True)

    @property
    def server_key(self) -> Path:
        return self.dir / "server.key"

    def dispatcher(self) -> list[str]:
        """Flags of ``narwhal dispatcher`` that use this keys directory."""
        return ["--keys-dir", str(self.dir)]

    def pair(self, name: str) -> keys.KeyPair:
        """The key pair ``name`` (made on first use) in the runners' key folder."""
        pair, _ = keys.load_or_create(self.runner_keys, name)
        return pair

    def runner(self, runner_id: str, *, trusted: bool = True, name: str | None = None) -> list[str]:
        """Flags of ``narwhal runner``: its key (trusted as ``runner_id`` unless told not to)."""
        name = name or runner_id
        pair = self.pair(name)
        if trusted:
            self.trust(pair.public, runner_id)
        return [
            "--key",
            str(self.runner_keys / f"{name}.key_secret"),
            "--dispatcher-key",
            str(self.server_key),
        ]

    def trust(self, key: bytes, runner_id: str, labels: dict[str, str] | None = None) -> None:
        trust.trust(self.dir / "runners", key, runner_id, labels)
