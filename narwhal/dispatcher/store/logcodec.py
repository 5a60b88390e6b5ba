"""How log chunks are stored: compressed, read back transparently.

Each chunk (at most 64 KiB, one LOG frame) is compressed alone, so a log
can be read from any chunk on and a chunk is written once, in the
transaction that stores its frame. The codec is a column of the chunk's
row, so chunks written before compression (or by a store where the codec
is missing) stay readable, and a later change of codec needs no rewrite.

Codecs: ``RAW`` (0), ``ZLIB`` (1), ``ZSTD`` (2, the ``zstandard`` binding,
level 3: several times zlib's speed at a better ratio on CI output). A
chunk shorter than ``SMALL`` bytes, or one that does not shrink, is kept
raw: compressing a line of progress output costs more than it saves.
``MARKER`` (3) is a raw chunk the store wrote itself: the one line a log
deleted by the retention policy reads as (``retention_marker``); it is not
counted in what a job's log stores, so it is never collected again.
"""

from __future__ import annotations

import time
import zlib

import zstandard

from narwhal.errors import StoreError

RAW, ZLIB, ZSTD, MARKER = 0, 1, 2, 3

#: Chunks shorter than this are stored as they are.
SMALL = 128

#: zstd's level: 3 is its default, the speed of the hot path's budget.
LEVEL = 3

#: A chunk is at most one LOG frame (64 KiB); a stored one claiming to
#: unpack to more than this is refused, not inflated.
MAX_CHUNK = 1 << 20

_compressor = zstandard.ZstdCompressor(level=LEVEL)
_decompressor = zstandard.ZstdDecompressor()


def retention_marker(at: float) -> bytes:
    """What a log reads as once the retention policy deleted it at ``at``."""
    day = time.strftime("%Y-%m-%d", time.gmtime(at))
    return (
        f"narwhal: this log was deleted by the log retention policy on {day}"
        " (the job, its steps and history are kept)\n"
    ).encode()


def pack(data: bytes) -> tuple[int, bytes]:
    """``(codec, stored bytes)`` for a chunk."""
    if len(data) < SMALL:
        return RAW, data
    packed = _compressor.compress(data)
    if len(packed) >= len(data):
        return RAW, data
    return ZSTD, packed


def unpack(codec: int, stored: bytes) -> bytes:
    """The chunk's bytes; ``StoreError`` for an unknown codec or a damaged chunk."""
    try:
        if codec in (RAW, MARKER):
            return stored
        if codec == ZSTD:
            return _decompressor.decompress(stored, max_output_size=MAX_CHUNK)
        if codec == ZLIB:
            inflater = zlib.decompressobj()
            data = inflater.decompress(stored, MAX_CHUNK)
            if inflater.unconsumed_tail:
                raise StoreError("a stored log chunk unpacks past the chunk limit")
            return data
    except (zstandard.ZstdError, zlib.error) as e:
        raise StoreError(f"a stored log chunk is damaged: {e}") from e
    raise StoreError(f"a stored log chunk has an unknown codec {codec}")
