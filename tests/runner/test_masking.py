"""The streaming secret masker: split chunks, encodings, minimal hold-back."""

from __future__ import annotations

import base64
import io
import urllib.parse

from hypothesis import given, settings
from hypothesis import strategies as st

from narwhal.runner.masking import MASK, Masker, mask_text, masked_writer, variants

SECRET = b"s3cr3t-T0ken/with+chars"


def mask_in_chunks(secrets: list[str | bytes], chunks: list[bytes]) -> bytes:
    masker = Masker(secrets)
    return b"".join(masker.feed(chunk) for chunk in chunks) + masker.flush()


def test_masks_a_secret_in_one_chunk() -> None:
    out = mask_in_chunks([SECRET], [b"token is " + SECRET + b" ok\n"])
    assert out == b"token is " + MASK + b" ok\n"


def test_masks_a_secret_split_at_every_boundary() -> None:
    line = b"before " + SECRET + b" after " + SECRET + b"\n"
    for cut in range(1, len(line)):
        out = mask_in_chunks([SECRET], [line[:cut], line[cut:]])
        assert out == b"before " + MASK + b" after " + MASK + b"\n", cut


def test_masks_a_secret_fed_byte_by_byte() -> None:
    line = b"x" + SECRET + b"y"
    assert mask_in_chunks([SECRET], [bytes([b]) for b in line]) == b"x" + MASK + b"y"


def test_holds_back_only_what_could_start_a_secret() -> None:
    masker = Masker([SECRET])
    assert masker.feed(b"plain text\n") == b"plain text\n"
    assert masker.feed(b"almost s3cr") == b"almost "
    assert masker.feed(b"ew") == b"s3crew"  # not the secret after all
    assert masker.feed(b"tail s") == b"tail "
    assert masker.flush() == b"s"


def test_base64_in_every_alignment_and_urlsafe() -> None:
    for prefix in (b"", b"a", b"ab", b"abc", b"user:"):
        for suffix in (b"", b"!", b"!!"):
            encoded = base64.b64encode(prefix + SECRET + suffix)
            urlsafe = base64.urlsafe_b64encode(prefix + SECRET + suffix)
            for text in (encoded, urlsafe):
                out = mask_in_chunks([SECRET], [b"auth: " + text + b"\n"])
                assert MASK in out, (prefix, suffix)
                # What is left cannot be decoded back into the secret.
                assert SECRET not in _decodable(out), (prefix, suffix)


def _decodable(out: bytes) -> bytes:
    word = out.split(b" ")[1].strip()
    try:
        return base64.b64decode(word.replace(MASK, b"") + b"===")
    except ValueError:
        return b""


def test_percent_encoded_and_each_line_of_a_multiline_secret() -> None:
    key = "-----BEGIN KEY-----\nMIIEvQIBADANBgkq\n-----END KEY-----"
    quoted = urllib.parse.quote(key, safe="").encode()
    out = mask_in_chunks([key], [b"url=" + quoted + b"\nline: MIIEvQIBADANBgkq\n"])
    assert out == b"url=" + MASK + b"\nline: " + MASK + b"\n"


def test_variants_skip_forms_too_short_to_mask_safely() -> None:
    assert all(len(v) >= 6 or v == b"abc" for v in variants(b"abc"))
    assert b"abc" in variants(b"abc")


def test_no_secrets_passes_everything_through() -> None:
    masker = Masker(["", b""])
    assert not masker
    assert masker.feed(b"abc") == b"abc" and masker.flush() == b""


def test_longest_overlapping_secret_wins() -> None:
    out = mask_in_chunks(["abcdef", "abcdefghij"], [b"x abcdefg", b"hij y"])
    assert out == b"x " + MASK + b" y"


def test_masked_writer_masks_and_flushes_the_tail() -> None:
    sink = io.BytesIO()
    with masked_writer(sink, [SECRET.decode()]) as out:
        out.write(b"a " + SECRET[:5])
        out.flush()
        assert sink.getvalue() == b"a "
        out.write(SECRET[5:] + b" b " + SECRET[:3])
        out.flush()
    assert sink.getvalue() == b"a " + MASK + b" b " + SECRET[:3]


NOISE = st.binary(max_size=8).map(lambda b: bytes(97 + x % 4 for x in b))  # a-d, no '*'


@settings(max_examples=300, deadline=None)
@given(
    secrets=st.lists(NOISE.filter(lambda b: len(b) >= 2), min_size=1, max_size=3),
    pieces=st.lists(NOISE, max_size=6),
    cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=8),
)
def test_chunking_never_changes_the_result(
    secrets: list[bytes], pieces: list[bytes], cuts: list[int]
) -> None:
    # Interleave secrets with noise, then feed it cut anywhere.
    data = b"".join(p + secrets[i % len(secrets)] for i, p in enumerate(pieces))
    whole = mask_in_chunks(list(secrets), [data])
    points = sorted({c % (len(data) + 1) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    assert mask_in_chunks(list(secrets), chunks) == whole
    for secret in secrets:
        assert secret not in whole  # no '*' in a secret: any whole one left was unmasked


def test_mask_text() -> None:
    assert mask_text(f"failed: {SECRET.decode()}!", [SECRET]) == "failed: ********!"
    assert mask_text("nothing to hide", []) == "nothing to hide"
