"""Log bytes stored per MB of output: real CI output through the real stores.

Two kinds of real output, made on the spot:

- a test suite's verbose log: ``pytest -v`` of some of this project's own
  test modules (unit tier: fast and repeatable);
- a compiler's: gcc's warnings (``-Wall -Wextra``) for a C file that earns
  many, and its ``-v`` driver output.

Each is written to the SQLite store (and, with ``--pg``, the PostgreSQL one)
as LOG frames deliver it: 64 KiB chunks (a step printing fast) and 2 KiB
chunks (a step printing a line now and then, flushed at once), then read
back and compared. Printed: the output's size, the bytes stored, the ratio,
and the store's write and read time per MB.

Run: ``python -m bench.log_compression`` (about 20 s).
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import ROOT, exit_on_sigterm, machine
from narwhal.dispatcher.store.base import AppendLog, CreateJob, JobStore, NewJob, Transition
from narwhal.dispatcher.store.open import store_for
from narwhal.storeurl import StoreUrl
from tests.support.postgres import fresh_schema

MB = 1 << 20

_WARNINGS_C = """
#include <stdio.h>
int f%d(int a, unsigned b) { int unused%d; if (a < b) return a; char *p = 0; return *p + %d; }
"""


def pytest_output() -> bytes:
    modules = ["tests/test_pipeline.py", "tests/test_redact.py", "tests/test_secret_rules.py"]
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-v", "-p", "no:randomly", *modules],
        cwd=ROOT,
        capture_output=True,
        timeout=300,
    )
    return run.stdout + run.stderr


def compiler_output() -> bytes:
    with tempfile.TemporaryDirectory() as work:
        source = Path(work, "warns.c")
        source.write_text("".join(_WARNINGS_C % (n, n, n) for n in range(400)))
        warnings = subprocess.run(
            ["gcc", "-Wall", "-Wextra", "-c", str(source), "-o", str(Path(work, "w.o"))],
            capture_output=True,
            timeout=300,
        )
        driver = subprocess.run(
            ["gcc", "-v", "-c", str(source), "-o", str(Path(work, "v.o"))],
            capture_output=True,
            timeout=300,
        )
    return warnings.stderr + driver.stderr


async def stored(url: StoreUrl, output: bytes, chunk: int) -> tuple[int, float, float]:
    """Bytes stored for ``output`` in ``chunk``-sized LOG frames; write and read seconds."""
    store: JobStore = store_for(url)
    await store.open()
    try:
        new = NewJob(repo="/r", ref="main", sha=None, event="push")
        ((job, _),) = await store.apply([CreateJob(job=new)])
        chunks = [output[i : i + chunk] for i in range(0, len(output), chunk)]
        started = time.perf_counter()
        for start in range(0, len(chunks), 64):  # a frame batch per commit, as the dispatcher
            batch = chunks[start : start + 64]
            await store.apply(
                [
                    AppendLog(job_id=job.id, attempt=1, seq=start + n, data=data)
                    for n, data in enumerate(batch)
                ]
            )
        wrote = time.perf_counter() - started
        started = time.perf_counter()
        back = b"".join(data for _, data in await store.read_log(job.id, 1))
        read = time.perf_counter() - started
        assert back == output, "the log did not read back as written"
        end = Transition(job_id=job.id, attempt=1, to="cancelled", reason="bench", at=time.time())
        await store.apply([end])
        (footprint,) = await store.log_footprints()
        return footprint.stored, wrote, read
    finally:
        await store.close()


def report(
    kind: str, backend: str, output: bytes, chunk: int, figures: tuple[int, float, float]
) -> None:
    size, wrote, read = figures
    mb = len(output) / MB
    print(
        f"# {kind:<8} {backend:<10} {chunk >> 10:>2} KiB chunks: {mb:6.2f} MB output,"
        f" {size / MB:6.3f} MB stored ({len(output) / size:4.1f}x),"
        f" write {wrote / mb * 1000:6.1f} ms/MB, read {read / mb * 1000:5.1f} ms/MB"
    )
    print(f"log_bytes_per_mb_{kind}_{backend}_{chunk >> 10}k: {size / mb / 1024:.0f} KiB")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-pg", action="store_true", help="SQLite only")
    args = parser.parse_args(argv)
    exit_on_sigterm()
    print(f"# {machine()}")
    outputs = {"pytest": pytest_output(), "compiler": compiler_output()}
    for kind, output in outputs.items():
        # At least a few MB: the ratio of a short log says little.
        output = output * max(1, (4 * MB) // max(len(output), 1))
        for chunk in (64 << 10, 2 << 10):
            with tempfile.TemporaryDirectory() as data:
                url = StoreUrl.sqlite(Path(data) / "narwhal.db")
                report(kind, "sqlite", output, chunk, asyncio.run(stored(url, output, chunk)))
            if not args.no_pg:
                with fresh_schema() as url:
                    report(
                        kind, "postgresql", output, chunk, asyncio.run(stored(url, output, chunk))
                    )


if __name__ == "__main__":
    main()
