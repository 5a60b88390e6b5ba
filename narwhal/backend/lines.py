"""A log's bytes as whole lines, however the chunks that carried them were cut.

The dispatcher stores and streams a log in the chunks runners sent, which
end anywhere: in the middle of a line, or of a UTF-8 character. The page
shows lines, so a line is only handed on once its newline came (or the job
ended: ``flush``); bytes are decoded a whole line at a time, so a character
split across two chunks decodes as one. A line longer than ``max_line``
bytes is cut there (the rest follows as further lines): a step printing
megabytes without a newline must not grow the buffer without end.
"""

from __future__ import annotations

#: Longest line kept whole; longer ones are cut into pieces of this size.
MAX_LINE = 64 * 1024


class LineSplitter:
    """Feed chunks, take whole lines."""

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self.max_line = max_line
        self._partial = b""

    @property
    def pending(self) -> bool:
        """Bytes of a line whose newline has not come yet."""
        return bool(self._partial)

    def feed(self, chunk: bytes) -> list[str]:
        """The lines ``chunk`` completes (without their newlines)."""
        data = self._partial + chunk
        pieces = data.split(b"\n")
        self._partial = pieces.pop()
        lines = [_text(piece) for line in pieces for piece in self._cut(line)]
        while len(self._partial) > self.max_line:
            lines.append(_text(self._partial[: self.max_line]))
            self._partial = self._partial[self.max_line :]
        return lines

    def flush(self) -> list[str]:
        """The last line, without a newline of its own (the log ended there)."""
        rest, self._partial = self._partial, b""
        return [_text(rest)] if rest else []

    def _cut(self, line: bytes) -> list[bytes]:
        if len(line) <= self.max_line:
            return [line]
        return [line[i : i + self.max_line] for i in range(0, len(line), self.max_line)]


def _text(line: bytes) -> str:
    # Terminals end lines with \r\n: the \r would show as nothing or as a glyph.
    return line.removesuffix(b"\r").decode("utf-8", errors="replace")
