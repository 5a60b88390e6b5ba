"""Secrets: masking them in a log stream, and handing them to steps as env vars.

``Masker`` is fed a job's output chunk by chunk and returns it with every
secret replaced by ``********``. A secret split across two chunks is still
caught: the masker holds back the shortest tail of what it was fed that could
be the start of a secret, and only that, until the next chunk (or ``flush``)
decides. Besides each secret as written it masks the encodings people print by
accident: base64 (standard and URL-safe, at each of the three byte alignments a
secret can have inside a longer encoded text), percent-encoding, and each line
of a multi-line secret. actions/runner leaked secrets in exactly those cases.
"""

from __future__ import annotations

import base64
import io
import re
import urllib.parse
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from narwhal.pipeline import Pipeline, Step
from narwhal.runner.executor import Executor, Output, Session, StepResult, Stop

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

MASK = b"********"

#: Encoded forms shorter than this are not masked: the middle of a base64
#: text, or one line of a key file, that short would mask ordinary output.
MIN_VARIANT = 6


def variants(secret: bytes) -> set[bytes]:
    """The secret and the forms of it that must never appear in a log."""
    found = {secret}
    lines = [line.strip() for line in secret.splitlines()]
    found.update(line for line in lines if len(line) >= MIN_VARIANT)
    found.update(_percent(secret))
    for core in _base64_cores(secret):
        found.add(core)
        found.add(core.translate(_URLSAFE))
    return {v for v in found if v == secret or len(v) >= MIN_VARIANT}


_URLSAFE = bytes.maketrans(b"+/", b"-_")


def _percent(secret: bytes) -> set[bytes]:
    quoted = urllib.parse.quote(secret, safe="").encode()
    plus = urllib.parse.quote_plus(secret, safe="").encode()
    return {quoted, plus}


def _base64_cores(secret: bytes) -> list[bytes]:
    """The base64 characters fixed by the secret alone, for each alignment.

    Inside a longer base64 text the secret starts 0, 1 or 2 bytes into a
    3-byte group; the characters that also encode neighbouring bytes vary, so
    only the ones made of the secret's bits alone are kept.
    """
    cores = []
    for offset in range(3):
        encoded = base64.b64encode(bytes(offset) + secret)
        first = -(-8 * offset // 6)  # the first character with no prefix bits
        last = 8 * (offset + len(secret)) // 6  # characters before any later bits
        cores.append(encoded[first:last])
    return cores


class Masker:
    """Masks secrets in a stream of chunks; see the module docstring."""

    def __init__(self, secrets: Iterable[str | bytes]) -> None:
        patterns: set[bytes] = set()
        for secret in secrets:
            raw = secret.encode() if isinstance(secret, str) else secret
            if raw:
                patterns |= variants(raw)
        # Longest first: at one position the regex takes the first alternative
        # that matches, and the longest one hides the most.
        self._patterns = sorted(patterns, key=len, reverse=True)
        alternation = b"|".join(re.escape(p) for p in self._patterns)
        self._regex = re.compile(alternation) if patterns else None
        self._tail = b""

    def __bool__(self) -> bool:
        return self._regex is not None

    def feed(self, chunk: bytes) -> bytes:
        """Masked output for ``chunk``; a possible secret start is held back."""
        if self._regex is None:
            return chunk
        data = self._tail + chunk
        holds = self._hold_points(data)
        out: list[bytes] = []
        pos = 0
        for match in self._regex.finditer(data):
            if match.start() >= _first_at_or_after(holds, pos, len(data)):
                break
            out += (data[pos : match.start()], MASK)
            pos = match.end()
        cut = _first_at_or_after(holds, pos, len(data))
        out.append(data[pos:cut])
        self._tail = data[cut:]
        return b"".join(out)

    def flush(self) -> bytes:
        """The held-back tail, masked: call once the stream has ended."""
        if self._regex is None:
            return b""
        tail, self._tail = self._tail, b""
        return self._regex.sub(MASK, tail)

    def _hold_points(self, data: bytes) -> list[int]:
        """Sorted positions p where data[p:] could still grow into a longer secret."""
        points: set[int] = set()
        for pattern in self._patterns:
            window = max(0, len(data) - len(pattern) + 1)
            first = pattern[:1]
            p = data.find(first, window)
            while p != -1:
                if pattern.startswith(data[p:]):
                    points.add(p)
                p = data.find(first, p + 1)
        return sorted(points)


def _first_at_or_after(points: list[int], pos: int, default: int) -> int:
    return next((p for p in points if p >= pos), default)


def mask_text(text: str, secrets: Iterable[str | bytes]) -> str:
    """``text`` with every secret masked (a job's DONE reason, say)."""
    masker = Masker(secrets)
    if not masker:
        return text
    return (masker.feed(text.encode()) + masker.flush()).decode(errors="replace")


@contextmanager
def masked_writer(out: BinaryIO, secrets: Iterable[str | bytes]) -> Iterator[BinaryIO]:
    """A binary stream that masks what is written before it reaches ``out``.

    What the masker holds back is written when the block ends.
    """
    writer = io.BufferedWriter(_MaskingSink(out, Masker(secrets)))
    try:
        yield writer
    finally:
        writer.close()


class _MaskingSink(io.RawIOBase):
    def __init__(self, out: BinaryIO, masker: Masker) -> None:
        super().__init__()
        self._out = out
        self._masker = masker

    def writable(self) -> bool:
        return True

    def write(self, data: ReadableBuffer, /) -> int:
        view = memoryview(data)
        self._out.write(self._masker.feed(view.tobytes()))
        self._out.flush()
        return view.nbytes

    def close(self) -> None:
        if not self.closed:
            self._out.write(self._masker.flush())
            self._out.flush()
        super().close()


class SecretsExecutor:
    """Wraps an executor so that every step also gets the runner's secrets as env vars.

    Secrets are added last: a pipeline cannot shadow one with its own ``env``.
    """

    def __init__(self, inner: Executor, secrets: Mapping[str, str]) -> None:
        self.inner = inner
        self._secrets = dict(secrets)

    def reap(self, work_dir: Path) -> int:
        return self.inner.reap(work_dir)

    async def aclose(self) -> None:
        """Close the inner executor if it holds anything (the Docker one does)."""
        close = getattr(self.inner, "aclose", None)
        if close is not None:
            await close()

    def session(
        self, *, job: str, workspace: Path, pipeline: Pipeline, output: Output
    ) -> AbstractAsyncContextManager[Session]:
        return self._session(job=job, workspace=workspace, pipeline=pipeline, output=output)

    @asynccontextmanager
    async def _session(
        self, *, job: str, workspace: Path, pipeline: Pipeline, output: Output
    ) -> AsyncIterator[Session]:
        async with self.inner.session(
            job=job, workspace=workspace, pipeline=pipeline, output=output
        ) as session:
            yield _SecretsSession(session, self._secrets)


class _SecretsSession:
    def __init__(self, inner: Session, secrets: Mapping[str, str]) -> None:
        self._inner = inner
        self._secrets = secrets

    async def run_step(
        self,
        step: Step,
        *,
        env: Mapping[str, str],
        output: Output,
        stop: Stop,
        timeout: float | None,
    ) -> StepResult:
        return await self._inner.run_step(
            step, env={**env, **self._secrets}, output=output, stop=stop, timeout=timeout
        )
