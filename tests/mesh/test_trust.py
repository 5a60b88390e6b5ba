"""The allow-list directory and key files, on a real file system."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import zmq

from narwhal.errors import ConfigError
from narwhal.mesh import keys
from narwhal.mesh.trust import TrustedRunners, scan, trust


def test_one_key_one_id_and_conflicting_files_are_all_refused(tmp_path: Path) -> None:
    runners = tmp_path / "runners"
    a, b = zmq.curve_keypair()[0], zmq.curve_keypair()[0]
    trust(runners, a, "alpha")
    with pytest.raises(ConfigError, match="already trusted as runner 'alpha'"):
        trust(runners, a, "beta")
    with pytest.raises(ConfigError, match="already has another key"):
        trust(runners, b, "alpha")
    allowed = TrustedRunners(runners)
    assert allowed.load() and set(allowed.by_id) == {"alpha"}
    assert not allowed.load()  # nothing changed: not even read again
    assert scan(runners, allowed.listing.signature) is None

    # Files copied in by hand that break the rule: both sides refused (fail closed).
    keys.write_public(runners / "copy.key", a, {"runner-id": "gamma"})
    (runners / "junk.key").write_text('public-key = "short"\n')
    assert allowed.load()
    assert allowed.by_id == {} and allowed.by_key == {}
    problems = " ".join(allowed.listing.problems)
    assert "its key is also given to alpha, gamma" in problems and "junk.key" in problems
    os.unlink(runners / "copy.key")
    assert allowed.load() and set(allowed.by_id) == {"alpha"}


def test_key_files_modes_and_checks(tmp_path: Path) -> None:
    pair, created = keys.load_or_create(tmp_path / "k", "server")
    assert created and keys.load_or_create(tmp_path / "k", "server") == (pair, False)
    secret = tmp_path / "k" / "server.key_secret"
    assert secret.stat().st_mode & 0o777 == 0o600
    assert oct((tmp_path / "k").stat().st_mode & 0o777) == oct(0o700)
    assert not [p for p in (tmp_path / "k").iterdir() if p.name.startswith(".")]  # no temp left
    secret.chmod(0o640)
    with pytest.raises(ConfigError, match="readable by others"):
        keys.read_secret(secret)
    secret.chmod(0o600)
    other = keys.generate()
    text = secret.read_text().replace(pair.secret.decode(), other.secret.decode())
    secret.write_text(text)
    with pytest.raises(ConfigError, match="does not belong"):
        keys.read_secret(secret)
    with pytest.raises(ConfigError, match="z85"):
        keys.check_key("not a key at all, forty characters long!")
