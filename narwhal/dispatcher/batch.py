"""One batch of runner frames as operations of the job table, in frame order.

The mesh drains up to a few hundred frames at a time; the dispatcher
records them in one unit of work (one commit for the lot) and the mesh
acknowledges them only once it is committed.
"""

from __future__ import annotations

from narwhal.dispatcher.feed import Event, LogAppended, StepChanged, UsageSampled
from narwhal.dispatcher.jobs import Changes, JobTable
from narwhal.dispatcher.mesh import Peer
from narwhal.dispatcher.store.base import (
    AppendLog,
    AppendUsage,
    SetCheckout,
    StepFinished,
    StepStarted,
    UsageSample,
)
from narwhal.errors import NarwhalError
from narwhal.mesh import protocol as p


def record_frames(table: JobTable, changes: Changes, frames: list[tuple[Peer, p.Message]]) -> None:
    """Record what each frame says in ``changes`` (REJECTs are the caller's)."""
    for peer, message in frames:
        runner_id = peer.runner_id or "?"
        if isinstance(message, p.Accept):
            reason = f"accepted by {runner_id}"
            table.move(changes, message.job_id, message.attempt, "running", reason, runner_id)
        elif isinstance(message, p.Done):
            reason = message.reason or message.status
            table.move(changes, message.job_id, message.attempt, message.status, reason, runner_id)
        elif isinstance(message, p.CheckedOut):
            table.checked_out(changes, _checkout(message))
        elif isinstance(message, p.Usage):
            _record_usage(table, changes, message)
        else:
            _record_output(table, changes, message)


def _record_usage(table: JobTable, changes: Changes, message: p.Usage) -> None:
    """A running step's samples: stored, then told to the feed (no follower waits for them)."""
    # Decoded as floats; memory was checked to be whole bytes.
    samples: tuple[UsageSample, ...] = tuple(
        (t, cpu, int(memory)) for t, cpu, memory in message.samples
    )
    write = AppendUsage(
        job_id=message.job_id,
        attempt=message.attempt,
        seq=message.seq,
        index=message.index,
        samples=samples,
        memory_limit=message.memory_limit,
    )
    changes.add(write)
    event = UsageSampled(write.job_id, write.attempt, write.index, samples, write.memory_limit)
    changes.after_commit(lambda: table.feed.publish(event))


def _record_output(table: JobTable, changes: Changes, message: p.Message) -> None:
    """A log chunk or a step's start or end: no state change; the feed hears of it."""
    event: Event
    if isinstance(message, p.Log):
        changes.add(
            AppendLog(
                job_id=message.job_id, attempt=message.attempt, seq=message.seq, data=message.data
            )
        )
        event = LogAppended(message.job_id, message.attempt, message.seq, len(message.data))
    elif isinstance(message, p.StepStarted):
        changes.add(
            StepStarted(
                job_id=message.job_id,
                attempt=message.attempt,
                index=message.index,
                name=message.name,
                at=changes.at,
            )
        )
        event = StepChanged(
            message.job_id,
            message.attempt,
            message.index,
            message.name,
            "running",
            None,
            None,
            changes.at,
        )
    elif isinstance(message, p.StepFinished):
        changes.add(
            StepFinished(
                job_id=message.job_id,
                attempt=message.attempt,
                index=message.index,
                name=message.name,
                status=message.status,
                exit_code=message.exit_code,
                duration=message.duration,
            )
        )
        event = StepChanged(
            message.job_id,
            message.attempt,
            message.index,
            message.name,
            message.status,
            message.exit_code,
            message.duration,
            changes.at,
        )
    else:
        raise NarwhalError(f"unexpected {message.KIND} frame")
    changes.after_commit(lambda: table.feed.publish(event))


def _checkout(message: p.CheckedOut) -> SetCheckout:
    needs = message.needs
    return SetCheckout(
        job_id=message.job_id,
        attempt=message.attempt,
        sha=message.sha,
        pipeline=message.pipeline,
        variants=message.variants,
        checkout=message.checkout,
        cold=message.cold,
        fetched=message.fetched,
        needs=None if needs is None else (needs.priority, needs.cpus, needs.memory),
    )
