"""The dashboard in a real browser: Debian's headless Chromium driven by Playwright.

Three parts. The front end's own modules (ANSI colours, the log view's frame
batches and its cap) run in Chromium against the static files served over
loopback HTTP. Then a real ``narwhal up`` with its dashboard: the browser
signs in from the printed link, sees the runner, watches a job's log and
resource graph grow while it runs, is refused politely with a read-only
token, cancels the job, and shows hostile names and log lines as text. The
screenshots of README.md are taken here. Last, placement, on a dispatcher of
the shipped fakes (``tests.support.fakestack``), whose runners report what
the test says: a job's page says why it waits, then where it went and what
its checkout cost; a runner's page shows its report and its quarantine.

Never a downloaded browser: ``/usr/bin/chromium`` (Debian package
``chromium``, installed by scripts/test). A missing browser or Playwright
fails these tests; they never skip.
"""

from __future__ import annotations

import dataclasses
import http.server
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

import narwhal.backend
from narwhal.mesh import protocol as p
from tests.dispatcher.test_metrics_placement import STATE, Quarantine, checked_out
from tests.support.daemons import Client, Daemon
from tests.support.eventually import eventually, eventually_async
from tests.support.fakestack import TOKEN, FakeStack
from tests.support.repos import Repo, git

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu"]
STATIC = Path(narwhal.backend.__file__).parent / "static"
WALL = {"width": 1920, "height": 1080}
Up = Callable[..., tuple[Daemon, Client]]


class Chromium:
    """Debian's Chromium under Playwright, started by the test's first call.

    Started from the test body, not in a fixture's setup, so a missing browser
    or Playwright makes the test FAIL (a setup error would read as not run).
    """

    def __init__(self) -> None:
        self._playwright: Any = None
        self._browser: Any = None

    def __call__(self) -> Any:
        if self._browser is None:
            try:
                from playwright.sync_api import sync_playwright
            except ImportError as e:
                pytest.fail(f"Playwright for Python is missing ({e}): pip install -e '.[test]'")
            if not os.access(CHROMIUM, os.X_OK):
                pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (scripts/test does)")
            self._playwright = sync_playwright().start()
            self._browser = self._playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        return self._browser

    def close(self) -> None:
        if self._browser is not None:
            self._browser.close()
        if self._playwright is not None:
            self._playwright.stop()


@pytest.fixture
def chromium() -> Iterator[Chromium]:
    launcher = Chromium()
    try:
        yield launcher
    finally:
        launcher.close()


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


def test_ansi_colours_become_classes_and_other_escapes_go(
    chromium: Chromium, static_site: str
) -> None:
    page = chromium().new_page()
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


def test_the_log_view_draws_in_frames_and_caps_the_page(
    chromium: Chromium, static_site: str
) -> None:
    page = chromium().new_page()
    page.goto(static_site + "/")
    got = page.evaluate(LOG_FLOOD, 50_000)
    assert 100 <= got["firstFrame"] < 5000, "a frame draws a batch, not all 5,000 lines"
    assert got["shown"] == 20_000 and got["first"] == "30001"
    assert got["last"] == "line 50000 <b>x</b>" and got["markup"] == 0
    assert got["notice"] == "30,000 earlier lines hidden — full log"
    print(f"50,000 lines in {got['ms']:.0f} ms; longest task {got['longest']:.0f} ms")
    page.close()


# The dashboard of a real `narwhal up`.

#: Numbered lines, each written in two parts (a chunk may end mid-line), in
#: colours, while the step holds 96 MiB.
EMIT = """\
import sys, time
hog = []
for i in range(1, 601):
    if i <= 12:
        hog.append(bytearray(b"\\x01") * (8 << 20))
    sys.stdout.write(f"\\x1b[32mline {i:04d}\\x1b[0m \\x1b[1mhalf")
    sys.stdout.flush()
    time.sleep(0.1)
    sys.stdout.write("\\x1b[0m and \\x1b[38;5;208mdone\\x1b[0m\\n")
    sys.stdout.flush()
    time.sleep(0.1)
"""
SLOW = """\
name: integration
steps:
  - name: prepare
    command: git log --oneline -1
  - name: stream
    command: python3 emit.py
"""
QUICK = """\
name: build
steps:
  - name: compile
    command: echo compiling; sleep 0.5
  - name: test
    command: printf '\\033[32mall tests passed\\033[0m\\n'
"""
FAILING = "name: lint\nsteps:\n  - {name: lint, command: 'echo 3 problems; exit 3'}\n"
XSS = "<img src=x onerror=window.__xss=1>"
XSS_BRANCH = "<img/src=x/onerror=window.__xss=1>"
XSS_PIPELINE = f"steps:\n  - name: echo\n    command: echo '{XSS}'\n"
IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"


def _expect() -> Any:
    from playwright.sync_api import expect

    return expect


def _repo(root: Path, name: str, files: dict[str, str]) -> Repo:
    repo = Repo(root / name)
    repo.commit(files, "initial")
    return repo


def _branch(repo: Repo, name: str, files: dict[str, str]) -> str:
    git(repo.path, "checkout", "-q", "-b", name)
    repo.commit(files, f"on {name}")
    git(repo.path, "checkout", "-q", "main")
    return f"refs/heads/{name}"


def _sign_in_link(daemon: Daemon) -> tuple[str, str]:
    link = re.search(r"dashboard at (http://\S+)/#token=(\S+)", daemon.announce)
    assert link, f"no sign-in link in: {daemon.announce}"
    return link.group(1), link.group(2)


def _lines(page: Any) -> list[str]:
    return list(page.eval_on_selector_all(".log .ln", "els => els.map(e => e.textContent)"))


#: The memory line of the step that allocates (runners send samples every few seconds).
STREAM_MEMORY = '.step:has(.step-name:text-is("stream")) figure.usage path.mem'


def _points(page: Any) -> int:
    found = page.locator(STREAM_MEMORY)
    return int(found.get_attribute("data-points") or 0) if found.count() else 0


@pytest.mark.timeout(300)
def test_the_dashboard_follows_a_job_live_and_cancels_it(
    chromium: Chromium, narwhal_up: Up, tmp_path: Path
) -> None:
    browser = chromium()
    expect = _expect()
    daemon, api = narwhal_up("--capacity", "3")
    board, token = _sign_in_link(daemon)
    git_dir = tmp_path / "git"
    web = _repo(git_dir, "acme-web", {"narwhal.yml": QUICK})
    login = _branch(web, "feature/login", {"notes.txt": "login\n"})
    hostile = _branch(web, XSS_BRANCH, {"narwhal.yml": XSS_PIPELINE})
    tools = _repo(git_dir, "acme-tools", {"narwhal.yml": FAILING})
    service = _repo(git_dir, "acme-api", {"narwhal.yml": SLOW, "emit.py": EMIT})
    main = "refs/heads/main"
    ended = [api.submit(web, ref=main), api.submit(web, ref=login), api.submit(tools, ref=main)]
    xss_job = api.submit(web, ref=hostile)
    for job_id in [*ended, xss_job]:
        api.wait(job_id)

    context = browser.new_context(viewport=WALL)
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    # The content security policy refusing anything the page does shows here.
    page.on("console", lambda m: problems.append(m.text) if "Content Security" in m.text else None)
    page.on("dialog", lambda d: (problems.append(f"dialog: {d.message}"), d.dismiss()))

    # Signed in from the printed link, which leaves the address at once.
    page.goto(f"{board}/#token={token}")
    runner = page.locator(".runner", has_text="local")
    expect(runner).to_contain_text("ready")
    assert "token" not in page.url
    # Jobs submitted now appear without a reload.
    waiting = api.submit(web, ref=main, labels={"gpu": "a100"})
    slow = api.submit(service, ref=main)
    expect(page.locator(f'tr[data-job="{slow}"]')).to_contain_text("running", timeout=20_000)
    expect(page.locator(f'tr[data-job="{waiting}"]')).to_contain_text("queued")
    expect(page.locator(".oldest")).to_contain_text("no runner offers gpu=a100")
    expect(runner).to_contain_text("1 used")
    # A hostile branch name is text, in the table and nowhere as markup.
    expect(page.locator("td.ref", has_text=XSS_BRANCH)).to_have_count(1)
    assert page.locator("main img").count() == 0

    page.locator(f'a[href="/jobs/{slow}"]').first.click()
    expect(page.locator(".job-title .badge")).to_have_text("running")
    expect(page.locator(".log .ln").nth(4)).to_be_visible(timeout=20_000)
    seen = len(_lines(page))
    expect(page.locator(".log .ln").nth(seen + 3)).to_be_attached(timeout=10_000)
    lines = _lines(page)
    numbered = [line for line in lines if re.match(r"line \d{4}", line)]
    assert len(numbered) >= 5 and all(line.endswith("half and done") for line in numbered), lines
    assert [int(line[5:9]) for line in numbered] == list(range(1, len(numbered) + 1))
    assert page.locator(".log span.f2").count() and page.locator(".log span.ab").count()
    assert page.locator(".log span.f208").count()

    # Without the steps' usage (runners' samples) everything else still runs, then fails.
    graph_missing = _resource_graph_missing(page, expect)
    expect(page.locator(".step", has_text="prepare")).to_contain_text("exit 0")
    IMAGES.mkdir(parents=True, exist_ok=True)
    page.goto(board + "/")
    expect(page.locator(".runner", has_text="local")).to_contain_text("1 used")
    page.screenshot(path=str(IMAGES / "dashboard-overview.png"))
    page.goto(f"{board}/jobs/{slow}")
    if graph_missing is None:
        expect(page.locator(STREAM_MEMORY)).to_have_count(1)
    expect(page.locator(".log .ln").nth(20)).to_be_attached(timeout=20_000)
    page.screenshot(path=str(IMAGES / "dashboard-job.png"))

    _refused_with_a_read_token(browser, api, board, slow, expect)

    page.locator("button.action-cancel").click()
    expect(page.locator(".notices")).to_contain_text("Cancel requested")
    expect(page.locator(".job-title .badge")).to_have_text("cancelled", timeout=20_000)
    expect(page.locator(".step", has_text="stream").locator(".badge")).to_have_text("cancelled")
    expect(page.locator(".transitions")).to_contain_text("cancelled")
    expect(page.locator("button.action-cancel")).to_be_hidden()

    # A hostile log line is text too.
    page.goto(f"{board}/jobs/{xss_job}")
    expect(page.locator(".log .ln").get_by_text(XSS, exact=True)).to_have_count(1)
    page.goto(f"{board}/jobs?state=failed")
    expect(page.locator("tr.job-row")).to_have_count(1)
    expect(page.locator("tr.job-row")).to_contain_text(f"#{ended[2]}")
    page.goto(f"{board}/runners/local")
    expect(page.locator(".runner-head h1")).to_have_text("Runner local")
    expect(page.locator(".chart path.busy")).to_have_count(1)
    assert page.evaluate("window.__xss") is None and page.locator("main img").count() == 0
    assert not problems, problems
    api.http.post(f"/api/jobs/{waiting}/cancel", json={})
    context.close()
    assert graph_missing is None, f"the resource graph: {graph_missing}"


def _resource_graph_missing(page: Any, expect: Any) -> str | None:
    """What is wrong with the allocating step's graph (None: it draws, grows, says its peak)."""
    try:
        expect(page.locator(STREAM_MEMORY)).to_have_count(1, timeout=20_000)
        first = _points(page)
        eventually(lambda: _points(page) > max(first, 2), timeout=30, what="more usage samples")
        assert (page.locator(STREAM_MEMORY).get_attribute("d") or "").count("L") >= 2
        stream = page.locator('.step:has(.step-name:text-is("stream"))')
        caption = stream.locator("figure.usage .mem-key").text_content() or ""
        peak = re.fullmatch(r"peak (\d+(?:\.\d+)?) (MiB|GiB)( of .+)?", caption)
        assert peak, caption
        assert float(peak.group(1)) * (1024 if peak.group(2) == "GiB" else 1) >= 64, caption
    except AssertionError as e:
        return str(e).splitlines()[0]
    return None


def _refused_with_a_read_token(
    browser: Any, api: Client, board: str, job: int, expect: Any
) -> None:
    """Signing in by the form, then a cancel the token may not make: a polite message."""
    made = api.http.post("/api/tokens", json={"name": "wall-screen", "scope": "read"})
    assert made.status_code == 201, made.text
    context = browser.new_context(viewport=WALL)
    page = context.new_page()
    page.goto(f"{board}/jobs/{job}")
    form = page.locator("form.signin")
    expect(form).to_be_visible()
    form.locator("input").fill("nw_not_a_token")
    form.locator("button").click()
    expect(form.locator(".msg-error")).to_be_visible()
    form.locator("input").fill(made.json()["token"])
    form.locator("button").click()
    expect(page.locator(".job-title .badge")).to_have_text("running")
    page.locator("button.action-cancel").click()
    refusal = page.locator(".notices .msg-error")
    expect(refusal).to_be_visible()
    text = refusal.text_content() or ""
    assert text and "answered" not in text and "{" not in text, text
    expect(page.locator(".job-title .badge")).to_have_text("running")
    context.close()


# Placement, on a dispatcher of the shipped fakes.

HOSTILE_IMAGE = "<img src=x onerror=window.__xss=2>:latest"
HOSTILE_REPO = "https://forge.example/<img src=x onerror=window.__xss=3>.git"


def test_the_dashboard_says_why_a_job_waits_and_what_a_runner_reports(
    chromium: Chromium, tmp_path: Path
) -> None:
    expect = _expect()
    report = dataclasses.replace(
        STATE,
        images=("python:3.12", HOSTILE_IMAGE),
        mirrors=(
            p.WarmRepo(repo=HOSTILE_REPO, sha="e" * 40, used_at=time.time() - 120, size=5 << 20),
            *STATE.mirrors,
        ),
    )
    with FakeStack(tmp_path / "data", dashboard=True) as stack:
        d = stack.dispatcher
        assert d is not None
        d.signals.health = Quarantine("old")

        async def connect() -> None:
            runner = await stack.mesh.add_runner("build-1", capacity=2)
            await runner.ready(state=report)
            await stack.mesh.add_runner("old", capacity=1)

        stack.run(connect())
        with httpx.Client(base_url=stack.api, headers={"Authorization": f"Bearer {TOKEN}"}) as api:
            made = api.post("/api/jobs", json={"repo": "/srv/app", "labels": {"gpu": "a100"}})
        job_id = made.json()["id"]
        pending = eventually(lambda: d.pending(job_id), what="an explanation")

        page = chromium().new_context(viewport=WALL).new_page()
        problems: list[str] = []
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        page.on(
            "console", lambda m: problems.append(m.text) if "Content Security" in m.text else None
        )
        page.goto(f"{stack.board}/#token={TOKEN}")
        expect(page.locator(".runner", has_text="build-1")).to_contain_text("ready")
        page.goto(f"{stack.board}/jobs/{job_id}")
        box = page.locator(".pending")
        shown = box.locator(".pending-text")
        expect(shown).to_contain_text("gpu=a100")

        def as_explained() -> bool:  # the dispatcher explains again every second
            now = d.pending(job_id)
            return now is not None and shown.text_content() == now.text

        eventually(as_explained, what="the dispatcher's explanation on the page")
        expect(box).to_contain_text("#1 in the queue")
        expect(box).to_contain_text(
            "start time not known yet" if pending.eta is None else "expected"
        )

        async def run_it() -> None:
            runner = await stack.mesh.add_runner("gpu-1", capacity=1, labels={"gpu": "a100"})
            await eventually_async(lambda: runner.jobs, what="the JOB frame")
            assert await runner.accept((job_id, 1))
            await checked_out(runner, (job_id, 1), 4.5, cold=True)

        stack.run(run_it())
        expect(page.locator(".job-title .badge")).to_have_text("running")
        expect(box).to_be_hidden()
        expect(page.locator(".fact.placement dd")).to_contain_text("placed on gpu-1")
        expect(page.locator(".fact.checkout dd")).to_have_text("4.5 s, cold (cloned)")

        page.goto(f"{stack.board}/runners/build-1")
        state = page.locator(".runner-state")
        expect(state.locator(".fact.memory dd")).to_have_text("6 GiB free of 16 GiB")
        expect(state.locator(".fact.load-average dd")).to_have_text("1.50")
        expect(state.locator(".fact.disk dd")).to_have_text("120 GiB free")
        expect(state.locator(".fact.platform dd")).to_have_text("linux/amd64")
        expect(state.locator(".fact.docker dd")).to_have_text("answers")
        expect(state.locator(".fact.cache dd")).to_have_text("3 GiB of 10 GiB")
        expect(state.locator(".fact.images .label", has_text=HOSTILE_IMAGE)).to_have_count(1)
        expect(state).to_contain_text("Warm repositories (3)")
        expect(state.locator("table.warm tbody tr")).to_have_count(3)
        expect(state.locator(f'td.repo[title="{HOSTILE_REPO}"]')).to_have_count(1)
        expect(state.locator(".quarantine")).to_have_count(0)
        page.goto(f"{stack.board}/runners/old")
        expect(page.locator(".runner-state .quarantine")).to_contain_text(
            "Quarantined: no work for now. 3 checkout failures in 5 minutes"
        )
        expect(page.locator(".runner-state")).to_contain_text("reports nothing of itself")
        assert page.evaluate("window.__xss") is None and page.locator("main img").count() == 0
        assert not problems, problems
        page.context.close()
