"""The git CLI as the runner runs it: hardened against hostile repository input.

``--end-of-options`` goes before the values a job supplies (the callers'
part); here: only the transports of the accepted URL forms, no hooks,
credential helpers or submodules (``git_options``), and an environment of
its own that never holds the runner's secrets and never lets git read
``~/.gitconfig`` or ``/etc/gitconfig`` (``git_environment``). A failure is a
``CheckoutError``; ``GitFailed`` keeps all git said, for the job's log.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from narwhal.errors import CheckoutError
from narwhal.repos import protocols
from narwhal.runner import process


def git_environment(home: Path) -> dict[str, str]:
    """The whole environment of the runner's git: never the runner's own.

    The runner's environment holds its ``--secret`` values and ``NARWHAL_*``
    settings, and a hook or helper git runs would see all of it. No global
    or system config (``~/.gitconfig`` can name credential helpers, aliases
    and hooks that run programs), no terminal prompts, ``HOME`` an empty
    folder of the runner's (curl reads ``~/.netrc`` from it). ssh still
    finds the user's keys and known hosts: it looks in the passwd home, not
    ``$HOME``; ``SSH_AUTH_SOCK`` is kept so that an ssh agent works.
    """
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": str(home),
        "LANG": "C",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_TERMINAL_PROMPT": "0",
        # BatchMode: fail instead of asking for a passphrase or a host key.
        "GIT_SSH_COMMAND": "ssh -o BatchMode=yes",
    }
    if "SSH_AUTH_SOCK" in os.environ:
        env["SSH_AUTH_SOCK"] = os.environ["SSH_AUTH_SOCK"]
    return env


def git_options(*, allow_local: bool, extra: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """``-c`` settings for every git process: they win over any config file.

    Only the transports of the repository forms ``narwhal.repos`` accepts
    (``ext::`` and ``fd::`` run programs; ``file`` reads the runner's disk),
    no credential helpers, no hooks, no submodules.
    """
    settings = {
        "protocol.allow": "never",
        **{f"protocol.{name}.allow": "always" for name in protocols(allow_local=allow_local)},
        "credential.helper": "",
        "core.hooksPath": os.devnull,
        "core.fsmonitor": "false",
        "submodule.recurse": "false",
        "fetch.recurseSubmodules": "false",
        **(extra or {}),
    }
    return tuple(arg for key, value in settings.items() for arg in ("-c", f"{key}={value}"))


async def run_git(
    *args: str,
    cwd: Path,
    env: Mapping[str, str],
    timeout: float,
    options: Sequence[str] = (),
    output: bool = False,
) -> bytes:
    """Run git; its stdout when ``output``, else nothing (no pipe for what nobody reads)."""
    try:
        child = process.start(
            ["git", *options, *args],
            cwd=cwd,
            env=env,
            stdout="pipe" if output else "devnull",
            stderr="pipe",
        )
    except FileNotFoundError as e:
        # Popen names what it did not find: the program, or the folder to run in.
        if e.filename == "git":
            raise CheckoutError("git is not installed on this runner") from e
        raise CheckoutError(f"git {args[0]}: no folder {cwd} on this runner") from e
    try:
        async with asyncio.timeout(timeout):
            out, err = await child.communicate()
    except TimeoutError:
        child.kill()
        await child.wait()
        raise CheckoutError(f"git {args[0]} took longer than {timeout:.0f}s") from None
    finally:
        child.close()
    if child.returncode != 0:
        text = err.decode(errors="replace")
        raise GitFailed(f"git {args[0]} failed: {summary(text)}", output=text)
    return out


class GitFailed(CheckoutError):
    """git exited non-zero; ``output`` is the whole of its stderr (for the job's log)."""

    def __init__(self, message: str, *, output: str) -> None:
        super().__init__(message)
        self.output = output


#: Longest summary of git's stderr that goes into a job's reason.
_SUMMARY_CHARS = 400


def summary(stderr: str) -> str:
    """One line of what git said went wrong: its ``fatal:`` and ``error:`` lines.

    git ends many failures with advice ("Please make sure you have the
    correct access rights / and the repository exists."): the last line
    alone hid what was wrong, e.g. "'/x' does not appear to be a git repository".
    """
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    wanted = [line for line in lines if line.startswith(("fatal:", "error:"))]
    kept = list(dict.fromkeys(wanted or lines[-1:])) or ["(no output)"]
    text = "; ".join(kept)
    return text if len(text) <= _SUMMARY_CHARS else text[: _SUMMARY_CHARS - 1] + "…"
