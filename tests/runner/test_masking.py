"""The streaming secret masker: split chunks, encodings, minimal hold-back."""

from __future__ import annotations

import base64
import functools
import io
import os
import random
import subprocess
import sys
import urllib.parse
from pathlib import Path

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from narwhal.runner.masking import BLANKS, MASK, Masker, mask_text, masked_writer, variants

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
BLANKED = st.binary(max_size=8).map(lambda b: bytes(b"abcd \n\r\t"[x % 8] for x in b))


@settings(max_examples=300, deadline=None)
@given(
    secrets=st.lists(NOISE.filter(lambda b: len(b) >= 2), min_size=1, max_size=3),
    pieces=st.lists(BLANKED, max_size=6),
    cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=8),
)
def test_chunking_never_changes_the_result(
    secrets: list[bytes], pieces: list[bytes], cuts: list[int]
) -> None:
    # Interleave secrets with noise and blanks, then feed it cut anywhere.
    data = b"".join(p + secrets[i % len(secrets)] for i, p in enumerate(pieces))
    whole = mask_in_chunks(list(secrets), [data])
    points = sorted({c % (len(data) + 1) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    assert mask_in_chunks(list(secrets), chunks) == whole
    folded = whole.translate(None, BLANKS)
    for secret in secrets:
        # No '*' in a secret: any whole one left, blanks or not, was unmasked.
        assert secret not in folded


def test_mask_text() -> None:
    assert mask_text(f"failed: {SECRET.decode()}!", [SECRET]) == "failed: ********!"
    assert mask_text("nothing to hide", []) == "nothing to hide"


# --- Forms with line breaks, from the real tools ---------------------------------------------

TOOLS = {
    "base64": "base64",
    "base64 -w 8": "base64 -w 8",
    "base64 -w 1": "base64 -w 1",
    "base64 -w 0": "base64 -w 0",
    "base64, CRLF": r"base64 | sed 's/$/\r/'",
    "base64 -w 1, CRLF": r"base64 -w 1 | sed 's/$/\r/'",
    "base64url -w 8": "basenc --base64url -w 8",
    "base64 -w 20, indented": "base64 -w 20 | sed 's/^/        /'",
    "prefixed, base64 -w 7": "{ printf user:; cat; } | base64 -w 7",
    "xxd -p": "xxd -p",
    "xxd -p -u": "xxd -p -u",
    "od -An -tx1": "od -An -tx1 -v",
}


def long_secret(size: int) -> bytes:
    rng = random.Random(size)
    return bytes(
        rng.choice(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=-_.:!")
        for _ in range(size)
    )


def through(command: str, secret: bytes) -> bytes:
    """What ``printf %s "$SECRET" | COMMAND`` prints, run by the real shell and tools."""
    done = subprocess.run(
        ["sh", "-c", f'printf %s "$SECRET" | {command}'],
        env={**os.environ, "SECRET": secret.decode()},
        capture_output=True,
        check=True,
    )
    return done.stdout


@functools.cache
def pem() -> bytes:
    """A real private key: a multi-line secret."""
    done = subprocess.run(
        ["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024"],
        capture_output=True,
        check=True,
    )
    return done.stdout


@functools.cache
def case(tool: str, size: int) -> tuple[bytes, bytes]:
    secret = pem() if size == 0 else long_secret(size)
    return secret, through(TOOLS[tool], secret)


def leftover(masked: bytes) -> list[bytes]:
    """What the masks leave of an encoded text, blanks removed."""
    return [part for part in masked.translate(None, BLANKS).split(MASK) if part]


#: The base64 characters that encode "user:" alone, left unmasked.
USER = base64.b64encode(b"user:")[:6]


def assert_masked(secret: bytes, encoded: bytes, masked: bytes) -> None:
    assert MASK in masked
    parts = leftover(masked)
    if parts and parts[0].startswith(USER):
        parts[0] = parts[0][len(USER) :]
    # At most 4 characters survive (the 1-2 that share bits with a neighbour,
    # padding): not enough to decode any 3 bytes of the secret.
    assert all(len(part) <= 4 for part in parts), parts
    assert secret not in masked
    # The line structure stays: one line of output per line of encoded text.
    assert masked.count(b"\n") == encoded.count(b"\n")


def test_long_secrets_through_every_tool_are_masked() -> None:
    for tool in TOOLS:
        for size in (100, 300, 0):  # 0: the PEM key
            secret, encoded = case(tool, size)
            assert_masked(secret, encoded, mask_in_chunks([secret], [encoded]))


def test_wrapped_base64_split_at_every_boundary() -> None:
    secret, encoded = case("base64 -w 8", 100)
    whole = mask_in_chunks([secret], [encoded])
    assert_masked(secret, encoded, whole)
    for cut in range(1, len(encoded)):
        assert mask_in_chunks([secret], [encoded[:cut], encoded[cut:]]) == whole, cut
    assert mask_in_chunks([secret], [bytes([b]) for b in encoded]) == whole


def test_a_multiline_secret_printed_as_it_is_keeps_its_lines() -> None:
    key = pem()
    masked = mask_in_chunks([key.decode()], [b"key:\n" + key + b"done\n"])
    assert masked == b"key:\n" + b"********\n" * key.count(b"\n") + b"done\n"


CONTEXT = (b'+ printf %s "$TOKEN" | encode\n', b"\nexit 0\n")


@settings(max_examples=200, deadline=None)
@given(
    tool=st.sampled_from(sorted(TOOLS)),
    size=st.sampled_from([100, 300, 0]),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=12),
)
def test_tool_output_masked_in_any_chunking(tool: str, size: int, cuts: list[int]) -> None:
    secret, encoded = case(tool, size)
    data = CONTEXT[0] + encoded + CONTEXT[1]
    points = sorted({c % (len(data) + 1) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    masked = mask_in_chunks([secret], chunks)
    assert masked == mask_in_chunks([secret], [data])
    assert masked.startswith(CONTEXT[0]) and masked.endswith(CONTEXT[1])
    assert_masked(secret, encoded, masked[len(CONTEXT[0]) : -len(CONTEXT[1])])


# --- Hold-back: minimal, bounded --------------------------------------------------------------

FOLDED = sorted({v.translate(None, BLANKS) for v in variants(SECRET)}, key=len)


def must_hold(data: bytes) -> int:
    """How many bytes at the end of data could still become a form, by brute force."""
    for start in range(len(data)):
        rest = data[start:].translate(None, BLANKS)
        if data[start] not in BLANKS and any(
            len(rest) < len(f) and f.startswith(rest) for f in FOLDED
        ):
            return len(data) - start
    return 0


# Pieces of the secret's forms and blanks: near misses that keep the masker guessing.
PIECE = st.one_of(
    st.tuples(st.sampled_from(FOLDED), st.integers(0, 30)).map(lambda t: t[0][: t[1]]),
    st.sampled_from([b" ", b"\n", b"\r\n", b"x", b"ok\n"]),
)


@settings(max_examples=300, deadline=None)
@given(chunks=st.lists(st.lists(PIECE, max_size=6).map(b"".join), max_size=8))
def test_holds_back_exactly_what_could_still_become_a_form(chunks: list[bytes]) -> None:
    assume(not any(f in b"".join(chunks).translate(None, BLANKS) for f in FOLDED))
    masker = Masker([SECRET])
    fed = out = b""
    for chunk in chunks:
        fed += chunk
        out += masker.feed(chunk)
        assert fed.startswith(out)  # nothing masked, nothing changed
        assert len(fed) - len(out) == must_hold(fed), (fed, out)
    assert out + masker.flush() == fed


def test_ordinary_output_is_untouched_and_released_at_once() -> None:
    masker = Masker([SECRET, pem(), long_secret(300)])
    lines = [
        b"   Compiling narwhal v0.1.0 (/workspace)\n",
        b"tests/test_x.py::test_y PASSED    [ 42%]\n",
        b"commit 3f2a9c0d4e5b6a7f8091a2b3c4d5e6f708192a3b (HEAD -> main)\n",
        b"\r[#####               ] 25%",
    ]
    for line in lines * 50:
        # Each line ends on a character that begins no base64, hex or percent
        # form (the key is new each run, its lines random base64).
        assert masker.feed(line) == line
    assert masker.flush() == b""


def test_hold_back_is_bounded_when_a_prefix_is_stretched_by_blanks() -> None:
    secret, _ = case("base64", 300)
    form = base64.b64encode(secret)
    masker = Masker([secret])
    # A long prefix of the form, one character per 20 blank lines: never
    # the encoded secret, and held back only while it spans few enough bytes.
    stretched = b"".join(bytes([c]) + b"\n" * 20 for c in form[:-10])
    out, most = b"", 0
    for start in range(0, len(stretched), 100):
        out += masker.feed(stretched[start : start + 100])
        most = max(most, min(start + 100, len(stretched)) - len(out))
    # Held while it spans less than the reach (4 x the longest form, hex, + 64),
    # then let go: a feed is 100 bytes and a character comes with 20 blanks.
    reach = 4 * len(secret.hex()) + 64
    assert reach - 121 < most <= reach
    assert out + masker.flush() == stretched


def test_near_misses_are_released_and_nothing_is_masked() -> None:
    secret, encoded = case("base64 -w 1", 300)
    miss = encoded[:-12] + b"#\n"  # all of the wrapped encoding but its end
    masker = Masker([secret])
    data = miss * 200
    out = b""
    for start in range(0, len(data), 4096):
        out += masker.feed(data[start : start + 4096])
        assert len(data[: start + 4096]) - len(out) < len(miss)
    assert out + masker.flush() == data


def test_benchmark_runs_at_a_tiny_size() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.masking_throughput", "--megabytes", "1", "--chunk", "4096"],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert "masking_throughput_4096:" in done.stdout
