"""Placement: what choosing the runner saves in checkouts, policy by policy.

One run compares the dispatcher's ``--placement`` policies side by side on
the same work: real runner processes (local executor) whose mirror caches
are bounded (``--mirror-cache-size``) to hold only some of the
repositories, generated repositories with real history (``bench.repos``:
made once, cached), and jobs of a one-step ``true`` pipeline, so that the
checkout is what a job costs. Jobs arrive in bursts over the repositories
with a skewed mix (repository i gets a share proportional to 1/(i+1), as a
few busy repositories dominate real teams), and new commits are pushed
between bursts, so a warm mirror is a few commits behind. Every policy gets
fresh runners, empty mirror caches, copies of the same repositories, the
same commits and the same job sequence (seeded).

Per policy: total and median checkout time, cold clones, bytes fetched
into the mirrors, makespan (the bursts' first submit to last end, summed)
and the largest share of the jobs one runner took. Target: affinity's total
checkout time at most a third of spread's, with no runner above 40 % of
the jobs (PASS/FAIL is printed; a miss does not fail the run).

Checkout times and cold clones are the job records' (``checkout``,
``cold``, sent by the runners); from runners that send none they are
inferred (the first step's start minus the job's start; the first job of a
runner and repository whose mirror folder was absent), and said so. Bytes
fetched are the growth of the runners' mirror folders over each burst: a
lower bound when a mirror is evicted and cloned again within one burst.
Repositories are served from local paths, so a cold clone costs local
disk and CPU only; over a network it would cost more.

Run: ``python -m bench.placement`` (about a minute on 2 cores, the first
run some 12 s more to make the repositories, 260 MB under
$NARWHAL_BENCH_CACHE or ~/.cache/narwhal-bench/repos). ``--tiny`` for a run
of seconds.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import repos
from bench.common import ROOT, exit_on_sigterm, machine
from bench.fleet import Fleet
from bench.repos import Shape

FULL = {"repos": 8, "commits": 3000, "size_mb": 30.0, "jobs": 80, "bursts": 8, "runners": 4}
TINY = {"repos": 3, "commits": 200, "size_mb": 2.0, "jobs": 12, "bursts": 3, "runners": 2}
#: A mirror cache holds this many repositories (FULL: 3.5 of 8; TINY: 1.5 of 3).
CACHE_SHARE = 0.44
TARGET_RATIO = 1 / 3
TARGET_SHARE = 0.40


@dataclass(frozen=True, slots=True)
class Plan:
    """The work, the same for every policy: per burst, the repository of each job,
    and how many commits each repository gets pushed before the burst."""

    jobs: list[list[int]]
    pushes: list[list[int]]


def make_plan(count: int, jobs: int, bursts: int, seed: int) -> Plan:
    rng = random.Random(seed)
    weights = [1 / (i + 1) for i in range(count)]
    sizes = [jobs // bursts + (b < jobs % bursts) for b in range(bursts)]
    work = [rng.choices(range(count), weights, k=size) for size in sizes]
    pushes = [[0] * count]
    for burst in work[1:]:  # the repositories built next had commits; others now and then
        pushes.append(
            [rng.randint(1, 3) if r in burst else rng.randint(0, 1) for r in range(count)]
        )
    return Plan(jobs=work, pushes=pushes)


@dataclass(frozen=True, slots=True)
class Row:
    """One ended job, as measured."""

    burst: int
    repo: str
    runner: str
    checkout: float
    cold: bool
    #: checkout and cold came from the job record (the runner sent them).
    reported: bool


@dataclass(slots=True)
class Outcome:
    policy: str
    rows: list[Row]
    fetched: int = 0
    fetched_from_api: bool = False
    makespan: float = 0.0
    #: The placement decision of the last job, as the dispatcher recorded it (if it does).
    decision: str | None = None


def mirror_name(repo: str) -> str:
    """The folder the runner's mirror cache keeps ``repo`` in (``MirrorCache._mirror``)."""
    return hashlib.sha256(repo.encode()).hexdigest()[:24] + ".git"


def _rows(burst: int, jobs: list[dict[str, Any]], before: dict[str, dict[str, int]]) -> list[Row]:
    """The jobs of a burst as rows. Where the record has no checkout figures, the
    checkout is the first step's start minus the job's, and a job is cold when it
    was the first of its runner and repository and that mirror was absent before."""
    rows, seen = [], set()
    for job in sorted(jobs, key=lambda j: float(j["started_at"])):
        if job["state"] != "success":
            raise RuntimeError(f"job {job['id']} ended {job['state']}: {job['reason']}")
        pair = (job["runner_id"], job["repo"])
        first = pair not in seen
        seen.add(pair)
        reported = bool(job.get("checkout"))  # None, or 0.0 from a runner that sends none
        if reported:
            checkout, cold = float(job["checkout"]), bool(job["cold"])
        else:
            steps = job["steps"]
            checkout = float(steps[0]["started_at"]) - float(job["started_at"])
            cold = first and mirror_name(job["repo"]) not in before.get(job["runner_id"], {})
        rows.append(Row(burst, job["repo"], job["runner_id"], checkout, cold, reported))
    return rows


def _grown(before: dict[str, dict[str, int]], after: dict[str, dict[str, int]]) -> int:
    """Bytes the mirrors grew by (an entry evicted and cloned again within a burst
    counts only by how much it grew)."""
    return sum(
        max(0, size - before.get(runner, {}).get(entry, 0))
        for runner, entries in after.items()
        for entry, size in entries.items()
    )


@dataclass(frozen=True, slots=True)
class Settings:
    shape: Shape
    runners: int
    capacity: int
    gap: float
    runner_args: tuple[str, ...]


def run_policy(policy: str, base: list[Path], plan: Plan, settings: Settings, tmp: Path) -> Outcome:
    """The plan's bursts through fresh runners and a dispatcher placing by ``policy``."""
    folder = tmp / policy
    copies = [folder / "repos" / path.name for path in base]
    for source, target in zip(base, copies, strict=True):
        repos.copy(source, target)
    outcome = Outcome(policy, rows=[], fetched_from_api=True)
    with Fleet(
        folder / "fleet",
        runners=settings.runners,
        capacity=settings.capacity,
        dispatcher=["--placement", policy],
        runner=settings.runner_args,
    ) as fleet:
        pushed = [0] * len(copies)
        for burst, work in enumerate(plan.jobs):
            shas = _push(copies, plan.pushes[burst], pushed, settings.shape, burst)
            if burst:
                time.sleep(settings.gap)  # a pause between bursts: heartbeats bring news
            began = time.monotonic()
            _burst(fleet, outcome, burst, [(copies[r], shas[r]) for r in work])
            _progress(outcome, burst, len(plan.jobs), time.monotonic() - began)
    return outcome


def _burst(fleet: Fleet, outcome: Outcome, burst: int, work: list[tuple[Path, list[str]]]) -> None:
    """Submit a burst's jobs at once, wait for all of them, add what they measured."""
    before = fleet.mirrors()
    built: Counter[Path] = Counter()
    ids = []
    for repo, shas in work:
        # A repository's jobs in a burst build its new commits, newest first.
        ids.append(fleet.submit(repo, repos.BRANCH, shas[-1 - built[repo] % len(shas)]))
        built[repo] += 1
    jobs = fleet.finish(ids, timeout=600)
    outcome.rows += _rows(burst, jobs, before)
    fetched = [job.get("fetched") for job in jobs]
    if all(isinstance(f, int) for f in fetched):
        outcome.fetched += sum(f for f in fetched if isinstance(f, int))
    else:
        outcome.fetched += _grown(before, fleet.mirrors())
        outcome.fetched_from_api = False
    first = min(float(job["created_at"]) for job in jobs)
    outcome.makespan += max(float(job["finished_at"]) for job in jobs) - first
    outcome.decision = jobs[-1].get("placement") or outcome.decision


def _push(
    copies: list[Path], counts: list[int], pushed: list[int], shape: Shape, burst: int
) -> list[list[str]]:
    """Push each repository's new commits; the commits each one's jobs build."""
    shas = []
    for r, (repo, count) in enumerate(zip(copies, counts, strict=True)):
        first = shape.commits + pushed[r]
        new = repos.append(repo, count, shape, seed=f"push-{r}-{burst}", first=first)
        pushed[r] += count
        shas.append(new or [repos.head(repo)])
    return shas


def _progress(outcome: Outcome, burst: int, bursts: int, seconds: float) -> None:
    rows = [row for row in outcome.rows if row.burst == burst]
    policy = outcome.policy
    on = Counter(row.runner for row in rows)
    where = ", ".join(f"{name} {on[name]}" for name in sorted(on))
    cold = sum(row.cold for row in rows)
    checkout = sum(row.checkout for row in rows)
    print(
        f"# {policy} burst {burst + 1}/{bursts}: {len(rows)} jobs ({where}); {cold} cold;"
        f" checkout {checkout:.2f} s; {seconds:.1f} s",
        flush=True,
    )


def _figures(outcome: Outcome) -> dict[str, Any]:
    rows = outcome.rows
    on = Counter(row.runner for row in rows)
    busiest, most = on.most_common(1)[0]
    return {
        "total": sum(row.checkout for row in rows),
        # Every policy starts on empty caches: the first burst's clones are the same work.
        "later": sum(row.checkout for row in rows if row.burst > 0),
        "median": statistics.median(row.checkout for row in rows),
        "cold": sum(row.cold for row in rows),
        "fetched": outcome.fetched,
        "makespan": outcome.makespan,
        "share": most / len(rows),
        "busiest": busiest,
        "on": on,
    }


def report(outcomes: list[Outcome], runners: int) -> None:
    figures = {o.policy: _figures(o) for o in outcomes}
    print("# policy    checkout total  median    cold  fetched    makespan  largest share")
    for policy, f in figures.items():
        print(
            f"# {policy:<10}{f['total']:>10.2f} s {f['median'] * 1000:>7.0f} ms"
            f" {f['cold']:>5} {f['fetched'] / 1e6:>7.1f} MB {f['makespan']:>8.1f} s"
            f"  {f['share']:.0%} ({f['busiest']})"
        )
    for policy, f in figures.items():
        name = f"placement_{policy}"
        counts = ", ".join(f"{r} {f['on'][r]}" for r in sorted(f["on"]))
        print(f"{name}_jobs: {sum(f['on'].values())} ({counts})")
        print(f"{name}_checkout_total: {f['total']:.2f} s")
        print(f"{name}_checkout_after_first_burst: {f['later']:.2f} s")
        print(f"{name}_checkout_median: {f['median'] * 1000:.1f} ms")
        print(f"{name}_cold_clones: {f['cold']}")
        print(f"{name}_fetched: {f['fetched'] / 1e6:.1f} MB")
        print(f"{name}_makespan: {f['makespan']:.2f} s")
        print(f"{name}_largest_share: {f['share'] * 100:.0f} % ({f['busiest']}, of {runners})")
    if "affinity" in figures and "spread" in figures:
        _target(figures["affinity"], figures["spread"])


def _target(affinity: dict[str, Any], spread: dict[str, Any]) -> None:
    ratio = affinity["total"] / spread["total"] if spread["total"] else math.inf
    met = ratio <= TARGET_RATIO and affinity["share"] <= TARGET_SHARE
    print(
        f"placement_target: {'PASS' if met else 'FAIL'}: affinity's checkout total"
        f" {affinity['total']:.2f} s is {ratio:.2f} of spread's {spread['total']:.2f} s"
        f" (target <= {TARGET_RATIO:.2f}); its largest share {affinity['share']:.0%}"
        f" (target <= {TARGET_SHARE:.0%})"
    )


def _cache_flag(repo_bytes: int, count: int, share: float) -> tuple[str, ...]:
    """``--mirror-cache-size`` for about ``share`` of the repositories, if runners have it."""
    help_text = subprocess.run(
        [sys.executable, "-m", "narwhal", "runner", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    held = share * count
    if "--mirror-cache-size" not in help_text:
        print("# --mirror-cache-size: the runners have no such flag; their mirror caches are")
        print(f"#   unbounded (every repository stays once cloned), not {held:.1f} of {count}")
        return ()
    mib = math.ceil(held * repo_bytes / 2**20)
    print(f"# --mirror-cache-size {mib}M: about {held:.1f} of the {count} repositories")
    return ("--mirror-cache-size", f"{mib}M")


def _notes(outcomes: list[Outcome]) -> None:
    rows = [row for o in outcomes for row in o.rows]
    if not any(row.reported for row in rows):
        print("# checkout and cold: not in the job records (the runners send none yet);")
        print("#   checkout = first step's start - job's start (dispatcher clock),")
        print("#   cold = first job of its runner and repository with no mirror folder before")
    elif not all(row.reported for row in rows):
        print(f"# checkout and cold: {sum(not r.reported for r in rows)} jobs without, inferred")
    else:
        print("# checkout and cold: as the runners reported them (job records)")
    if not all(o.fetched_from_api for o in outcomes):
        print("# fetched: growth of the runners' mirror folders over each burst (du; a lower")
        print("#   bound when a mirror is evicted and cloned again within one burst)")
    for outcome in outcomes:
        if outcome.decision:
            print(f"# {outcome.policy}, the last job: {outcome.decision}")


def _tree() -> str:
    done = subprocess.run(
        ["git", "-C", str(ROOT), "log", "-1", "--format=%h %s"],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip()[:90] or "?"


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a run of seconds (the test's)")
    for name, kind in (("repos", int), ("commits", int), ("size-mb", float)):
        parser.add_argument(f"--{name}", type=kind, help=f"default {FULL[name.replace('-', '_')]}")
    for name in ("jobs", "bursts", "runners"):
        parser.add_argument(f"--{name}", type=int, help=f"default {FULL[name]}")
    parser.add_argument("--capacity", type=int, default=2, help="slots per runner")
    parser.add_argument(
        "--cache-share",
        type=float,
        default=CACHE_SHARE,
        help=f"share of the repositories one mirror cache holds (default {CACHE_SHARE})",
    )
    parser.add_argument("--policies", default="affinity,spread,pack")
    parser.add_argument("--gap", type=float, help="seconds between bursts (default 1, tiny 0.2)")
    parser.add_argument("--seed", type=int, default=14)
    args = parser.parse_args(argv)
    preset = TINY if args.tiny else FULL
    for name, value in preset.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.gap is None:
        args.gap = 0.2 if args.tiny else 1.0
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    exit_on_sigterm()
    policies = [p for p in args.policies.split(",") if p]
    shape = Shape(args.commits, args.size_mb)
    print(f"# {machine()}; git {repos.git('version').split()[-1]}")
    print(f"# tree: {_tree()}")
    made = repos.ensure(args.repos, shape)
    verb = f"generated {made.generated}" if made.generated else "reused"
    print(f"placement_repos: {args.repos} ({verb}, {made.seconds:.1f} s)", flush=True)
    repo_bytes = max(repos.disk_bytes(path) for path in made.paths)
    print(f"# each: {shape.commits} commits, {repo_bytes / 1e6:.1f} MB; {args.jobs} jobs in")
    print(f"#   {args.bursts} bursts; {args.runners} runners x {args.capacity} slots")
    settings = Settings(
        shape=shape,
        runners=args.runners,
        capacity=args.capacity,
        gap=args.gap,
        runner_args=_cache_flag(repo_bytes, args.repos, args.cache_share),
    )
    plan = make_plan(args.repos, args.jobs, args.bursts, args.seed)
    mix = Counter(r for burst in plan.jobs for r in burst)
    shown = ", ".join(f"repo-{r} {mix[r]}" for r in sorted(mix))
    print(f"placement_jobs: {args.jobs} over {len(mix)} repositories ({shown})")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="narwhal-bench-placement-") as tmp:
        outcomes = [run_policy(p, made.paths, plan, settings, Path(tmp)) for p in policies]
    _notes(outcomes)
    report(outcomes, args.runners)
    print(f"# runs took {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        # The fleet and the temporary folders are gone by now (``with`` blocks).
        print("# interrupted", file=sys.stderr)
        sys.exit(130)
