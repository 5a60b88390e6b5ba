"""What the client commands print of a job and of runners, in words and human units.

Everything shown comes from the dispatcher's API answers (``GET
/api/jobs/{id}``, ``GET /api/runners``); a field an older dispatcher does
not send is shown as unknown, never a traceback. Runners' reports are
their own claims: what they say is printed with control characters
replaced (``printable``), so a runner cannot drive the terminal.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from narwhal.follow import combination, printable, short_duration, waiting

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def size(n: object) -> str:
    """``327155712`` -> ``312 MiB``: binary units, three significant digits at most."""
    if not isinstance(n, int | float) or isinstance(n, bool) or n != n:
        return "?"
    value, unit = max(0.0, float(n)), 0
    while value >= 1024 and unit < len(_UNITS) - 1:
        value, unit = value / 1024, unit + 1
    digits = 0 if unit == 0 or value >= 100 else 1 if value >= 10 else 2
    text = f"{value:.{digits}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return f"{text} {_UNITS[unit]}"


def _when(at: object) -> str:
    if not isinstance(at, int | float) or isinstance(at, bool) or not at:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


def checkout(job: dict[str, Any]) -> str | None:
    """``1.2 s, cold (cloned)`` / ``0.3 s, warm (from the runner's mirror)``; None: none yet."""
    seconds = job.get("checkout")
    if not isinstance(seconds, int | float) or isinstance(seconds, bool):
        return None
    how = "cold (cloned)" if job.get("cold") else "warm (from the runner's mirror)"
    return f"{short_duration(seconds)}, {how}"


def resources(job: dict[str, Any]) -> str | None:
    """``2 CPUs, 4 GiB``; None when the job asks for nothing."""
    asked = []
    if job.get("cpus") is not None:
        asked.append(f"{job['cpus']:g} CPUs")
    if job.get("memory") is not None:
        asked.append(size(job["memory"]))
    return ", ".join(asked) or None


def job_lines(job: dict[str, Any]) -> Iterator[str]:
    """``narwhal job N``: one fact a line, then its steps."""
    matrix = combination(job)
    facts: list[tuple[str, object]] = [
        ("job", f"{job['id']}" + (f" [{matrix}]" if matrix else "")),
        ("state", job["state"]),
        ("repo", job["repo"]),
        ("ref", job["ref"]),
        ("commit", job.get("sha") or "-"),
        ("event", job.get("event")),
        ("labels", ",".join(f"{k}={v}" for k, v in (job.get("labels") or {}).items()) or "-"),
        ("priority", job.get("priority", 0)),
        ("resources", resources(job) or "-"),
        ("attempt", job.get("attempt")),
        ("runner", job.get("runner_id") or "-"),
        ("created", _when(job.get("created_at"))),
        ("started", _when(job.get("started_at"))),
        ("finished", _when(job.get("finished_at"))),
    ]
    pending = job.get("pending")
    if pending:
        facts.append(("pending", waiting(pending)))
    if job.get("placement"):
        facts.append(("placement", job["placement"]))
    if (took := checkout(job)) is not None:
        facts.append(("checkout", took))
    if job.get("reason") and not (pending and pending.get("text") == job["reason"]):
        facts.append(("reason", job["reason"]))
    for name, value in facts:
        yield f"{name + ':':<11}{printable(value, 2000)}"
    for step in job.get("steps") or []:
        took = step.get("duration")
        shown = short_duration(took) if isinstance(took, int | float) else ""
        name = printable(step["name"])
        yield f"  step {step['index']:<3} {step['status']:<10} {shown:>9}  {name}"


def runner_state(runner: dict[str, Any]) -> str:
    """One line of what a runner reports of itself, or that it reports nothing."""
    report = runner.get("report")
    if not isinstance(report, dict):
        return "state not reported"
    mirrors = report.get("mirrors") or []
    bound = report.get("mirror_limit")
    cache = f"{size(report.get('mirror_bytes'))} of {size(bound) if bound else 'no bound'}"
    load = report.get("load")
    return "; ".join(
        [
            f"{report.get('cpus', '?')} CPUs, load"
            f" {f'{load:.2f}' if isinstance(load, int | float) else '?'}",
            f"memory {size(report.get('memory_available'))} free of"
            f" {size(report.get('memory_total'))}",
            f"disk {size(report.get('disk_free'))} free",
            f"{printable(report.get('os', '?'), 40)}/{printable(report.get('arch', '?'), 40)}",
            "docker" if report.get("docker") else "no docker",
            f"{len(mirrors)} warm repositories, cache {cache}",
        ]
    )


def quarantine(runner: dict[str, Any]) -> str | None:
    """``quarantined: <reason>`` (``on probation`` while its probe job runs); None: healthy."""
    held = runner.get("quarantine")
    if not isinstance(held, dict):
        return None
    what = "on probation" if held.get("probing") else "quarantined"
    return f"{what}: {printable(held.get('reason') or 'no reason given')}"
