"""Masking secrets in a log stream (and in any text a job reports).

``Masker`` is fed a job's output chunk by chunk and returns it with every
secret replaced by ``********``. Besides each secret as written it masks the
forms people print by accident: base64 (standard and URL-safe, at each of the
three byte alignments a secret can have inside a longer encoded text), hex
(lower and upper case), percent-encoding, and each line of a multi-line
secret. actions/runner leaked secrets in exactly those cases.

Every form is matched with blanks (space, tab, CR, LF) ignored, so base64
wrapped at any column (``base64``, ``base64 -w 8``, CRLF line ends), ``xxd -p``
and ``od -An -tx1`` output are caught like the unwrapped text. The masker
works on the stream with its blanks removed (the "folded" text) and maps what
it finds back to the bytes as written; a masked span keeps its line breaks
(``********`` per line) so the log keeps its shape.

A secret split across two chunks is still caught: the masker holds back the
shortest tail that could be the start of a form, and only that, until the
next chunk (or ``flush``) decides. A form stretched over more than
``reach`` bytes (blanks included; four times the longest form, plus 64) is
held back no further: one chunk still masks it, a split one may not.
"""

from __future__ import annotations

import base64
import io
import re
import urllib.parse
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

MASK = b"********"

#: Encoded forms shorter than this are not masked: the middle of a base64
#: text, or one line of a key file, that short would mask ordinary output.
MIN_VARIANT = 6

#: What the masker skips between two characters of a form.
BLANKS = b" \t\r\n"

#: Pending prefixes at least this long are found with ``bytes.find`` on their
#: first HEAD characters; shorter ones by looking the text's end up in a set.
HEAD = 8

_LINE_PART = re.compile(rb"[^\r\n]+")
_BLANK_RUN = re.compile(rb"[ \t\r\n]*")


def variants(secret: bytes) -> set[bytes]:
    """The secret and the forms of it that must never appear in a log."""
    found = {secret, secret.hex().encode(), secret.hex().upper().encode()}
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


def _fold(data: bytes) -> bytes:
    return data.translate(None, BLANKS)


class _Forms:
    """The folded forms of a set of secrets, searched for in folded text."""

    def __init__(self, secrets: Iterable[bytes]) -> None:
        forms = {_fold(v) for secret in secrets for v in variants(secret)} - {b""}
        # Longest first: the pending search narrows its window as it goes.
        self.forms = sorted(forms, key=len, reverse=True)
        self.reach = 4 * len(self.forms[0]) + 64 if self.forms else 0
        self._prefixes: list[set[bytes]] = [set() for _ in range(HEAD)]
        for form in self.forms:
            for size in range(1, min(HEAD, len(form))):
                self._prefixes[size].add(form[:size])
        self._long = [(form, form[:HEAD]) for form in self.forms if len(form) > HEAD]

    def occurrences(self, folded: bytes) -> list[tuple[int, int]]:
        """Every [start, end) in ``folded`` that is a form, overlaps included."""
        found = []
        for form in self.forms:
            at = folded.find(form)
            while at != -1:
                found.append((at, at + len(form)))
                at = folded.find(form, at + 1)
        return found

    def pending(self, folded: bytes, low: int) -> int | None:
        """The first index from ``low`` on where the rest of ``folded`` begins a form."""
        end = len(folded)
        first = None
        for size in range(min(HEAD - 1, end - low), 0, -1):
            if folded[end - size :] in self._prefixes[size]:
                first = end - size
                break
        for form, head in self._long:
            start = max(low, end - len(form) + 1)
            stop = end - HEAD + 1 if first is None else min(first, end - HEAD + 1)
            found = _first_prefix_start(folded, form, head, start, stop)
            first = first if found is None else found
        return first


def _first_prefix_start(
    folded: bytes, form: bytes, head: bytes, start: int, stop: int
) -> int | None:
    """The first q in [start, stop) with folded[q:] a prefix of ``form``."""
    at = folded.find(head, start, stop + len(head) - 1)
    while at != -1:
        # The first 64 bytes settle nearly every candidate without copying the rest.
        rest = len(folded) - at
        if folded.startswith(form[: min(64, rest)], at) and folded.startswith(form[:rest], at):
            return at
        at = folded.find(head, at + 1, stop + len(head) - 1)
    return None


class _Positions:
    """Maps indices in the folded text back to the bytes as written, moving forward."""

    def __init__(self, data: bytes, raw: int = 0, folded: int = 0) -> None:
        self._data = data
        # Invariant: data[:raw] holds exactly ``folded`` non-blank bytes.
        self._raw = raw
        self._folded = folded

    def raw(self, index: int) -> int:
        """Where the folded text's byte ``index`` is in data; ``index`` never decreases."""
        data, raw, folded = self._data, self._raw, self._folded
        while True:
            raw = _after_blanks(data, raw)
            if folded == index:
                break
            # At most ``step`` of the next ``step`` bytes are non-blank: never overshoots.
            step = index - folded
            folded += len(_fold(data[raw : raw + step]))
            raw += step
        self._raw, self._folded = raw, folded
        return raw


def _after_blanks(data: bytes, pos: int) -> int:
    run = _BLANK_RUN.match(data, pos)
    return pos if run is None else run.end()


class Masker:
    """Masks secrets in a stream of chunks; see the module docstring."""

    def __init__(self, secrets: Iterable[str | bytes]) -> None:
        raw = [s.encode() if isinstance(s, str) else s for s in secrets]
        self._forms = _Forms(s for s in raw if s)
        self._tail = b""
        # The first ``_carry`` bytes of the tail belong to a span whose start
        # was already written; ``_open``: it was written up to the middle of a line.
        self._carry = 0
        self._open = False

    def __bool__(self) -> bool:
        return bool(self._forms.forms)

    def feed(self, chunk: bytes) -> bytes:
        """Masked output for ``chunk``; a possible secret start is held back."""
        if not self._forms.forms:
            return chunk
        data = self._tail + chunk
        folded = _fold(data)
        # A pending prefix starts in the last ``reach`` bytes or is not held.
        low = max(0, len(data) - self._forms.reach)
        folded_low = len(folded) - len(_fold(data[low:]))
        pending = self._forms.pending(folded, folded_low)
        spans, cut = self._spans(data, folded, pending)
        if cut is None:
            cut = len(data) if pending is None else _Positions(data, low, folded_low).raw(pending)
        out = self._render(data, spans, cut)
        self._tail = data[cut:]
        return out

    def flush(self) -> bytes:
        """The held-back tail, masked: call once the stream has ended."""
        if not self._forms.forms:
            return b""
        data = self._tail
        spans, _ = self._spans(data, _fold(data), None)
        out = self._render(data, spans, len(data))
        self._tail, self._carry, self._open = b"", 0, False
        return out

    def _spans(
        self, data: bytes, folded: bytes, pending: int | None
    ) -> tuple[list[tuple[int, int]], int | None]:
        """The masked [start, end) spans of data, merged, and the cut if it was mapped."""
        carried = [(0, self._carry)] if self._carry else []
        found = sorted(self._forms.occurrences(folded))
        if not found:
            return carried, None
        # Map every index in one forward pass: overlapping spans must not rescan.
        wanted = {i for start, end in found for i in (start, end - 1)}
        if pending is not None:
            wanted.add(pending)
        positions = _Positions(data)
        raw = {index: positions.raw(index) for index in sorted(wanted)}
        spans = [(raw[start], raw[end - 1] + 1) for start, end in found]
        cut = len(data) if pending is None else raw[pending]
        return _merged(spans + carried), cut

    def _render(self, data: bytes, spans: list[tuple[int, int]], cut: int) -> bytes:
        """data[:cut] with each span masked; remembers a span that goes past the cut."""
        if cut == 0:
            return b""
        out: list[bytes] = []
        pos = 0
        carry, still_open = 0, False
        for start, end in spans:
            if start >= cut:
                break
            stop = min(end, cut)
            continued = start == 0 and self._carry > 0 and self._open
            out += (data[pos:start], _masked(data[start:stop], continued=continued))
            pos = stop
            if end > cut:
                carry, still_open = end - cut, data[cut - 1] not in b"\r\n"
        out.append(data[pos:cut])
        self._carry, self._open = carry, still_open
        return b"".join(out)


def _merged(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Overlapping spans joined into one; spans that only touch stay apart."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start < merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


def _masked(span: bytes, *, continued: bool) -> bytes:
    """``span`` with each line's part of it masked; line breaks stay.

    ``continued``: the span's first line part was already masked in the
    previous output, so it gets no second mask.
    """
    masked = _LINE_PART.sub(MASK, span)
    if continued and span[:1] not in (b"\r", b"\n"):
        masked = masked[len(MASK) :]
    return masked


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
