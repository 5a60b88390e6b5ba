"""Bad bytes anywhere on the command line or in narwhal.yml: one line, no traceback.

Exit 2 for the command line, 1 for a narwhal.yml that does not load (the
build's failure, as README.md's exit codes say).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.daemons import Client, Daemon
from tests.support.repos import Repo


def narwhal(*args: str | bytes, cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    argv = [os.fsencode(a) if isinstance(a, str) else a for a in args]
    return subprocess.run(
        [os.fsencode(sys.executable), b"-m", b"narwhal", *argv],
        capture_output=True,
        cwd=cwd,
        timeout=60,
        check=False,
    )


def one_line_error(
    done: subprocess.CompletedProcess[bytes], expected: bytes, *, code: int = 2
) -> None:
    assert done.returncode == code, done
    assert b"Traceback" not in done.stderr, done.stderr.decode(errors="replace")
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(b"narwhal: "), done.stderr
    assert expected in lines[0], lines[0]


@pytest.mark.parametrize(
    ("pipeline", "expected"),
    [
        (b'env: {A: "x\\0y"}\nsteps: [{name: a, command: "echo $A"}]\n', b"env.A: contains a NUL"),
        (b'steps: [{name: a, command: "echo \\0"}]\n', b"steps[0].command: contains a NUL"),
        (b'steps: [{name: a, commands: ["\\ud800"]}]\n', b"commands[0]: contains a NUL"),
        (b'steps: [{name: a, command: "echo \xff"}]\n', b"not valid UTF-8 (byte 0xff"),
        (b"steps: [{name: a, command: echo}]\n\x00\n", b"unacceptable character #x0000"),
    ],
)
def test_exec_refuses_values_no_process_can_take(
    tmp_path: Path, pipeline: bytes, expected: bytes
) -> None:
    (tmp_path / "narwhal.yml").write_bytes(pipeline)
    one_line_error(narwhal("exec", str(tmp_path)), expected, code=1)


def test_exec_takes_a_directory_whose_name_is_not_utf8(tmp_path: Path) -> None:
    folder = os.fsencode(tmp_path) + b"/d\xff"
    os.mkdir(folder)
    with open(folder + b"/narwhal.yml", "wb") as f:
        f.write(b"steps: [{name: a, command: 'echo ran here'}]\n")
    done = narwhal("exec", folder)
    assert (done.returncode, b"ran here" in done.stdout) == (0, True), done
    one_line_error(narwhal("exec", folder + b"/nope\xfe"), b"not a directory")


def test_client_arguments_that_are_not_utf8_are_refused_before_any_request(
    tmp_path: Path,
) -> None:
    server = ("--server", "http://127.0.0.1:9")  # nothing listens: no request is made
    one_line_error(narwhal("submit", str(tmp_path), "--ref", b"ma\xffin", *server), b"ref: ")
    one_line_error(narwhal("submit", os.fsencode(tmp_path) + b"/\xff", *server), b"repo: ")
    one_line_error(narwhal("jobs", "--repo", b"\xff", *server), b"repo: not valid UTF-8")
    one_line_error(narwhal("runner", "--listen", b"tcp://127.0.0.1:\xff"), b"listen: ")
    one_line_error(narwhal("up", "--http", b"127.0.0.\xff:0"), b"http: ")


def test_submit_with_control_characters_gets_the_dispatchers_one_line(
    narwhal_up: Callable[..., tuple[Daemon, Client]], make_repo: Callable[..., Repo]
) -> None:
    _, client = narwhal_up()
    server = ("--server", str(client.http.base_url))
    repo = make_repo({"narwhal.yml": "steps: [{name: a, command: 'true'}]\n"}).path
    for args, expected in (
        (("--ref", "main\x01"), b"ref: contains whitespace or control characters"),
        (("--ref", "--upload-pack=touch x"), b"ref: must not start with '-'"),
        (("--sha", "nothex"), b"sha: expected a full 40-character hex commit id"),
    ):
        one_line_error(narwhal("submit", str(repo), *args, *server), expected)
    # Not a URL, and no such directory here: refused before any request (the
    # API refuses it too: tests/test_repo_attacks.py).
    one_line_error(narwhal("submit", *server, "--", "-uMARKER"), b"-uMARKER: no such directory")
    assert client.http.get("/api/jobs").json()["jobs"] == []
