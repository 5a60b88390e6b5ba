"""The SQL of steps' CPU and memory samples: one row per step of an attempt.

A step's samples are one JSON array in its row, with the peaks beside it:
a USAGE frame reads the row, appends (thinning past ``MAX_STEP_SAMPLES``,
``UsageRecord.appended``) and writes it back, a few times a minute per
running step; a job's page reads the rows of one attempt.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import Any

from narwhal.dispatcher.store.base import AppendUsage, UsageRecord, UsageSample


def append_usage(db: sqlite3.Connection, write: AppendUsage) -> None:
    key = (write.job_id, write.attempt, write.index)
    row = db.execute(
        "SELECT samples, peak_memory, peak_cpu, memory_limit, seq FROM usage"
        " WHERE job_id = ? AND attempt = ? AND idx = ?",
        key,
    ).fetchone()
    record = UsageRecord.appended(_record(row) if row is not None else None, write)
    if record is None:  # resent after a reconnect: taken already
        return
    db.execute(
        "INSERT INTO usage (job_id, attempt, idx, seq, samples, peak_memory, peak_cpu,"
        " memory_limit) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (job_id, attempt, idx)"
        " DO UPDATE SET seq = excluded.seq, samples = excluded.samples,"
        " peak_memory = excluded.peak_memory, peak_cpu = excluded.peak_cpu,"
        " memory_limit = excluded.memory_limit",
        (
            *key,
            record.seq,
            json.dumps(record.samples, separators=(",", ":")),
            record.peak_memory,
            record.peak_cpu,
            record.memory_limit,
        ),
    )


def usage(db: sqlite3.Connection, job_id: int, attempt: int) -> dict[int, UsageRecord]:
    rows = db.execute(
        "SELECT idx, samples, peak_memory, peak_cpu, memory_limit, seq FROM usage"
        " WHERE job_id = ? AND attempt = ?",
        (job_id, attempt),
    ).fetchall()
    return {row[0]: _record(row[1:]) for row in rows}


def _record(row: Sequence[Any]) -> UsageRecord:
    samples: tuple[UsageSample, ...] = tuple(
        (float(t), float(cpu), int(memory)) for t, cpu, memory in json.loads(row[0])
    )
    return UsageRecord(
        samples=samples,
        peak_memory=row[1],
        peak_cpu=row[2],
        memory_limit=row[3],
        seq=row[4],
    )
