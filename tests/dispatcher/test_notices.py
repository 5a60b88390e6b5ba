"""The standbys' notices: only ``job <id>`` is taken from the database's NOTIFY payloads."""

from __future__ import annotations

import pytest

from narwhal.dispatcher.notices import job_of, notice


@pytest.mark.parametrize("job_id", [1, 42, 10**17])
def test_a_notice_says_its_job(job_id: int) -> None:
    assert job_of(notice(job_id)) == job_id


@pytest.mark.parametrize(
    "payload",
    [
        "",
        "job",
        "job ",
        "job 0",
        "job 01",
        "job -1",
        "job 1 ",
        " job 1",
        "job 1\n",
        "JOB 1",
        "job 1e3",
        "job ١",  # a digit, but not an ASCII one
        "job 1; job 2",
        "job " + "9" * 19,
        "cancel 1",
        "x" * 8000,
    ],
)
def test_anything_else_is_refused(payload: str) -> None:
    assert job_of(payload) is None
