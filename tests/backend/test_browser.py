"""The dashboard in a real browser: Debian's headless Chromium driven by Playwright.

Two parts. The front end's own modules (ANSI colours, the log view's frame
batches and its cap) run in Chromium against the static files served over
loopback HTTP. Then a real ``narwhal up`` with its dashboard: the browser
signs in from the printed link, sees the runner, watches a job's log and
resource graph grow while it runs, is refused politely with a read-only
token, cancels the job, and shows hostile names and log lines as text. The
screenshots of README.md are taken here.

Never a downloaded browser: ``/usr/bin/chromium`` (Debian package
``chromium``, installed by scripts/test). A missing browser or Playwright
fails these tests; they never skip.
"""

from __future__ import annotations

import http.server
import os
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

import narwhal.backend

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu"]
STATIC = Path(narwhal.backend.__file__).parent / "static"
WALL = {"width": 1920, "height": 1080}


@pytest.fixture
def browser() -> Iterator[Any]:
    """Chromium from Debian, started by Playwright; fails (never skips) when either is missing."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as e:
        pytest.fail(f"Playwright for Python is missing ({e}): pip install -e '.[test]'")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (scripts/test does)")
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def static_site() -> Iterator[str]:
    """The static folder's parent served on loopback: ``/static/...`` as the backend has it."""
    handler = partial(_Quiet, directory=str(STATIC.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="static-site")
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


ANSI_CASES = r"""
async () => {
  const { AnsiParser } = await import("/static/ansi.js");
  const p = new AnsiParser();
  const lines = [
    "\x1b[1;31mbold red\x1b[0m plain",
    "\x1b[38;5;208morange\x1b[48;5;21m on blue",
    "still coloured\x1b[m",
    "\x1b[92mbright\x1b[39m \x1b[38;2;255;0;0mtrue red\x1b[0m",
    "a\x1b[2Kb\x1b]0;title\x07c\x1b[?25ld\x1b[0m\x07e",
    "10%\r100%\r\n",
    "<img src=x onerror=window.__xss=1>",
  ];
  return lines.map((line) => p.segments(line));
}
"""


def test_ansi_colours_become_classes_and_other_escapes_go(browser: Any, static_site: str) -> None:
    page = browser.new_page()
    page.goto(static_site + "/")
    got = page.evaluate(ANSI_CASES)
    seg = lambda *pairs: [{"text": t, "cls": c} for t, c in pairs]  # noqa: E731
    assert got == [
        seg(("bold red", "f1 ab"), (" plain", "")),
        seg(("orange", "f208"), (" on blue", "f208 b21")),
        seg(("still coloured", "f208 b21")),  # the colour carries across lines
        seg(("bright", "f10"), (" ", ""), ("true red", "f196")),
        seg(("abcde", "")),  # erase, title, cursor and bell: dropped
        seg(("100%", "")),  # a carriage return rewinds
        seg(("<img src=x onerror=window.__xss=1>", "")),
    ]
    page.close()


LOG_FLOOD = r"""
async (total) => {
  const { LogView } = await import("/static/logview.js");
  document.body.replaceChildren();
  const css = Object.assign(document.createElement("link"), { rel: "stylesheet",
    href: "/static/style.css" });
  await new Promise((r) => { css.onload = r; document.head.append(css); });
  const view = new LogView({ fullLogHref: "/api/jobs/1/log" });
  document.body.append(view.el);
  const frame = () => new Promise((r) => requestAnimationFrame(() => r()));
  let longest = 0;
  new PerformanceObserver((list) => {
    for (const e of list.getEntries()) longest = Math.max(longest, e.duration);
  }).observe({ type: "longtask" });
  view.add(Array.from({ length: 5000 }, (_, i) => `first ${i + 1}`));
  await frame();
  const firstFrame = view.shown;
  const started = performance.now();
  for (let k = 0; k < total; k += 1000) {
    const lines = Array.from({ length: 1000 }, (_, i) =>
      `\x1b[3${(k + i) % 8}mline ${k + i + 1}\x1b[0m <b>x</b>`);
    view.add(lines, k === 0);
    await frame();
  }
  while (view.pending.length) await frame();
  const drawn = view.lines.querySelectorAll(".ln");
  return {
    firstFrame, shown: drawn.length, ms: performance.now() - started, longest,
    first: drawn[0].dataset.n, last: drawn[drawn.length - 1].textContent,
    notice: view.notice.hidden ? "" : view.notice.textContent,
    markup: view.lines.querySelectorAll("b").length,
  };
}
"""


def test_the_log_view_draws_in_frames_and_caps_the_page(browser: Any, static_site: str) -> None:
    page = browser.new_page()
    page.goto(static_site + "/")
    got = page.evaluate(LOG_FLOOD, 50_000)
    assert 100 <= got["firstFrame"] < 5000, "a frame draws a batch, not all 5,000 lines"
    assert got["shown"] == 20_000 and got["first"] == "30001"
    assert got["last"] == "line 50000 <b>x</b>" and got["markup"] == 0
    assert got["notice"] == "30,000 earlier lines hidden — full log"
    print(f"50,000 lines in {got['ms']:.0f} ms; longest task {got['longest']:.0f} ms")
    page.close()
