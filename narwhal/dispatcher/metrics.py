"""The dispatcher's Prometheus metrics, served as ``GET /metrics`` (text format 0.0.4).

Counters and histograms are fed by the dispatcher's ``Feed`` (each job's
moves and checkouts, as committed); gauges are read at scrape time from
what already holds them (the job table's queue and active jobs, the
pending explanations, the mesh's links, runners' reports and counters:
``metrics_runners``), so nothing has to be kept in step with them.

Every metric, with its type, labels and HELP text (a test holds this list
to what ``/metrics`` serves):

- ``narwhal_up`` gauge: 1 while this daemon serves.
- ``narwhal_build_info{version}`` gauge: Always 1; the version running.
- ``narwhal_jobs_total{state}`` counter (``{state,repo}`` with ``--metrics-per-repo``):
  Jobs that ended, by terminal state.
- ``narwhal_jobs_queued`` gauge: Jobs waiting in the queue.
- ``narwhal_jobs_running`` gauge: Jobs a runner holds (assigned or running).
- ``narwhal_jobs_pending{reason}`` gauge: Queued jobs by why they wait (the dispatcher
  looks about once a second; a job queued since is in none yet).
- ``narwhal_job_queue_duration_seconds`` histogram: Seconds from queued (or requeued)
  to running.
- ``narwhal_job_duration_seconds`` histogram: Seconds from running to ended.
- ``narwhal_dispatch_latency_seconds`` histogram: Seconds from a job's assignment (its
  JOB frame sent) to its runner's ACCEPT.
- ``narwhal_job_checkout_seconds{cold}`` histogram: Seconds a job's checkout took, cold
  (a clone) or not (from the runner's mirror).
- ``narwhal_runners{state}`` gauge: Runner links by state.
- ``narwhal_runner_slots{runner}`` gauge: Slots each ready runner offers.
- ``narwhal_runner_slots_busy{runner}`` gauge: Slots of each ready runner that hold a job.
- ``narwhal_runner_load{runner}`` gauge: One-minute load average each ready runner reports.
  This and the next three: runners that report their state only.
- ``narwhal_runner_memory_available_bytes{runner}`` gauge: Memory each ready runner reports
  available.
- ``narwhal_runner_disk_free_bytes{runner}`` gauge: Bytes free in each ready runner's work
  folder, as it reports.
- ``narwhal_runner_warm_repositories{runner}`` gauge: Repositories in each ready runner's
  mirror cache, as it reports.
- ``narwhal_runner_quarantined{runner}`` gauge: 1 while a ready runner is quarantined for
  its own faults (its probe job included), else 0.
- ``narwhal_bad_frames_total`` counter: Frames from runners refused: malformed,
  oversized, unknown, or out of place.
- ``narwhal_commit_statuses_total{forge,result}`` counter: Commit status posts to
  forges: sent, or failed (refused or given up after retries).
- ``narwhal_webhooks_total{forge,answer}`` counter: Webhook deliveries answered, by
  forge and HTTP status code. Counted by the agent's handlers (``narwhal.agent.app``):
  in ``narwhal up``'s ``/metrics``, and on ``narwhal agent``'s own ``GET /metrics``.
- ``narwhal_feed_messages_total`` counter: Messages the metrics feed published. Served
  with ``--metrics`` only, as the next three.
- ``narwhal_feed_snapshots_total`` counter: Snapshots the metrics feed served to subscribers.
- ``narwhal_feed_bad_requests_total`` counter: Requests on the feed's snapshot socket that
  were not snapshot requests.
- ``narwhal_feed_dropped_total`` counter: Feed messages and snapshot replies that could not
  be sent. (A PUB drops at a subscriber's high-water mark without telling: those gaps
  are counted by the subscriber.)

Labels stay bounded: ``state`` is one of the terminal states, ``reason``
one of ``placement.REASONS`` (every one shown, 0 included: ``no_runner``,
``label``, ``platform``, ``resources``, ``disk``, ``quarantined``, ``full``,
``held``; ``dispatcher.waiting`` says why a job waits, about once a
second), ``cold`` ``true`` or ``false``, ``answer`` a status code the
webhook handlers produce, ``runner`` a connected runner's id. ``repo``
(the repository URL, credentials removed) only with ``--metrics-per-repo``,
at most ``MAX_REPOS`` of them (later ones count as ``repo="other"``).

A job's checkout is observed once per checkout, when its record first
says what it cost (the ``JobUpdated`` of its CHECKED_OUT, or its end when
both came in one batch).

A job's queue wait runs from the time its record says it was queued (its
creation, or its requeue: a requeued job's wait starts again there) to the
time it is recorded running; a job that was already queued when the
dispatcher started counts from its creation on its first attempt, and not
at all on a later one (its requeue time is not known).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from narwhal import __version__
from narwhal.dispatcher.core import Dispatcher
from narwhal.dispatcher.feed import Event, JobChanged, JobUpdated
from narwhal.dispatcher.metrics_runners import RunnerMetrics
from narwhal.dispatcher.publisher import Publisher
from narwhal.dispatcher.records import TERMINAL, JobRecord, JobState
from narwhal.metrics import CounterChild, HistogramChild, Registry, Sample
from narwhal.redact import redacted

#: Seconds; a CI job waits milliseconds on an idle installation, hours on a busy one.
QUEUE_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200)
#: Seconds; from a no-op job to a long integration suite.
DURATION_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400)
#: Seconds; a JOB frame's way to the runner and its ACCEPT back.
DISPATCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
#: Seconds; a fetch into a warm mirror of a small repository to a cold clone of a big one.
CHECKOUT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
#: Repositories given a label of their own with ``per_repo``.
MAX_REPOS = 500
#: How many remembered start times beyond the jobs in memory before they are pruned.
_SLACK = 1000

# Plain strings: comparing with an enum member (looked up on its class) costs
# several times more, on the path every job move takes.
_QUEUED, _ASSIGNED, _RUNNING = (
    JobState.QUEUED.value,
    JobState.ASSIGNED.value,
    JobState.RUNNING.value,
)


#: The publisher's counters: name, its attribute, HELP.
_FEED_COUNTERS = (
    ("narwhal_feed_messages_total", "published", "Messages the metrics feed published."),
    (
        "narwhal_feed_snapshots_total",
        "snapshots",
        "Snapshots the metrics feed served to subscribers.",
    ),
    (
        "narwhal_feed_bad_requests_total",
        "bad_requests",
        "Requests on the feed's snapshot socket that were not snapshot requests.",
    ),
    (
        "narwhal_feed_dropped_total",
        "dropped",
        "Feed messages and snapshot replies that could not be sent.",
    ),
)


def _reader(publisher: Publisher, attribute: str) -> Callable[[], Iterable[Sample]]:
    def read() -> Iterable[Sample]:
        return [((), getattr(publisher, attribute))]

    return read


class DispatcherMetrics:
    """One dispatcher's metrics: a ``Feed`` consumer and the scrape-time readers."""

    def __init__(
        self, dispatcher: Dispatcher, *, per_repo: bool, max_repos: int = MAX_REPOS
    ) -> None:
        self.registry = Registry()
        self._dispatcher = dispatcher
        self._per_repo = per_repo
        self._max_repos = max_repos
        #: When each requeued job was requeued, and each assigned job assigned.
        self._requeued_at: dict[int, float] = {}
        self._assigned_at: dict[int, float] = {}
        #: The checkout seconds last observed of each live job (each checkout once).
        self._checked_out: dict[int, float] = {}
        self.registry.daemon_info(__version__)
        self._add_job_metrics()
        RunnerMetrics(dispatcher).register(self.registry)
        statuses = self.registry.counter(
            "narwhal_commit_statuses_total",
            "Commit status posts to forges: sent, or failed (refused or given up after retries).",
            ["forge", "result"],
        )
        self._statuses = statuses
        self._unsubscribe = dispatcher.feed.subscribe(self.on_event)

    def close(self) -> None:
        """Stop hearing the feed (the scrape-time values still read the dispatcher)."""
        self._unsubscribe()

    def _add_job_metrics(self) -> None:
        r = self.registry
        labels = ["state", "repo"] if self._per_repo else ["state"]
        self._jobs = r.counter("narwhal_jobs_total", "Jobs that ended, by terminal state.", labels)
        #: The hot path's children: by state, or by repository URL then state.
        self._ended: dict[str, CounterChild] = {}
        self._ended_in: dict[str, dict[str, CounterChild]] = {}
        if not self._per_repo:
            self._ended = {state: self._jobs.labels(state) for state in sorted(TERMINAL)}
        r.collected("narwhal_jobs_queued", "Jobs waiting in the queue.", self._queued)
        r.collected(
            "narwhal_jobs_running", "Jobs a runner holds (assigned or running).", self._running
        )
        r.collected(
            "narwhal_jobs_pending",
            "Queued jobs by why they wait (the dispatcher looks about once a second;"
            " a job queued since is in none yet).",
            self._pending,
            labels=["reason"],
        )
        self._waited = r.histogram(
            "narwhal_job_queue_duration_seconds",
            "Seconds from queued (or requeued) to running.",
            QUEUE_BUCKETS,
        ).labels()
        self._ran = r.histogram(
            "narwhal_job_duration_seconds", "Seconds from running to ended.", DURATION_BUCKETS
        ).labels()
        self._dispatched = r.histogram(
            "narwhal_dispatch_latency_seconds",
            "Seconds from a job's assignment (its JOB frame sent) to its runner's ACCEPT.",
            DISPATCH_BUCKETS,
        ).labels()
        checkouts = r.histogram(
            "narwhal_job_checkout_seconds",
            "Seconds a job's checkout took, cold (a clone) or not (from the runner's mirror).",
            CHECKOUT_BUCKETS,
            ["cold"],
        )
        self._checkouts: dict[bool, HistogramChild] = {
            cold: checkouts.labels("true" if cold else "false") for cold in (False, True)
        }

    def watch_feed(self, publisher: Publisher) -> None:
        """Serve the metrics feed's counters too (``--metrics``)."""
        for name, attribute, help_text in _FEED_COUNTERS:
            self.registry.collected(name, help_text, _reader(publisher, attribute), kind="counter")

    # what the feed says

    def on_event(self, event: Event) -> None:
        """The ``Feed`` consumer: only job moves count, each for a dict operation or two.

        A job's first attempt waits from its creation, which its record
        says; only a requeue's time and an assignment's are kept until the
        job runs (``bench/metrics_cost.py`` has the cost per event).
        """
        if type(event) is JobUpdated:
            if event.job is not None and event.job.checkout is not None:
                self._checked(event.job)
            return
        if type(event) is not JobChanged:
            return
        job = event.job
        state = job.state
        if state == _ASSIGNED:
            self._assigned_at[job.id] = job.updated_at
        elif state == _RUNNING:
            self._started(job)
        elif state == _QUEUED:
            if event.before is not None:  # requeued: its wait starts again now
                self._requeued_at[job.id] = job.updated_at
                self._assigned_at.pop(job.id, None)
        else:
            self._ended_job(job, event.before)

    def _started(self, job: JobRecord) -> None:
        started = job.started_at or job.updated_at
        assigned = self._assigned_at.pop(job.id, None)
        if assigned is not None:
            latency = started - assigned
            self._dispatched.observe(latency if latency > 0 else 0.0)
        if job.attempt == 1:
            queued: float | None = job.created_at
        else:  # unknown if it was requeued before this dispatcher started
            queued = self._requeued_at.pop(job.id, None)
        if queued is not None:
            wait = started - queued
            self._waited.observe(wait if wait > 0 else 0.0)

    def _checked(self, job: JobRecord) -> None:
        """A record that says what a checkout cost: observed unless it was already."""
        seconds = job.checkout
        if seconds is not None and self._checked_out.get(job.id) != seconds:
            self._checked_out[job.id] = seconds
            self._checkouts[bool(job.cold)].observe(seconds if seconds > 0 else 0.0)

    def _ended_job(self, job: JobRecord, before: str | None) -> None:
        if job.checkout is not None:
            self._checked(job)  # its CHECKED_OUT came with its DONE
        if self._checked_out:
            self._checked_out.pop(job.id, None)
        if before != _RUNNING:  # the start took them already
            self._assigned_at.pop(job.id, None)
            if self._requeued_at:
                self._requeued_at.pop(job.id, None)
        if self._per_repo:
            by_state = self._ended_in.get(job.repo)
            child = (by_state and by_state.get(job.state)) or self._repo_child(job)
        else:
            child = self._ended.get(job.state) or self._jobs.labels(job.state)
        child.inc()
        if before == _RUNNING and job.started_at is not None and job.finished_at:
            ran = job.finished_at - job.started_at
            self._ran.observe(ran if ran > 0 else 0.0)

    def _repo_child(self, job: JobRecord) -> CounterChild:
        """The first end of a (repository, state): its child, labelled without credentials."""
        by_state = self._ended_in.get(job.repo)
        if by_state is None:
            known = len(self._ended_in) < self._max_repos
            by_state = self._ended_in.setdefault(job.repo if known else "", {})
        label = redacted(job.repo) if job.repo in self._ended_in else "other"
        child = by_state[job.state] = self._jobs.labels(job.state, label)
        return child

    def status_result(self, forge: str, result: str) -> None:
        """The status reporter's hook: one post ``sent`` or ``failed`` to ``forge``."""
        self._statuses.labels(forge, result).inc()

    # what a scrape reads

    def _queued(self) -> Iterable[Sample]:
        jobs = self._dispatcher.jobs
        self._prune(len(jobs.queue) + len(jobs.active))
        return [((), len(jobs.queue))]

    def _running(self) -> Iterable[Sample]:
        return [((), len(self._dispatcher.jobs.active))]

    def _pending(self) -> Iterable[Sample]:
        return [((reason,), n) for reason, n in self._dispatcher.pending_counts().items()]

    def _prune(self, live: int) -> None:
        """Forget what is kept of jobs memory no longer holds (dropped without an end heard)."""
        kept = len(self._requeued_at) + len(self._assigned_at) + len(self._checked_out)
        if kept <= live + _SLACK:
            return
        jobs = self._dispatcher.jobs
        self._requeued_at = {k: v for k, v in self._requeued_at.items() if k in jobs.queue}
        self._assigned_at = {k: v for k, v in self._assigned_at.items() if k in jobs.active}
        self._checked_out = {
            k: v for k, v in self._checked_out.items() if k in jobs.active or k in jobs.queue
        }
