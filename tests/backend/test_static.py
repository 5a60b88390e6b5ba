"""The dashboard's files: plain ES modules that load, with no HTML parsing of data.

The pages draw hostile text (repository and branch names, log lines) with
DOM calls and ``textContent`` only; these checks keep it that way and keep
the page free of anything from outside (no CDN: dashboards run offline).
"""

from __future__ import annotations

import re
from pathlib import Path

import narwhal.backend

STATIC = Path(narwhal.backend.__file__).parent / "static"
SCRIPTS = sorted(STATIC.rglob("*.js"))

#: Ways a string becomes markup or code in a page.
PARSERS = re.compile(
    r"\.innerHTML|\.outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function"
    r"|createContextualFragment|DOMParser|\.srcdoc|setHTMLUnsafe"
)
IMPORT = re.compile(r"""(?:^|\s)(?:import|export)\s[^;]*?from\s+["']([^"']+)["']""", re.M)
DYNAMIC = re.compile(r"""import\(\s*["']([^"']+)["']""")
ADDRESS = re.compile(r"https?://[^\s\"'`)]+")
#: The SVG namespace is a name, not something fetched.
NAMES = {"http://www.w3.org/2000/svg"}


def test_the_front_end_has_its_pages_and_modules() -> None:
    names = {p.relative_to(STATIC).as_posix() for p in STATIC.rglob("*") if p.is_file()}
    expected = {"index.html", "app.js", "style.css", "ansi.js", "charts.js", "router.js", "ws.js"}
    assert expected <= names, expected - names
    assert {f"pages/{n}.js" for n in ("overview", "jobs", "job", "runner")} <= names


def test_no_script_parses_a_string_as_html() -> None:
    found = [
        f"{path.relative_to(STATIC)}:{n}: {line.strip()}"
        for path in SCRIPTS
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if PARSERS.search(line)
    ]
    assert not found, found


def test_every_import_names_a_file_that_is_there() -> None:
    missing = []
    for path in SCRIPTS:
        text = path.read_text()
        for spec in IMPORT.findall(text) + DYNAMIC.findall(text):
            assert spec.startswith("."), f"{path.name}: bare import {spec!r} needs a build step"
            if not (path.parent / spec).resolve().is_file():
                missing.append(f"{path.relative_to(STATIC)} imports {spec}")
    assert not missing, missing
    assert len(SCRIPTS) >= 10


def test_nothing_is_loaded_from_outside() -> None:
    for path in [*SCRIPTS, STATIC / "index.html", STATIC / "style.css"]:
        outside = set(ADDRESS.findall(path.read_text())) - NAMES
        assert not outside, f"{path.name}: {sorted(outside)}"
    index = (STATIC / "index.html").read_text()
    for ref in re.findall(r"""(?:src|href)="([^"]+)\"""", index):
        if ref.startswith("/static/"):
            assert (STATIC / ref.removeprefix("/static/")).is_file(), ref
    assert "<script>" not in index and "style=" not in index, "no inline script or style"
