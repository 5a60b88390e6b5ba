"""The metrics feed's CPU per job on each side, without sockets: flushes, and decoding.

Publisher: ``FEED_JOBS`` jobs, each moved 4 times (queued, assigned,
running, success) with a ``Publisher.flush`` after each round of moves, so
each job is published 4 times (the worst case: at 3-4k jobs/s a job is
seen in 2-3 flushes). The PUB socket is replaced by a sink that keeps the
frames (``flush`` then does all its work: take, settle, build, pack). The
events' own cost (``FeedState.apply``) is apart and excluded.

Subscriber: those frames through ``decode_update`` (every item checked and
built), and through ``decode_update`` + ``Replica.apply`` (what one
subscriber does per message); µs per job item.

``--before TREE`` runs the same measurement with ``PYTHONPATH=TREE`` (an
older checkout, e.g. ``git worktree add --detach ../before HEAD~3``) in
alternating child processes, best of ``--rounds`` each, and prints both
with the ratio. Run: ``python -m bench.feed_codec [--before TREE]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

FEED_JOBS = 500
MOVES = ("queued", "assigned", "running", "success")


class Sink:
    """Stands for the PUB socket: keeps what is sent."""

    def __init__(self) -> None:
        self.sent: list[list[bytes]] = []

    def send_multipart(self, frames: list[bytes], flags: int = 0) -> None:
        self.sent.append(frames)


def _moves(first: int) -> list[list[Any]]:
    """For each move, the ``JobChanged`` events of all the jobs (records as the table makes)."""
    from narwhal.dispatcher.feed import JobChanged
    from tests.support.feeds import record

    rounds: list[list[Any]] = [[] for _ in MOVES]
    for job_id in range(first, first + FEED_JOBS):
        job = record(job_id)
        for i, state in enumerate(MOVES):
            job = job._replace(state=state, runner_id=None if i == 0 else "runner-1")
            rounds[i].append(JobChanged(job, MOVES[i - 1] if i else None))
    return rounds


def publish_round(first: int) -> tuple[float, list[list[bytes]]]:
    """Seconds the flushes of one batch of jobs took, and the frames they sent."""
    from narwhal.dispatcher.feed import Feed
    from narwhal.dispatcher.publisher import Publisher

    publisher = Publisher("tcp://127.0.0.1:0", Feed())
    sink = Sink()
    publisher._pub = sink  # type: ignore[assignment]  # no socket: what flush costs
    rounds = _moves(first)
    spent = 0.0
    for events in rounds:
        for event in events:
            publisher.state.apply(event)
        started = time.perf_counter()
        publisher.flush()
        spent += time.perf_counter() - started
    return spent, [f for f in sink.sent if f[0] == b"job"]


def decode_round(frames: list[list[bytes]]) -> tuple[float, float, int]:
    """Seconds to decode ``frames``, to decode and apply them, and the job items in them."""
    from narwhal.mesh.feed import decode_update
    from narwhal.mesh.replica import Replica

    started = time.perf_counter()
    updates = [decode_update(f) for f in frames]
    decoded = time.perf_counter() - started
    replica = Replica()
    started = time.perf_counter()
    for f in frames:
        replica.apply(decode_update(f))
    applied = time.perf_counter() - started
    return decoded, applied, sum(len(u.items) for u in updates)


def measure(rounds: int) -> dict[str, float]:
    """Best of ``rounds``: µs per job (4 flushes each) and per view, decode per item."""
    best = {"flush_per_job": 1e9, "decode_per_item": 1e9, "apply_per_item": 1e9}
    for r in range(rounds):
        spent, frames = publish_round(1 + r * FEED_JOBS)
        decoded, applied, items = decode_round(frames)
        best["flush_per_job"] = min(best["flush_per_job"], spent / FEED_JOBS * 1e6)
        best["decode_per_item"] = min(best["decode_per_item"], decoded / items * 1e6)
        best["apply_per_item"] = min(best["apply_per_item"], applied / items * 1e6)
    best["flush_per_view"] = best["flush_per_job"] / len(MOVES)
    return best


def child(tree: str, rounds: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": tree}
    script = os.path.abspath(__file__)
    out = subprocess.run(
        [sys.executable, script, "--child", "--rounds", str(rounds)],
        env=env,
        cwd=tree,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return dict(json.loads(out.splitlines()[-1]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--before", metavar="TREE", help="an older checkout to compare with")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.rounds)))
        return
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    trees = {"after": here} | ({"before": args.before} if args.before else {})
    results: dict[str, dict[str, float]] = {}
    for _ in range(3):  # alternating: the cores are shared
        for name, tree in trees.items():
            got = child(tree, args.rounds)
            kept = results.setdefault(name, got)
            for key, value in got.items():
                kept[key] = min(kept[key], value)
    for key in ("flush_per_job", "flush_per_view", "decode_per_item", "apply_per_item"):
        line = "  ".join(f"{name} {results[name][key]:7.2f}" for name in trees)
        ratio = ""
        if "before" in results:
            ratio = f"  ({results['before'][key] / results['after'][key]:.2f}x faster)"
        print(f"{key:16s} µs  {line}{ratio}")


if __name__ == "__main__":
    main()
