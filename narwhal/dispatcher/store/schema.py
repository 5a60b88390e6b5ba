"""How the SQLite job store's rows become records (the tables: ``migrations``)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping

from narwhal.dispatcher.records import JobRecord

JOB_COLUMNS = (
    "id, repo, ref, sha, event, labels, matrix, parent_id, pipeline, state, reason,"
    " attempt, runner_id, cancel_requested, created_at, updated_at, started_at,"
    " finished_at, fork_of, priority, cpus, memory, checkout_seconds, checkout_cold,"
    " checkout_bytes"
)


def json_text(mapping: Mapping[str, str]) -> str:
    # The common case, no labels, without the JSON encoder (hot path).
    return json.dumps(dict(mapping)) if mapping else "{}"


def json_map(text: str | None) -> dict[str, str] | None:
    if text is None:
        return None
    # Most jobs have no labels: skip the JSON parser for them (hot path).
    return {} if text == "{}" else dict(json.loads(text))


def job_record(row: sqlite3.Row) -> JobRecord:
    """A row selected with ``JOB_COLUMNS``, in that order, as a record."""
    return JobRecord(
        id=row[0],
        repo=row[1],
        ref=row[2],
        sha=row[3],
        event=row[4],
        labels=json_map(row[5]) or {},
        matrix=json_map(row[6]),
        parent_id=row[7],
        pipeline=row[8],
        state=row[9],
        reason=row[10],
        attempt=row[11],
        runner_id=row[12],
        cancel_requested=bool(row[13]),
        created_at=row[14],
        updated_at=row[15],
        started_at=row[16],
        finished_at=row[17],
        fork_of=row[18],
        priority=row[19],
        cpus=row[20],
        memory=row[21],
        checkout=row[22],
        cold=None if row[23] is None else bool(row[23]),
        fetched=row[24],
    )
