"""What every job store does (``store.base.JobStore``), checked on each of them.

The ``store`` fixture (conftest.py) is SQLite on a file, then the in-memory
store: both must pass every test here unchanged.
"""

from __future__ import annotations

import asyncio

import pytest

from narwhal.dispatcher.records import TERMINAL
from narwhal.dispatcher.store.base import (
    MAX_STEP_SAMPLES,
    AddEndpoint,
    AppendLog,
    AppendUsage,
    CreateJob,
    CreateJobs,
    DeleteSecret,
    DeleteToken,
    DropLogs,
    JobQuery,
    Moves,
    NewJob,
    PutSecret,
    PutToken,
    RequestCancel,
    SecretRow,
    SetCheckout,
    SetForks,
    SetReasons,
    StepFinished,
    StepStarted,
    TokenRow,
    TouchToken,
    Transition,
)
from narwhal.errors import NotFound, StoreError
from narwhal.runner.usage import Samples
from tests.dispatcher.store.standin import Driven


def _move(
    job_id: int, to: str, reason: str, runner: str | None = None, attempt: int = 1
) -> Transition:
    return Transition(
        job_id=job_id, attempt=attempt, to=to, reason=reason, runner_id=runner, at=5.0
    )


def _new(**fields: object) -> NewJob:
    return NewJob(**{"repo": "/r", "ref": "main", "sha": None, "event": "push"} | fields)  # type: ignore[arg-type]


# jobs and their states


def test_full_lifecycle_is_recorded(store: Driven) -> None:
    job_id = store.job().id
    assert store.one(_move(job_id, "assigned", "a", "r1"))
    assert store.one(_move(job_id, "running", "b"))
    done = store.one(_move(job_id, "success", "c"))
    assert done is not None and done.state == "success" and done.runner_id == "r1"
    assert done.started_at is not None and done.finished_at is not None
    history = store.transitions(job_id)
    assert [(t.state, t.reason) for t in history] == [
        ("queued", "submitted"),
        ("assigned", "a"),
        ("running", "b"),
        ("success", "c"),
    ]
    assert all(t.at > 0 for t in history)
    assert [(t.attempt, t.runner_id) for t in history] == [
        (1, None),
        (1, "r1"),
        (1, "r1"),
        (1, "r1"),
    ]
    assert store.get_job(job_id) == done


def test_requeue_raises_attempt_and_fences_old_frames(store: Driven) -> None:
    job_id = store.job().id
    store.one(_move(job_id, "assigned", "a", "r1"))
    requeued = store.one(_move(job_id, "queued", "runner lost"))
    assert requeued is not None and requeued.attempt == 2 and requeued.runner_id is None
    # A late DONE from attempt 1 changes nothing.
    assert store.one(_move(job_id, "success", "late")) is None
    assert store.get_job(job_id).state == "queued"
    assert store.transitions(job_id)[-1].attempt == 2


def test_terminal_states_are_final(store: Driven) -> None:
    job_id = store.job().id
    assert store.one(_move(job_id, "cancelled", "user"))
    for state in ("queued", "assigned", "running", "success"):
        assert store.one(_move(job_id, state, "x")) is None
    assert store.one(_move(999, "cancelled", "no such job")) is None


def test_move_applies_many_and_says_which_were_fenced(store: Driven) -> None:
    a, b, c = (store.job().id for _ in range(3))
    at = 1_000.0
    applied = store.one(
        Moves(
            moves=[
                (a, 1, "assigned", "to r1", "r1"),
                (b, 1, "assigned", "to r2", "r2"),
                (a, 1, "running", "accepted", "r1"),
                (c, 1, "success", "not assigned yet", "r1"),  # queued -> success: refused
                (b, 2, "running", "old attempt", "r2"),  # wrong attempt: fenced
                (a, 1, "success", "done", "r1"),
            ],
            at=at,
        )
    )
    assert applied == [True, True, True, False, False, True]
    assert [store.get_job(j).state for j in (a, b, c)] == ["success", "assigned", "queued"]
    assert [(t.state, t.runner_id, t.at) for t in store.transitions(a)][1:] == [
        ("assigned", "r1", at),
        ("running", "r1", at),
        ("success", "r1", at),
    ]
    assert [t.state for t in store.transitions(c)] == ["queued"]


def test_records_in_memory_match_the_rows(store: Driven) -> None:
    """``CreateJobs`` and ``JobRecord.moved`` build what reading the row gives."""
    (job,) = store.one(CreateJobs(jobs=[_new(labels={"a": "b"})]))
    assert job == store.get_job(job.id)
    for to, reason in (("assigned", "to r1"), ("running", "accepted"), ("failed", "exit 1")):
        job = job.moved(to, reason, "r1", 2_000.0)
        assert store.one(Moves(moves=[(job.id, 1, to, reason, "r1")], at=2_000.0)) == [True]
        assert job == store.get_job(job.id)


def test_bulk_creation_gives_new_ids_in_order_and_reads_see_them(store: Driven) -> None:
    first = store.job()
    jobs = store.one(CreateJobs(jobs=[_new(ref=f"r{i}") for i in range(1_200)]))
    assert [j.ref for j in jobs] == [f"r{i}" for i in range(1_200)]
    ids = [j.id for j in jobs]
    assert ids == sorted(ids) and len(set(ids)) == 1_200 and ids[0] > first.id
    assert store.get_job(jobs[-1].id) == jobs[-1]
    assert store.get_job(jobs[0].id) == jobs[0]
    assert [(t.state, t.reason) for t in store.transitions(jobs[7].id)] == [("queued", "submitted")]
    assert store.one(CreateJobs(jobs=[])) == []


def test_a_fenced_chain_of_moves_falls_back_to_each_move_alone(store: Driven) -> None:
    job_id = store.job().id
    assert store.one(
        Moves(moves=[(job_id, 1, "assigned", "a", "r1"), (job_id, 1, "running", "b", "r1")], at=1.0)
    )
    # The caller thinks the job is still assigned: running is refused, success is not.
    applied = store.one(
        Moves(moves=[(job_id, 1, "running", "b", "r1"), (job_id, 1, "success", "c", "r1")], at=2.0)
    )
    assert applied == [False, True]
    job = store.get_job(job_id)
    assert (job.state, job.started_at, job.finished_at) == ("success", 1.0, 2.0)
    assert [t.state for t in store.transitions(job_id)] == [
        "queued",
        "assigned",
        "running",
        "success",
    ]


def test_the_fence_includes_the_runner_that_holds_the_job(store: Driven) -> None:
    job_id = store.job().id

    def moves(*batch: tuple[int, int, str, str, str | None], at: float = 2.0) -> list[bool]:
        return store.one(Moves(moves=batch, at=at))  # type: ignore[no-any-return]

    assert moves((job_id, 1, "assigned", "to a", "a"), at=1.0) == [True]
    # Another runner's word moves nothing, in a batch or through a transition.
    assert moves((job_id, 1, "running", "by b", "b")) == [False]
    assert moves((job_id, 1, "running", "x", "b"), (job_id, 1, "success", "y", "b")) == [
        False,
        False,
    ]
    assert store.one(_move(job_id, "failed", "by b", "b")) is None
    assert store.get_job(job_id).state == "assigned"
    # The holder's does; the dispatcher's own moves (no runner) are not fenced by it.
    assert moves((job_id, 1, "running", "by a", "a"), at=3.0) == [True]
    done = store.one(_move(job_id, "success", "by a", "a"))
    assert done is not None and done.state == "success" and done.runner_id == "a"
    other = store.job().id
    moves((other, 1, "assigned", "to a", "a"), at=1.0)
    assert store.one(_move(other, "queued", "a lost")) is not None
    assert [r for r in store.transitions(job_id) if r.runner_id == "b"] == []


def test_a_requeue_in_a_batch_starts_the_next_attempt(store: Driven) -> None:
    job_id = store.job().id
    store.one(Moves(moves=[(job_id, 1, "assigned", "to a", "a")], at=1.0))
    assert store.one(Moves(moves=[(job_id, 1, "queued", "a lost", "a")], at=2.0)) == [True]
    job = store.get_job(job_id)
    assert (job.state, job.attempt, job.runner_id) == ("queued", 2, None)
    assert [(t.attempt, t.state, t.runner_id) for t in store.transitions(job_id)][-1] == (
        2,
        "queued",
        None,
    )


def test_holders_says_which_listed_attempts_a_runner_holds(store: Driven) -> None:
    mine, theirs, over, queued = (store.job().id for _ in range(4))
    store.one(
        Moves(
            moves=[
                (mine, 1, "assigned", "", "a"),
                (theirs, 1, "assigned", "", "b"),
                (over, 1, "assigned", "", "a"),
            ],
            at=1.0,
        )
    )
    store.one(_move(over, "queued", "a lost"))
    listed = [(mine, 1), (mine, 2), (theirs, 1), (over, 1), (over, 2), (queued, 1), (999, 1)]
    assert store.holders("a", listed) == {(mine, 1): "held", (over, 1): "stale"}
    assert store.holders("b", listed) == {(theirs, 1): "held"}
    assert store.holders("a", []) == {}


def test_a_source_key_makes_one_job(store: Driven) -> None:
    first, created = store.one(CreateJob(job=_new(source_key="event-1", fork_of="https://g/x")))
    again, created_again = store.one(CreateJob(job=_new(ref="other", source_key="event-1")))
    assert created and not created_again and again == first and first.fork_of == "https://g/x"
    (a, a_new), (b, b_new) = store.write(
        CreateJob(job=_new(source_key="event-2")), CreateJob(job=_new(source_key="event-2"))
    )
    assert a_new and not b_new and a == b
    assert len(store.list_jobs(JobQuery(limit=None))) == 2


def test_a_new_job_is_queued_at_attempt_one_with_its_fields(store: Driven) -> None:
    job = store.job(sha="abc", labels={"os": "linux"}, matrix={"py": "3.12"}, parent_id=7)
    assert (job.state, job.attempt, job.reason, job.runner_id) == ("queued", 1, "submitted", None)
    assert (job.sha, job.labels, job.matrix, job.parent_id) == (
        "abc",
        {"os": "linux"},
        {"py": "3.12"},
        7,
    )
    assert not job.cancel_requested and job.pipeline is None and job.created_at == job.updated_at
    assert store.get_job(job.id) == job
    with pytest.raises(NotFound):
        store.get_job(999)


def test_the_first_checkout_with_combinations_spawns_them(store: Driven) -> None:
    job_id = store.job().id
    variants = ({"py": "3.11"}, {"py": "3.12"})
    stale = SetCheckout(job_id=job_id, attempt=2, sha="s", pipeline="p", variants=variants)
    assert store.one(stale) is False
    assert store.get_job(job_id).sha is None
    checkout = SetCheckout(job_id=job_id, attempt=1, sha="s1", pipeline="unit", variants=variants)
    assert store.one(checkout) is True
    job = store.get_job(job_id)
    assert (job.sha, job.pipeline, job.matrix) == ("s1", "unit", {"py": "3.11"})
    # Replayed, or again after a requeue: no more spawning; the matrix stays.
    store.one(_move(job_id, "assigned", "to r", "r"))
    assert store.one(_move(job_id, "queued", "again")).attempt == 2
    again = SetCheckout(job_id=job_id, attempt=2, sha="s2", pipeline="", variants=variants[::-1])
    assert store.one(again) is False
    job = store.get_job(job_id)
    assert (job.sha, job.pipeline, job.matrix) == ("s2", "unit", {"py": "3.11"})
    single = store.job().id
    assert not store.one(SetCheckout(job_id=single, attempt=1, sha="s", pipeline="", variants=()))
    assert (store.get_job(single).pipeline, store.get_job(single).matrix) == (None, None)


def test_a_checkout_records_its_cost_and_the_pipelines_needs(store: Driven) -> None:
    asked = store.job(priority=5, cpus=2.0)
    plain = store.job()
    assert (asked.priority, asked.cpus, asked.memory) == (5, 2.0, None)
    assert store.get_job(asked.id) == asked
    for job in (asked, plain):
        checkout = SetCheckout(
            job_id=job.id,
            attempt=1,
            sha="s",
            pipeline="unit",
            checkout=1.5,
            cold=True,
            fetched=4096,
            needs=(7, None, 1 << 30),
        )
        store.one(checkout)
    # The API's priority and cpus stay; what the pipeline sets is taken.
    got = store.get_job(asked.id)
    assert (got.priority, got.cpus, got.memory) == (5, 2.0, 1 << 30)
    assert (got.checkout, got.cold, got.fetched) == (1.5, True, 4096)
    got = store.get_job(plain.id)
    assert (got.priority, got.cpus, got.memory) == (7, None, 1 << 30)
    # A checkout that says nothing of its cost or needs changes neither.
    store.one(SetCheckout(job_id=plain.id, attempt=1, sha="s", pipeline="unit"))
    assert store.get_job(plain.id) == got


def test_cancel_requests_and_reasons_change_no_state(store: Driven) -> None:
    a, b = store.job().id, store.job().id
    store.one(_move(b, "assigned", "to r", "r"))
    store.write(RequestCancel(job_id=a), RequestCancel(job_id=999))
    assert store.get_job(a).cancel_requested and not store.get_job(b).cancel_requested
    store.one(SetReasons(reasons=[(a, 1, "no runner"), (b, 1, "late"), (a, 2, "stale")]))
    assert store.get_job(a).reason == "no runner" and store.get_job(a).state == "queued"
    assert store.get_job(b).reason == "to r"
    assert [t.reason for t in store.transitions(a)] == ["submitted"]


def test_listing(store: Driven) -> None:
    a, b = store.job().id, store.job(repo="/other").id
    assert [j.id for j in store.list_jobs(JobQuery())] == [b, a]
    assert [j.id for j in store.list_jobs(JobQuery(repo="/other"))] == [b]
    assert [j.id for j in store.list_jobs(JobQuery(states=("queued",), before=b))] == [a]
    child = store.job(parent_id=a).id
    store.one(_move(child, "cancelled", "x"))
    assert [j.id for j in store.list_jobs(JobQuery())] == [child, b, a]
    assert [j.id for j in store.list_jobs(JobQuery(parent=a))] == [child]
    assert [j.id for j in store.list_jobs(JobQuery(limit=2, ascending=True))] == [a, b]
    assert [j.id for j in store.list_jobs(JobQuery(limit=None, states=tuple(TERMINAL)))] == [child]


def test_listing_by_ref_and_runner(store: Driven) -> None:
    main, dev, short = store.job().id, store.job(ref="refs/heads/dev").id, store.job(ref="dev").id
    assert [j.id for j in store.list_jobs(JobQuery(refs=("refs/heads/dev",)))] == [dev]
    assert [j.id for j in store.list_jobs(JobQuery(refs=("dev", "refs/heads/dev")))] == [short, dev]
    assert store.list_jobs(JobQuery(refs=("refs/heads/nope",))) == []
    store.one(_move(main, "assigned", "to r1", "r1"))
    store.one(_move(dev, "assigned", "to r2", "r2"))
    store.one(_move(dev, "running", "started"))
    assert [j.id for j in store.list_jobs(JobQuery(runner="r1"))] == [main]
    assert [j.id for j in store.list_jobs(JobQuery(runner="r2", refs=("refs/heads/dev",)))] == [dev]
    assert store.list_jobs(JobQuery(runner="r1", states=("running",))) == []
    assert store.list_jobs(JobQuery(runner="r3")) == []


def test_find_active_is_the_oldest_unfinished_job_of_a_commit(store: Driven) -> None:
    done = store.job(sha="abc").id
    store.one(_move(done, "cancelled", "x"))
    assert store.find_active(repo="/r", sha="abc", event="push") is None
    first, second = store.job(sha="abc").id, store.job(sha="abc").id
    store.one(_move(first, "assigned", "to r", "r"))
    found = store.find_active(repo="/r", sha="abc", event="push")
    assert found is not None and found.id == first and second > first
    assert store.find_active(repo="/r", sha="abc", event="pull_request") is None


# steps and logs


def test_logs_are_chunked_ordered_and_idempotent(store: Driven) -> None:
    job_id = store.job().id
    store.write(
        AppendLog(job_id=job_id, attempt=1, seq=1, data=b"second"),
        AppendLog(job_id=job_id, attempt=1, seq=0, data=b"first"),
        AppendLog(job_id=job_id, attempt=1, seq=0, data=b"duplicate"),
    )
    store.one(AppendLog(job_id=job_id, attempt=2, seq=0, data=b"other attempt"))
    assert store.read_log(job_id, 1) == [(0, b"first"), (1, b"second")]
    assert store.read_log(job_id, 1, after=0) == [(1, b"second")]
    assert store.read_log(job_id, 2) == [(0, b"other attempt")]
    assert store.read_log(job_id, 3) == []


def test_dropped_logs_read_as_one_line_and_are_not_weighed_again(store: Driven) -> None:
    kept, dropped = store.job().id, store.job().id
    for job_id in (kept, dropped):
        store.write(
            *(
                AppendLog(job_id=job_id, attempt=a, seq=n, data=b"x" * 300)
                for a in (1, 2)
                for n in (0, 1)
            )
        )
        store.one(Transition(job_id=job_id, attempt=1, to="cancelled", reason="done", at=1.0))
    weighed = {f.job_id: f.stored for f in store.log_footprints()}
    assert set(weighed) == {kept, dropped}
    # 2026-12-02: the day the marker names.
    freed = store.one(DropLogs(job_ids=[dropped, 10**9], at=1_796_220_000.0))
    assert freed == weighed[dropped]
    (line,) = store.read_log(dropped, 1)
    assert line == (
        0,
        b"narwhal: this log was deleted by the log retention policy on 2026-12-02"
        b" (the job, its steps and history are kept)\n",
    )
    assert store.read_log(dropped, 2) == []
    assert [f.job_id for f in store.log_footprints()] == [kept]
    assert store.one(DropLogs(job_ids=[dropped], at=1_796_220_000.0)) == 0
    assert len(store.read_log(kept, 1)) == 2


def test_steps(store: Driven) -> None:
    a = store.job().id
    store.one(StepStarted(job_id=a, attempt=1, index=0, name="build", at=3.0))
    store.one(
        StepFinished(
            job_id=a, attempt=1, index=0, name="build", status="failed", exit_code=2, duration=0.25
        )
    )
    (step,) = store.steps(a, 1)
    assert (step.name, step.status, step.exit_code, step.duration) == ("build", "failed", 2, 0.25)
    assert step.started_at is not None
    # Started again (a replayed frame): it starts afresh.
    store.one(StepStarted(job_id=a, attempt=1, index=0, name="build", at=4.0))
    (step,) = store.steps(a, 1)
    assert (step.status, step.exit_code, step.started_at, step.duration) == (
        "running",
        None,
        4.0,
        None,
    )
    # Finished without a start (the frame was lost): a row all the same.
    store.one(
        StepFinished(
            job_id=a, attempt=1, index=1, name="test", status="success", exit_code=0, duration=1.0
        )
    )
    assert [(s.index, s.name, s.started_at) for s in store.steps(a, 1)] == [
        (0, "build", 4.0),
        (1, "test", None),
    ]
    assert store.steps(a, 2) == []


def _usage(
    job_id: int, seq: int, samples: list[tuple[float, float, int]], **fields: object
) -> AppendUsage:
    base: dict[str, object] = {"attempt": 1, "index": 0, "memory_limit": 64 << 20}
    return AppendUsage(job_id=job_id, seq=seq, samples=tuple(samples), **(base | fields))  # type: ignore[arg-type]


def test_usage_is_appended_per_step_and_a_resent_frame_adds_nothing(store: Driven) -> None:
    a = store.job().id
    assert store.usage(a, 1) == {}
    store.write(
        _usage(a, 3, [(0.5, 1.5, 100), (1.5, 0.25, 300)]),
        _usage(a, 4, [(2.5, 0.5, 200)]),
        _usage(a, 4, [(2.5, 9.0, 9999)]),  # resent after a reconnect
        _usage(a, 2, [(0.1, 9.0, 9999)]),  # an older frame, replayed
        _usage(a, 6, [(0.5, 0.1, 50)], index=1, memory_limit=None),
        _usage(a, 7, [(0.5, 0.1, 50)], attempt=2),
    )
    steps = store.usage(a, 1)
    assert sorted(steps) == [0, 1]
    first = steps[0]
    assert first.samples == ((0.5, 1.5, 100), (1.5, 0.25, 300), (2.5, 0.5, 200))
    assert (first.peak_memory, first.peak_cpu, first.memory_limit) == (300, 1.5, 64 << 20)
    assert first.to_json() == {
        "samples": [[0.5, 1.5, 100], [1.5, 0.25, 300], [2.5, 0.5, 200]],
        "peak_memory": 300,
        "peak_cpu": 1.5,
        "memory_limit": 64 << 20,
    }
    assert steps[1].memory_limit is None and steps[1].samples == ((0.5, 0.1, 50),)
    assert list(store.usage(a, 2)) == [0] and store.usage(a, 3) == {}
    # A frame without a limit keeps the one known.
    store.one(_usage(a, 8, [(3.5, 0.0, 10)], memory_limit=None))
    assert store.usage(a, 1)[0].memory_limit == 64 << 20


def test_a_long_step_keeps_its_samples_thinned_evenly_and_its_peaks(store: Driven) -> None:
    a = store.job().id
    runner = Samples(interval=1.0)  # the runner's side: drops every other, doubles its interval
    at, seq = 0.0, 0
    for i in range(4 * MAX_STEP_SAMPLES):
        at += runner.interval
        # The peak is in a sample that thinning drops later.
        runner.add((at, 4.0 if i == 1 else 1.0, 7000 if i == 1 else i))
        if i % 5 == 4:  # a USAGE frame every 5 samples
            new = runner.unsent()
            store.one(_usage(a, seq, list(new)))
            runner.mark_sent(len(new))
            seq += 1
    record = store.usage(a, 1)[0]
    times = [t for t, _, _ in record.samples]
    assert MAX_STEP_SAMPLES // 2 <= len(times) <= MAX_STEP_SAMPLES
    # Up to the end (the runner may have thinned its latest sample out before sending it).
    assert times == sorted(times) and at - times[-1] <= runner.interval
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert max(gaps) <= 2 * min(gaps), (min(gaps), max(gaps))  # evenly spread over the step
    assert 2.0 not in times  # the peak's own sample went; the peak stayed
    assert (record.peak_memory, record.peak_cpu) == (7000, 4.0)


# units of work


def test_a_failed_unit_writes_nothing(store: Driven) -> None:
    token = TokenRow(name="a", digest="d", scope="read", created_at=1.0)
    store.one(PutToken(token=token))
    job = store.job()
    with pytest.raises(StoreError):
        store.write(
            CreateJob(job=_new(ref="lost")),
            _move(job.id, "assigned", "to r", "r"),
            AppendLog(job_id=job.id, attempt=1, seq=0, data=b"lost"),
            AddEndpoint(url="tcp://lost:1", at=1.0),
            # Another token with the same digest: refused by every store.
            PutToken(token=TokenRow(name="b", digest="d", scope="read", created_at=1.0)),
        )
    assert store.list_jobs(JobQuery()) == [job]
    assert store.get_job(job.id) == job and len(store.transitions(job.id)) == 1
    assert store.read_log(job.id, 1) == [] and store.endpoints() == []
    assert store.tokens() == [token]
    assert store.job().id > job.id  # the store still takes writes


def test_results_come_one_per_write_in_order(store: Driven) -> None:
    job = store.job()
    results = store.write(
        AppendLog(job_id=job.id, attempt=1, seq=0, data=b"x"),
        Moves(moves=[(job.id, 1, "assigned", "to r", "r")], at=1.0),
        _move(job.id, "running", "accepted", "r"),
        CreateJobs(jobs=[_new()]),
    )
    assert results[0] is None and results[1] == [True]
    assert results[2].state == "running" and [j.state for j in results[3]] == ["queued"]


# side tables


def test_endpoints_are_kept_once_in_the_order_added(store: Driven) -> None:
    store.write(AddEndpoint(url="tcp://b:1", at=1.0), AddEndpoint(url="tcp://a:1", at=2.0))
    store.one(AddEndpoint(url="tcp://b:1", at=3.0))
    assert store.endpoints() == ["tcp://b:1", "tcp://a:1"]


def test_tokens_are_put_touched_and_deleted(store: Driven) -> None:
    row = TokenRow(name="ci", digest="d1", scope="read", created_at=1.0)
    store.write(PutToken(token=row), TouchToken(name="ci", at=5.0), TouchToken(name="none", at=5.0))
    assert store.tokens() == [
        TokenRow(name="ci", digest="d1", scope="read", created_at=1.0, last_used=5.0)
    ]
    replaced = TokenRow(name="ci", digest="d2", scope="admin", created_at=2.0)
    store.one(PutToken(token=replaced))
    assert store.tokens() == [replaced]
    store.write(DeleteToken(name="ci"), DeleteToken(name="none"))
    assert store.tokens() == []


def test_secrets_and_fork_policies(store: Driven) -> None:
    def row(value: bytes, at: float) -> SecretRow:
        return SecretRow(
            repo="https://g/o/r",
            name="API",
            key_version=1,
            nonce=b"n" * 12,
            ciphertext=value,
            created_at=at,
            updated_at=at,
        )

    store.one(PutSecret(secret=row(b"one", 1.0)))
    store.one(PutSecret(secret=row(b"two", 2.0)))
    (kept,) = store.secrets()
    assert (kept.ciphertext, kept.created_at, kept.updated_at) == (b"two", 1.0, 2.0)
    assert isinstance(kept.nonce, bytes) and kept.key_version == 1
    store.one(DeleteSecret(repo="https://g/o/r", name="API"))
    assert store.secrets() == []
    store.write(SetForks(repo="a", allowed=True, at=1.0), SetForks(repo="b", allowed=True, at=1.0))
    store.one(SetForks(repo="b", allowed=False, at=2.0))
    assert store.fork_repos() == {"a"}


def test_housekeeping_runs_until_cancelled(store: Driven) -> None:
    async def scenario() -> bool:
        task = asyncio.ensure_future(store.store.maintain())
        await asyncio.sleep(0.05)
        running = not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return running

    assert store.runner.run(scenario())
