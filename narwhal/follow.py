"""Follow a submission: a job and every matrix job it spawns, until all have ended.

A submission is what the user waits for. Its first job runs the first matrix
combination and, once the runner has read narwhal.yml, the dispatcher
creates one job per other combination (``parent_id``); once the first job is
seen checked out (its ``pipeline`` set) or ended, all of them exist
(``Dispatcher._expand``), so the list is read once then. Each job's log is
streamed on its own thread and printed as whole lines, prefixed with its
combination (``[PY=3.12] ``) when the job has one, so interleaved logs stay
readable; a job without a matrix prints its log unchanged. At the end, one
summary line per job on stderr; the exit status is 0 only if every job
succeeded (or was skipped by its ``when``). While the first job waits in
the queue, ``wait_started`` says why on stderr, again each time the reason
changes (the dispatcher's pending explanation, ``GET /api/jobs/{id}``).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from narwhal.errors import NarwhalError

#: End states that count as success for the exit status.
#: How the dispatcher's last line of a log stream starts when it shuts down
#: (``dispatcher.api``); after it the API is gone, so no summary is asked for.
SHUTDOWN_LINE = "--- narwhal is shutting down;"
SUCCEEDED = frozenset({"success", "skipped"})
TERMINAL = frozenset({"success", "skipped", "failed", "error", "cancelled", "timed_out"})

#: Seconds between looks for the matrix jobs while the first job runs.
POLL = 0.3
#: Seconds the log streams get to end when the API stops answering.
STOP_GRACE = 2.0
#: Seconds between looks at a job that waits in the queue.
QUEUED_POLL = 0.2
#: The longest pending explanation shown in one line.
SHORT = 100

#: Logs streamed at once; the other jobs wait their turn (their logs are
#: kept, so nothing is lost), and the client's connections are not all held.
MAX_STREAMS = 16


class Source(Protocol):
    """What following needs of the API client (``client.Api``)."""

    def call(self, method: str, path: str, **kwargs: Any) -> Any: ...

    def log_chunks(self, job_id: int) -> Iterator[bytes]: ...


def combination(job: dict[str, Any]) -> str:
    """``PY=3.12 DB=sqlite``; empty for a job without a matrix."""
    return " ".join(f"{k}={v}" for k, v in (job.get("matrix") or {}).items())


def printable(value: object, longest: int = 200) -> str:
    """``value`` as text without control characters (each shown as ``?``), cut to ``longest``."""
    text = "".join(c if c.isprintable() else "?" for c in str(value)[: longest + 1])
    return text if len(text) <= longest else text[: longest - 3] + "..."


def short_duration(seconds: float) -> str:
    """``850 ms``, ``4.2 s``, ``3m 07s``, ``2h 05m``."""
    sec = max(0.0, seconds)
    if sec < 1:
        return f"{round(sec * 1000)} ms"
    if sec < 10:
        return f"{sec:.1f} s"
    if sec < 60:
        return f"{round(sec)} s"
    whole = round(sec)
    hours, rest = divmod(whole, 3600)
    return f"{hours}h {rest // 60:02d}m" if hours else f"{rest // 60}m {rest % 60:02d}s"


def waiting(pending: dict[str, Any]) -> str:
    """A pending explanation in one short line: ``no runner offers gpu=a100 (#2 in the
    queue, starts in ~3m 07s)`` (its text cut to ``SHORT`` characters)."""
    text = str(pending.get("text") or pending.get("reason") or "waiting")
    text = printable(text.removeprefix("waiting: "), SHORT)
    where = [f"#{pending['position']} in the queue"] if pending.get("position") else []
    eta = pending.get("eta")
    if isinstance(eta, int | float) and not isinstance(eta, bool):
        where.append(f"starts in ~{short_duration(eta)}")
    return f"{text} ({', '.join(where)})" if where else text


def wait_started(
    api: Source,
    job_id: int,
    progress: Callable[[str], None],
    *,
    poll: float = QUEUED_POLL,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Return once job ``job_id`` left the queue; while it waits, say why, each time
    the reason changes (its place in the queue alone is no news)."""
    said: str | None = None
    while (job := api.call("GET", f"/api/jobs/{job_id}"))["state"] == "queued":
        pending = job.get("pending")
        text = pending.get("text") if pending else ""
        if text != said:
            shown = f": {waiting(pending)}" if pending else ", waiting for a runner..."
            progress(f"job {job_id} queued{shown}")
            said = text
        sleep(poll)


def write_stdout(data: bytes) -> None:
    """All of ``data`` to stdout, or ``BrokenPipeError``.

    Unbuffered (``python -u``), stdout's write may take part of it and say so,
    and does when the reader goes away mid-write (``| head``).
    """
    out = sys.stdout.buffer
    view = memoryview(data)
    while view:
        view = view[out.write(view) or 0 :]
    out.flush()


_SHUTDOWN = SHUTDOWN_LINE.encode()


class StreamEnded(NarwhalError):
    """The dispatcher ended the log streams because it shuts down (exit 2)."""


class _Printer:
    """Whole lines to stdout, one writer at a time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def write(self, data: bytes) -> None:
        with self._lock:
            write_stdout(data)


class _Follower(threading.Thread):
    """Streams one job's log; the prefix is known once the job has checked out."""

    def __init__(
        self, api: Source, job_id: int, printer: _Printer, turns: threading.Semaphore
    ) -> None:
        super().__init__(name=f"follow-{job_id}", daemon=True)
        self.api, self.job_id, self.printer, self.turns = api, job_id, printer, turns
        #: What ended the stream early (the main thread raises it).
        self.error: NarwhalError | BrokenPipeError | None = None
        #: The dispatcher ended the stream because it shuts down.
        self.stopped = False
        self._prefix: bytes | None = None
        self._partial = b""

    def run(self) -> None:
        try:
            with self.turns:
                for chunk in self.api.log_chunks(self.job_id):
                    self._feed(chunk)
                self._flush(final=True)
        except (NarwhalError, BrokenPipeError) as e:
            self.error = e

    def _feed(self, chunk: bytes) -> None:
        if _SHUTDOWN in chunk:
            self.stopped = True
        if self._prefix is None:
            job = self.api.call("GET", f"/api/jobs/{self.job_id}")
            if job["matrix"] or job["pipeline"] is not None or job["state"] in TERMINAL:
                shown = combination(job)
                self._prefix = f"[{shown}] ".encode() if shown else b""
        if self._prefix == b"" and not self._partial:
            self.printer.write(chunk)  # no matrix: the log as it comes
            return
        self._partial += chunk
        self._flush(final=False)

    def _flush(self, *, final: bool) -> None:
        if self._prefix is None and not final:
            return  # hold lines until the prefix is known
        lines = self._partial.split(b"\n")
        self._partial = b"" if final else lines.pop()
        if final and lines and lines[-1] == b"":
            lines.pop()
        prefix = self._prefix or b""
        if lines:
            self.printer.write(b"".join(prefix + line + b"\n" for line in lines))


class Submission:
    """Follows job ``job_id`` and the matrix jobs it spawns (module docstring)."""

    def __init__(self, api: Source, job_id: int, *, progress: Callable[[str], None]) -> None:
        self.api, self.job_id, self.progress = api, job_id, progress
        self._printer = _Printer()
        self._turns = threading.Semaphore(MAX_STREAMS)
        self._followers: dict[int, _Follower] = {}

    def run(self) -> int:
        try:
            return self._run()
        except NarwhalError:
            # The API went away between two looks: when a log stream said the
            # dispatcher is shutting down (its closing line is printed), that
            # is the one line to end with, not "cannot reach".
            self._join(STOP_GRACE)
            if any(f.stopped for f in self._followers.values()):
                raise StreamEnded("the dispatcher shut down while following") from None
            raise

    def _run(self) -> int:
        self._start(self.job_id)
        while not self._expanded():
            self._wait()
        for child in self._children():
            self._start(child)
        while any(f.is_alive() for f in self._followers.values()):
            self._wait()
        self._raise_errors()
        if any(f.stopped for f in self._followers.values()):
            # Its closing lines said what happens to each job; the API is gone.
            raise StreamEnded("the dispatcher shut down while following")
        return self._summary()

    def _expanded(self) -> bool:
        """Whether the first job's matrix jobs all exist: it checked out, or it ended."""
        job = self.api.call("GET", f"/api/jobs/{self.job_id}")
        return job["pipeline"] is not None or job["state"] in TERMINAL

    def _wait(self) -> None:
        self._raise_errors()
        self._join(POLL)

    def _raise_errors(self) -> None:
        for follower in self._followers.values():
            if follower.error is not None:
                raise follower.error

    def _start(self, job_id: int) -> None:
        if job_id not in self._followers:
            follower = _Follower(self.api, job_id, self._printer, self._turns)
            self._followers[job_id] = follower
            follower.start()

    def _children(self) -> list[int]:
        listing = self.api.call("GET", "/api/jobs", params={"parent": self.job_id, "limit": 500})
        return sorted(job["id"] for job in listing["jobs"])

    def _join(self, timeout: float) -> None:
        """Wait a little for the followers (in steps, so Ctrl-C is seen at once)."""
        deadline = time.monotonic() + timeout
        for follower in self._followers.values():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            follower.join(left)

    def _summary(self) -> int:
        """One line per job; 0 only if all succeeded."""
        ok = True
        jobs = [self.api.call("GET", f"/api/jobs/{i}") for i in sorted(self._followers)]
        for job in jobs:
            ok = ok and job["state"] in SUCCEEDED
            self.progress(summary_line(job))
        return 0 if ok else 1


def summary_line(job: dict[str, Any]) -> str:
    """``job 3 [PY=3.12] failed in 1.20s: step 'test' exited 1``."""
    took = ""
    if job["finished_at"] and job["created_at"]:
        took = f" in {job['finished_at'] - job['created_at']:.2f}s"
    reason = f": {job['reason']}" if job["state"] != "success" and job["reason"] else ""
    shown = combination(job)
    label = f" [{shown}]" if shown else ""
    return f"job {job['id']}{label} {job['state']}{took}{reason}"
