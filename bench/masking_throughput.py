"""Masking throughput: ``Masker.feed`` over ordinary CI output with 5 secrets.

In process, no daemons: the masker alone, fed the 64 KiB chunks the runner
reads from a step (and, with ``--chunk``, any other size). The output is
generated (compiler, test runner, package manager and git lines, progress
bars with ``\\r``, shas and digests in hex, some base64), none of it a secret,
so every byte must come out as it went in: the script checks that too.
``--near-misses`` feeds a hostile step's output instead: the secrets' forms cut
short just before their end, wrapped at 1, 8 or 76 columns, and their first
100 characters repeated, which keeps the masker holding back and checking.

Run: ``python -m bench.masking_throughput`` (about 10 s per 100 MB).
"""

from __future__ import annotations

import argparse
import hashlib
import random
import time

from bench.common import machine
from narwhal.runner.masking import BLANKS, Masker, variants

PEM = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\n"
    + "\n".join(
        hashlib.sha512(str(i).encode()).hexdigest()[:70].replace("0", "A") for i in range(25)
    )
    + "\n-----END OPENSSH PRIVATE KEY-----\n"
)

#: A GitHub token, an AWS secret key, an npm token, a password and a deploy key.
SECRETS = (
    "ghp_" + hashlib.sha1(b"github").hexdigest()[:36],
    "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "npm_" + hashlib.md5(b"npm").hexdigest()[:32],
    "correct horse battery",
    PEM,
)


def _line(rng: random.Random, n: int) -> str:
    sha = hashlib.sha1(str(n).encode()).hexdigest()
    kinds = (
        f"2026-11-28T12:{n % 60:02d}:{n % 59:02d}.{n % 997:03d}Z [INFO] step 3: build ok\n",
        f"   Compiling narwhal-core v0.{n % 9}.{n % 17} (/workspace/crates/core)\n",
        f"tests/runner/test_mod{n % 40}.py::test_case_{n} PASSED{' ' * (n % 7)} [{n % 100:3d}%]\n",
        f"Downloading https://files.example.org/packages/{sha[:2]}/{sha[2:4]}/{sha}/pkg-{n}.tar.gz"
        f" ({n % 900} kB)\n",
        f"commit {sha}\nAuthor: Dev {n} <dev{n}@example.org>\n",
        f"sha256:{hashlib.sha256(sha.encode()).hexdigest()}  dist/app-{n}.whl\n",
        f"\r[{'#' * (n % 30):<30}] {n % 100}% eta 0:00:{n % 60:02d}",
        f"gcc -O2 -Wall -I/usr/include/python3.11 -c src/mod{n}.c -o build/mod{n}.o\n",
        f"added {n % 1000} packages, audited {n % 1500} in {n % 20}s; "
        f"integrity sha512-{hashlib.sha512(sha.encode()).digest()[:24].hex()}\n",
        f"    assert result == expected, f'{{result!r}} != {{expected!r}}'  # line {n}\n",
    )
    return rng.choice(kinds)


def corpus(size: int, seed: int = 11) -> bytes:
    """``size`` bytes of made-up CI output: 2 MB of distinct lines, repeated."""
    rng = random.Random(seed)
    lines: list[str] = []
    total = 0
    while total < min(size, 2_000_000):
        lines.append(_line(rng, len(lines)))
        total += len(lines[-1])
    block = "".join(lines).encode()
    return (block * (size // len(block) + 1))[:size]


def near_misses(size: int, seed: int = 11) -> bytes:
    """``size`` bytes of almost-secrets: every form of every secret, cut short."""
    rng = random.Random(seed)
    forms = sorted({v.translate(None, BLANKS) for s in SECRETS for v in variants(s.encode())})
    pieces: list[bytes] = []
    total = 0
    while total < min(size, 2_000_000):
        form = rng.choice(forms)
        miss = form[: rng.randrange(len(form) // 2, len(form))]
        width = rng.choice((1, 8, 76))
        lines = [miss[i : i + width] for i in range(0, len(miss), width)]
        pieces.append(
            b"\n".join(lines) + b"!\n" + (form[: min(100, len(form) - 1)] + b"#") * 20 + b"\n"
        )
        total += len(pieces[-1])
    block = b"".join(pieces)
    return (block * (size // len(block) + 1))[:size]


def run(data: bytes, chunk: int, *, check: bool = True) -> float:
    """MB/s of ``Masker.feed`` over ``data`` in ``chunk``-byte pieces."""
    masker = Masker(SECRETS)
    view = memoryview(data)
    out = []
    start = time.perf_counter()
    for offset in range(0, len(data), chunk):
        out.append(masker.feed(bytes(view[offset : offset + chunk])))
    out.append(masker.flush())
    seconds = time.perf_counter() - start
    if check and b"".join(out) != data:
        raise RuntimeError("the masker changed ordinary output")
    return len(data) / seconds / 1e6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=100)
    parser.add_argument("--chunk", type=int, action="append", help="bytes per feed (repeatable)")
    parser.add_argument("--near-misses", action="store_true", help="a hostile step's output")
    args = parser.parse_args(argv)
    size = args.megabytes * 1_000_000
    data = near_misses(size) if args.near_misses else corpus(size)
    kind, name = ("near misses", "_near_misses") if args.near_misses else ("CI output", "")
    print(f"# {machine()}")
    print(f"# {args.megabytes} MB of {kind}, {len(SECRETS)} secrets")
    for chunk in args.chunk or [65536]:
        rate = run(data, chunk, check=not args.near_misses)
        print(f"masking_throughput{name}_{chunk}: {rate:.1f} MB/s")


if __name__ == "__main__":
    main()
