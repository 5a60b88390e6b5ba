"""Runner ids: the default id per machine and work dir, NARWHAL_ID, and a refused twin told why."""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path

import pytest

from narwhal.runner import identity
from tests.support.daemons import Client, Daemon, dispatcher_args, runner_args, wait_for_runners
from tests.support.eventually import eventually
from tests.support.keys import MeshKeys


def _runner(work: Path, *extra: str, env: dict[str, str] | None = None) -> Daemon:
    return Daemon(runner_args(work, *extra), env=env)


def _id_of(daemon: Daemon) -> str:
    match = re.match(r"narwhal runner (\S+) listening on", daemon.announce)
    assert match, daemon.announce
    return match.group(1)


def _started_id(work: Path, *extra: str, env: dict[str, str] | None = None) -> str:
    daemon = _runner(work, *extra, env=env)
    try:
        return _id_of(daemon)
    finally:
        assert daemon.stop() == 0


def test_default_id_is_the_host_and_a_short_id_kept_across_restarts(tmp_path: Path) -> None:
    first = _started_id(tmp_path / "w1", "--insecure")
    assert re.fullmatch(rf"{re.escape(identity.host_name())}-[0-9a-f]{{6}}", first), first
    assert _started_id(tmp_path / "w1", "--insecure") == first
    other = _started_id(tmp_path / "w2", "--insecure")
    assert other != first and other.startswith(identity.host_name())


def test_the_default_key_file_follows_the_default_id(tmp_path: Path) -> None:
    keys = MeshKeys(tmp_path)
    flags = ("--dispatcher-key", str(keys.server_key))
    first = _started_id(tmp_path / "w", *flags)
    made = sorted(p.name for p in (tmp_path / "w" / "keys").iterdir())
    assert made == [f"{first}.key", f"{first}.key_secret"]
    assert _started_id(tmp_path / "w", *flags) == first
    assert sorted(p.name for p in (tmp_path / "w" / "keys").iterdir()) == made


def test_a_key_made_under_the_old_default_keeps_its_id(tmp_path: Path) -> None:
    old = f"{socket.gethostname()}-8471"
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / f"{old}.key").write_text("public key\n")
    assert identity.default_runner_id(tmp_path, "8471") == old
    assert identity.default_runner_id(tmp_path, "8472") != old  # another port, a new id


def test_a_work_dir_copied_to_another_machine_gets_a_new_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    machine = tmp_path / "machine-id"
    machine.write_text("aaaa\n")
    monkeypatch.setattr(identity, "_MACHINE_ID_FILES", (machine,))
    first = identity.default_runner_id(tmp_path / "w", "8471")
    assert identity.default_runner_id(tmp_path / "w", "8471") == first
    machine.write_text("bbbb\n")  # the same disk image, booted on its twin
    twin = identity.default_runner_id(tmp_path / "w", "8471")
    assert twin != first
    assert identity.default_runner_id(tmp_path / "w", "8471") == twin


def test_narwhal_id_sets_the_id_and_narwhal_runner_id_still_does(tmp_path: Path) -> None:
    assert _started_id(tmp_path / "w", "--insecure", env={"NARWHAL_ID": "from-env"}) == "from-env"
    old = {"NARWHAL_RUNNER_ID": "old-name"}
    assert _started_id(tmp_path / "w", "--insecure", env=old) == "old-name"
    both = {"NARWHAL_ID": "new-name", "NARWHAL_RUNNER_ID": "old-name"}
    assert _started_id(tmp_path / "w", "--insecure", env=both) == "new-name"


def test_a_second_runner_with_the_same_id_is_told_why(tmp_path: Path) -> None:
    # A cloned machine: the same id and the same key, so both pass the handshake.
    keys = MeshKeys(tmp_path)
    flags = keys.runner("twin")
    twins = [_runner(tmp_path / f"w{i}", "--id", "twin", *flags) for i in (1, 2)]
    dispatcher = Daemon(
        dispatcher_args(tmp_path / "d", *keys.dispatcher(), runners=[twins[0].endpoint])
    )
    api = Client(dispatcher.url)
    try:
        wait_for_runners(api, 1)
        added = api.http.post("/api/runners", json={"url": twins[1].endpoint})
        assert added.status_code == 201, added.text  # refused at its READY
        told = "the dispatcher refused this runner: runner id 'twin' is already connected from"
        eventually(
            lambda: any(told in "".join(t.stderr_lines) for t in twins),
            timeout=10,
            what="a twin told why",
        )
        time.sleep(1.5)  # longer than the dead interval: a link it thinks alive would go silent
        logs = ["".join(t.stderr_lines) for t in twins]
        assert told not in logs[0] and told in logs[1], logs
        assert "dispatcher silent" not in logs[1], logs[1]
        assert logs[1].count(told) == 1, "told once, not again and again"
    finally:
        api.close()
        assert dispatcher.stop() == 0
        for twin in twins:
            assert twin.stop() == 0
