"""The exposition library: text format 0.0.4, escaping, histogram buckets, collect-time values.

The rendering tests compare whole texts; ``test_promtool_*`` (integration
tier: it runs a process) hands the trickiest output to Prometheus' own
parser and linter, so the escaping is checked by the reader that matters.
"""

from __future__ import annotations

import logging
import math
import shutil
import subprocess

import pytest

from narwhal.metrics import (
    CONTENT_TYPE,
    Collected,
    Counter,
    Gauge,
    Histogram,
    Registry,
    Sample,
    escape_help,
    escape_label,
    format_value,
)


def test_counter_gauge_and_help_render_in_registration_order() -> None:
    registry = Registry()
    jobs = registry.counter("narwhal_jobs_total", "Jobs that ended.", ["state"])
    up = registry.gauge("narwhal_up", "1 while serving.")
    jobs.labels("success").inc()
    jobs.labels("success").inc(2)
    jobs.labels("failed").inc()
    up.set(1)
    assert registry.render() == (
        "# HELP narwhal_jobs_total Jobs that ended.\n"
        "# TYPE narwhal_jobs_total counter\n"
        'narwhal_jobs_total{state="success"} 3\n'
        'narwhal_jobs_total{state="failed"} 1\n'
        "# HELP narwhal_up 1 while serving.\n"
        "# TYPE narwhal_up gauge\n"
        "narwhal_up 1\n"
    )


def test_a_labelled_metric_without_samples_still_says_what_it_is() -> None:
    registry = Registry()
    registry.counter("narwhal_webhooks_total", "Deliveries.", ["forge", "answer"])
    assert registry.render() == (
        "# HELP narwhal_webhooks_total Deliveries.\n# TYPE narwhal_webhooks_total counter\n"
    )


def test_label_values_escape_backslash_quote_and_newline() -> None:
    assert escape_label('a\\b"c\nd') == 'a\\\\b\\"c\\nd'
    registry = Registry()
    registry.counter("x_total", "X.", ["repo"]).labels('C:\\dir "q"\nnext').inc()
    assert 'x_total{repo="C:\\\\dir \\"q\\"\\nnext"} 1\n' in registry.render()


def test_help_escapes_backslash_and_newline_but_not_quotes() -> None:
    assert escape_help('one\\two\n"three"') == 'one\\\\two\\n"three"'
    registry = Registry()
    registry.gauge("g", 'line\nnext "quoted" \\')
    assert registry.render().splitlines()[0] == '# HELP g line\\nnext "quoted" \\\\'


def test_values_are_integers_floats_and_infinities() -> None:
    assert [format_value(v) for v in (0, 3, 2.5, 1e-05, -0.25)] == [
        "0",
        "3",
        "2.5",
        "1e-05",
        "-0.25",
    ]
    assert format_value(math.inf) == "+Inf"
    assert format_value(-math.inf) == "-Inf"
    assert format_value(math.nan) == "NaN"


def test_histogram_buckets_are_cumulative_and_bounds_are_inclusive() -> None:
    registry = Registry()
    wait = registry.histogram("narwhal_wait_seconds", "Wait.", [0.1, 1, 10])
    for value in (0.05, 0.1, 0.5, 1.0, 3, 10, 11, 1000):
        wait.observe(value)
    assert registry.render().splitlines()[2:] == [
        'narwhal_wait_seconds_bucket{le="0.1"} 2',  # 0.05 and 0.1 (le: less or equal)
        'narwhal_wait_seconds_bucket{le="1.0"} 4',
        'narwhal_wait_seconds_bucket{le="10.0"} 6',
        'narwhal_wait_seconds_bucket{le="+Inf"} 8',
        "narwhal_wait_seconds_sum 1025.65",
        "narwhal_wait_seconds_count 8",
    ]


def test_a_fresh_histogram_shows_every_bucket_at_zero() -> None:
    registry = Registry()
    registry.histogram("h_seconds", "H.", [1])
    assert registry.render().splitlines()[2:] == [
        'h_seconds_bucket{le="1.0"} 0',
        'h_seconds_bucket{le="+Inf"} 0',
        "h_seconds_sum 0.0",
        "h_seconds_count 0",
    ]


def test_histogram_with_labels_puts_le_last_and_keeps_its_children_apart() -> None:
    registry = Registry()
    latency = registry.histogram("lat_seconds", "L.", [0.5, math.inf], labels=["forge"])
    latency.labels("github").observe(0.2)
    latency.labels("gitea").observe(0.7)
    latency.labels("github").observe(0.9)
    github = latency.labels("github")
    assert github.counts == [1, 1] and github.count == 2 and github.sum == pytest.approx(1.1)
    lines = registry.render().splitlines()[2:]
    assert lines[:4] == [
        'lat_seconds_bucket{forge="github",le="0.5"} 1',
        'lat_seconds_bucket{forge="github",le="+Inf"} 2',
        'lat_seconds_sum{forge="github"} 1.1',
        'lat_seconds_count{forge="github"} 2',
    ]
    assert 'lat_seconds_bucket{forge="gitea",le="0.5"} 0' in lines


def test_collected_samples_are_read_at_every_scrape() -> None:
    queue: list[int] = []
    registry = Registry()
    registry.collected("narwhal_jobs_queued", "Waiting.", lambda: [((), len(queue))])

    def by_state() -> list[Sample]:
        return [(("ready",), 2), (("lost",), 0.5)]

    registry.collected("narwhal_runners", "Runners.", by_state, labels=["state"])
    assert "narwhal_jobs_queued 0\n" in registry.render()
    queue.extend([1, 2, 3])
    text = registry.render()
    assert "narwhal_jobs_queued 3\n" in text
    assert 'narwhal_runners{state="ready"} 2\nnarwhal_runners{state="lost"} 0.5\n' in text


def test_a_collected_counter_is_typed_counter() -> None:
    registry = Registry()
    registry.collected("bad_frames_total", "Bad.", lambda: [((), 7)], kind="counter")
    assert (
        registry.render()
        == "# HELP bad_frames_total Bad.\n# TYPE bad_frames_total counter\nbad_frames_total 7\n"
    )


def test_a_failing_callback_empties_its_metric_only(caplog: pytest.LogCaptureFixture) -> None:
    registry = Registry()

    def broken() -> list[Sample]:
        raise RuntimeError("gone")

    registry.collected("broken", "Broken.", broken)
    registry.collected("short", "Short.", lambda: [((), 1)], labels=["state"])
    registry.gauge("fine", "Fine.").set(4)
    with caplog.at_level(logging.ERROR, logger="narwhal.metrics"):
        text = registry.render()
    assert text.splitlines() == [
        "# HELP broken Broken.",
        "# TYPE broken gauge",
        "# HELP short Short.",
        "# TYPE short gauge",
        "# HELP fine Fine.",
        "# TYPE fine gauge",
        "fine 4",
    ]
    assert "broken: collecting failed" in caplog.text
    assert "short: collecting failed" in caplog.text  # a sample without its label


def test_gauges_go_both_ways_and_counters_only_up() -> None:
    gauge = Gauge("g", "G.")
    gauge.inc(5)
    gauge.dec(2)
    assert gauge.labels().value == 3
    gauge.set(-1.5)
    assert gauge.labels().value == -1.5
    counter = Counter("c_total", "C.")
    with pytest.raises(ValueError, match="only goes up"):
        counter.inc(-1)


def test_label_use_is_checked() -> None:
    counter = Counter("c_total", "C.", ["state"])
    with pytest.raises(ValueError, match="expected labels"):
        counter.labels("a", "b")
    with pytest.raises(ValueError, match=r"use \.labels"):
        counter.inc()
    with pytest.raises(TypeError, match="strings"):
        counter.labels(3)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Counter("jobs", "J."), "ends in _total"),
        (lambda: Gauge("jobs_total", "J."), "ends in _total"),
        (lambda: Histogram("h_total", "H.", [1]), "ends in _total"),
        (lambda: Gauge("9lives", "N."), "not a valid metric name"),
        (lambda: Gauge("g", "G.", ["bad-label"]), "not a valid label name"),
        (lambda: Gauge("g", "G.", ["__reserved"]), "not a valid label name"),
        (lambda: Gauge("g", "G.", ["a", "a"]), "named twice"),
        (lambda: Histogram("h", "H.", [1], labels=["le"]), "bucket label"),
        (lambda: Histogram("h", "H.", [2, 1]), "increase"),
        (lambda: Histogram("h", "H.", [1, 1]), "increase"),
        (lambda: Histogram("h", "H.", []), "finite"),
        (lambda: Histogram("h", "H.", [math.nan]), "finite"),
        (lambda: Collected("c", "C.", list, kind="histogram"), "gauge or a counter"),
        (lambda: Collected("c", "C.", list, kind="counter"), "ends in _total"),
    ],
)
def test_names_follow_the_conventions(make: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()  # type: ignore[operator]


def test_a_name_is_registered_once() -> None:
    registry = Registry()
    registry.gauge("g", "G.")
    with pytest.raises(ValueError, match="registered already"):
        registry.gauge("g", "again")
    assert registry.get("g") is not None and registry.get("nothing") is None


def test_content_type_is_the_text_format() -> None:
    assert CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"


def _tricky() -> str:
    registry = Registry()
    registry.counter("narwhal_tricky_total", 'Quotes " and \\ and\nnewlines.', ["what"])
    tricky = registry.get("narwhal_tricky_total")
    assert isinstance(tricky, Counter)
    for value in ('"quoted"', "back\\slash", "new\nline", "ünïcödé", ""):
        tricky.labels(value).inc()
    latency = registry.histogram(
        "narwhal_tricky_seconds", "Latency.", [0.001, 0.5, 2.5, 60], labels=["forge"]
    )
    for forge, value in [("github", 0.0004), ("github", 3.0), ("gitea", 120.0)]:
        latency.labels(forge).observe(value)
    registry.collected("narwhal_tricky_limit", "G.", lambda: [((), math.inf)])
    return registry.render()


def test_promtool_accepts_escaped_labels_histograms_and_infinities() -> None:
    promtool = shutil.which("promtool")
    assert promtool, (
        "promtool is missing: install the Debian package prometheus (scripts/test does)"
    )
    done = subprocess.run(
        [promtool, "check", "metrics"], input=_tricky(), capture_output=True, text=True, timeout=30
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def test_promtool_rejects_what_it_should() -> None:
    """The check above can fail: a counter without _total is a lint error promtool reports."""
    promtool = shutil.which("promtool")
    assert promtool, (
        "promtool is missing: install the Debian package prometheus (scripts/test does)"
    )
    bad = "# HELP jobs J.\n# TYPE jobs counter\njobs 1\n"
    done = subprocess.run(
        [promtool, "check", "metrics"], input=bad, capture_output=True, text=True, timeout=30
    )
    assert done.returncode != 0 and "_total" in done.stdout + done.stderr
