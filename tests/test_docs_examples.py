"""Every narwhal.yml example in README.md and docs/*.md parses and runs as written.

Each ```yaml block is one example. One that has ``steps`` is a pipeline and
runs for real through ``narwhal exec`` (branch ``main``, event ``push``):
with the local executor when it names no image, in Docker when it names
``busybox``, which here is the busybox the tests import (Debian's static
busybox, the same tools as Docker Hub's; the tests have no registry). A
block without ``steps`` is a fragment that shows one key (``services:``,
``matrix:``, ``when:``): it must parse next to a one-step pipeline. A block
that cannot run here (an image from a registry) says so in a
``<!-- not run: WHY -->`` line right above it, and must still parse; any
other image is a failure, so an example the tests cannot run is never
added by accident.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from narwhal.pipeline import load
from tests.runner.test_docker import config, run
from tests.support.docker import BUSYBOX_IMAGE, MISSING_IMAGE

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```yaml\n(.*?)^```\n", re.MULTILINE | re.DOTALL)
NOT_RUN = re.compile(r"<!-- not run: ([^>]+) -->\n\Z")
IMAGE = re.compile(r"^\s*-?\s*image:\s*(\S+)", re.MULTILINE)
ONE_STEP = "\nsteps:\n  - {name: fragment, command: 'true'}\n"


@dataclass(frozen=True)
class Example:
    where: str
    text: str
    not_run: str | None

    @property
    def pipeline(self) -> bool:
        return re.search(r"^steps:", self.text, re.MULTILINE) is not None

    @property
    def images(self) -> set[str]:
        """Images the pipeline's steps run in (a service's image is not one)."""
        if re.search(r"^services:", self.text, re.MULTILINE):
            return {"(services)"}
        return set(IMAGE.findall(self.text))


def _examples() -> list[Example]:
    found = []
    for path in DOCS:
        text = path.read_text()
        for match in BLOCK.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            note = NOT_RUN.search(text, 0, match.start())
            found.append(
                Example(
                    where=f"{path.relative_to(ROOT)}:{line}",
                    text=match.group(1),
                    not_run=note.group(1) if note else None,
                )
            )
    return found


EXAMPLES = _examples()


def test_the_docs_have_examples_to_run() -> None:
    runnable = [e for e in EXAMPLES if e.pipeline and e.not_run is None]
    assert len(EXAMPLES) >= 9 and len(runnable) >= 4, [e.where for e in EXAMPLES]
    assert any(e.where.startswith("README.md") and e.images == {"busybox"} for e in runnable)


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.where for e in EXAMPLES])
def test_example_parses(example: Example) -> None:
    text = example.text if example.pipeline else example.text + ONE_STEP
    parsed = load(text, filename=example.where)
    parsed.pipeline()  # the first matrix combination, substituted


def _exec(directory: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "narwhal", "exec", str(directory)]
    args = ["--branch", "main", "--event", "push", *extra]
    return subprocess.run(
        [*command, *args], capture_output=True, text=True, timeout=300, cwd=directory
    )


RUNNABLE = [e for e in EXAMPLES if e.pipeline and e.not_run is None]


@pytest.mark.parametrize("example", RUNNABLE, ids=[e.where for e in RUNNABLE])
def test_example_runs_as_written(example: Example, tmp_path: Path, request: Any) -> None:
    images = example.images
    assert images <= {"busybox"}, (
        f"{example.where} runs in {sorted(images)}, which the tests cannot run:"
        " use busybox (or no image), or say why above it with <!-- not run: WHY -->"
    )
    text, extra = example.text, ("--executor", "local")
    if images:
        request.getfixturevalue("busybox_image")
        text = re.sub(r"(image:\s*)busybox\b", rf"\g<1>{BUSYBOX_IMAGE}", text)
        extra = ("--executor", "docker", "--pull", "never", "--network", "none")
    (tmp_path / "narwhal.yml").write_text(text)
    done = _exec(tmp_path, *extra)
    assert done.returncode == 0, f"{example.where}:\n{done.stdout}\n{done.stderr}"


def test_docker_md_quotes_the_real_pull_never_message(tmp_path: Path, request: Any) -> None:
    docs = (ROOT / "docs" / "docker.md").read_text()
    quoted = re.search(r"`(image narwhal-test/x:1: [^`]+)`", docs)
    assert quoted, "docs/docker.md no longer quotes the --pull never message"
    conf = config(tmp_path, request.getfixturevalue("busybox_image"))
    outcome, _ = run(
        conf, f"steps:\n  - {{name: a, image: {MISSING_IMAGE}, command: 'true'}}\n", tmp_path
    )
    assert outcome.reason == quoted.group(1).replace("narwhal-test/x:1", MISSING_IMAGE)
