"""Real git repositories on disk, for the pipelines the tests run."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

#: A fixed identity and no system config: commits are the same on every machine.
GIT_ENV = {
    "GIT_AUTHOR_NAME": "Narwhal Test",
    "GIT_AUTHOR_EMAIL": "test@narwhal.invalid",
    "GIT_COMMITTER_NAME": "Narwhal Test",
    "GIT_COMMITTER_EMAIL": "test@narwhal.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
}


def git(cwd: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", *args],
        cwd=cwd,
        env={**os.environ, **GIT_ENV},
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


class Repo:
    """A real git repository on disk that tests commit files to."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True)
        git(path, "init", "-q", "-b", "main")

    def commit(self, files: dict[str, str], message: str = "change") -> str:
        for name, text in files.items():
            target = self.path / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        git(self.path, "add", "-A")
        git(self.path, "commit", "-q", "-m", message)
        return git(self.path, "rev-parse", "HEAD")
