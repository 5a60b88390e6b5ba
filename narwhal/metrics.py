"""Prometheus metrics: counters, gauges, histograms and a registry that renders text format 0.0.4.

A small library of our own rather than ``prometheus_client``: that one keeps
a process-wide default registry (module-level state, which this project
avoids) and takes a lock on every observation, while the dispatcher makes
thousands of observations a second on one event loop. Here an observation
is an attribute increment (a histogram's adds a ``bisect``), with no lock
and nothing allocated beyond the label lookup: every observation and every
scrape of a registry happen on one thread, the daemon's event loop.

- ``Counter`` (name ends in ``_total``), ``Gauge``, ``Histogram`` (fixed
  buckets, rendered cumulative as ``_bucket{le=...}`` up to ``+Inf``, with
  ``_sum`` and ``_count``), each with or without labels:
  ``jobs.labels("success").inc()``; a hot path keeps the child it gets.
- ``Collected``: samples a callback produces at scrape time, for values
  that already live elsewhere (a queue's length, a socket's counter), so
  nothing has to be kept in step.
- ``Registry.render()``: ``# HELP`` and ``# TYPE`` for every metric, then
  its samples; label values escaped (backslash, double quote, newline),
  HELP text too (backslash, newline). Serve it with ``CONTENT_TYPE``.

Names follow Prometheus' conventions, checked when a metric is made: base
units (``_seconds``, ``_bytes``), ``_total`` on counters and only there.
"""

from __future__ import annotations

import logging
import math
import re
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

#: What a scrape answer's ``Content-Type`` is.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")

#: One sample of a ``Collected`` metric: its label values (in the metric's
#: label order; ``()`` without labels) and its value.
Sample = tuple[tuple[str, ...], float]


def escape_label(value: str) -> str:
    """A label value as the text format quotes it."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(text: str) -> str:
    """HELP text as the text format writes it (quotes stay as they are)."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float) -> str:
    """A sample value: integers as integers, floats in their shortest exact form."""
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def label_text(names: Sequence[str], values: Sequence[str]) -> str:
    """``{a="1",b="2"}``, or "" without labels."""
    if not names:
        return ""
    pairs = ",".join(f'{n}="{escape_label(v)}"' for n, v in zip(names, values, strict=True))
    return "{" + pairs + "}"


def _check_names(name: str, labels: Sequence[str], kind: str) -> None:
    if not _METRIC_NAME.match(name):
        raise ValueError(f"{name!r} is not a valid metric name")
    if (kind == "counter") != name.endswith("_total"):
        raise ValueError(f"{name}: a counter's name ends in _total, and only a counter's does")
    for label in labels:
        if not _LABEL_NAME.match(label) or label.startswith("__"):
            raise ValueError(f"{name}: {label!r} is not a valid label name")
    if len(set(labels)) != len(labels):
        raise ValueError(f"{name}: a label is named twice")


class CounterChild:
    """One label set of a counter."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: float = 0

    def inc(self, amount: float = 1) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        self.value += amount


class GaugeChild:
    """One label set of a gauge."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: float = 0

    def set(self, value: float) -> None:
        self.value = value

    def inc(self, amount: float = 1) -> None:
        self.value += amount

    def dec(self, amount: float = 1) -> None:
        self.value -= amount


class HistogramChild:
    """One label set of a histogram: a count per bucket (not cumulative) and the sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        #: One more than the bounds: the last is the +Inf bucket.
        self.counts = [0] * (len(bounds) + 1)
        self.sum: float = 0.0

    def observe(self, value: float) -> None:
        # The first bound >= value: its bucket counts values "less or equal".
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)


ChildT = TypeVar("ChildT", CounterChild, GaugeChild, HistogramChild)


class _Metric(Generic[ChildT]):
    """A metric made of one child per label set, each made at its first use."""

    kind = ""

    def __init__(self, name: str, help: str, labels: Sequence[str] = ()) -> None:
        _check_names(name, labels, self.kind)
        self.name = name
        self.help = help
        self.labelnames = tuple(labels)
        self._children: dict[tuple[str, ...], ChildT] = {}
        self._texts: dict[tuple[str, ...], str] = {}
        #: The one child of a metric without labels (None with labels).
        self._only: ChildT | None = None if labels else self.labels()

    def labels(self, *values: str) -> ChildT:
        """The child of this label set (made at its first use)."""
        child = self._children.get(values)
        if child is None:
            child = self._add(values)
        return child

    def _add(self, values: tuple[str, ...]) -> ChildT:
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name}: expected labels {self.labelnames}, got {values}")
        if not all(isinstance(v, str) for v in values):
            raise TypeError(f"{self.name}: label values are strings, got {values!r}")
        child = self._new_child()
        self._children[values] = child
        self._texts[values] = label_text(self.labelnames, values)
        return child

    def _new_child(self) -> ChildT:
        raise NotImplementedError

    def _single(self) -> ChildT:
        if self._only is None:
            raise ValueError(f"{self.name} has labels {self.labelnames}: use .labels(...)")
        return self._only

    def samples(self) -> Iterable[str]:
        raise NotImplementedError


def _scalar_lines(
    name: str,
    texts: Mapping[tuple[str, ...], str],
    children: Mapping[tuple[str, ...], CounterChild | GaugeChild],
) -> Iterable[str]:
    for values, child in children.items():
        yield f"{name}{texts[values]} {format_value(child.value)}"


class Counter(_Metric[CounterChild]):
    """Counts that only go up (events, errors); its name ends in ``_total``."""

    kind = "counter"

    def _new_child(self) -> CounterChild:
        return CounterChild()

    def samples(self) -> Iterable[str]:
        return _scalar_lines(self.name, self._texts, self._children)

    def inc(self, amount: float = 1) -> None:
        self._single().inc(amount)


class Gauge(_Metric[GaugeChild]):
    """A value that goes up and down, set as it changes."""

    kind = "gauge"

    def _new_child(self) -> GaugeChild:
        return GaugeChild()

    def samples(self) -> Iterable[str]:
        return _scalar_lines(self.name, self._texts, self._children)

    def set(self, value: float) -> None:
        self._single().set(value)

    def inc(self, amount: float = 1) -> None:
        self._single().inc(amount)

    def dec(self, amount: float = 1) -> None:
        self._single().dec(amount)


class Histogram(_Metric[HistogramChild]):
    """Observations counted in fixed buckets (upper bounds, ``+Inf`` implied), with their sum."""

    kind = "histogram"

    def __init__(
        self, name: str, help: str, buckets: Sequence[float], labels: Sequence[str] = ()
    ) -> None:
        bounds = tuple(float(b) for b in buckets if b != math.inf)
        if not bounds or any(math.isnan(b) or b == -math.inf for b in bounds):
            raise ValueError(f"{name}: buckets must be finite numbers")
        if any(a >= b for a, b in zip(bounds, bounds[1:], strict=False)):
            raise ValueError(f"{name}: buckets must increase")
        if "le" in labels:
            raise ValueError(f"{name}: 'le' is the bucket label")
        self.bounds = bounds
        self._les = [format_value(b) for b in bounds] + ["+Inf"]
        super().__init__(name, help, labels)

    def _new_child(self) -> HistogramChild:
        return HistogramChild(self.bounds)

    def observe(self, value: float) -> None:
        self._single().observe(value)

    def samples(self) -> Iterable[str]:
        for values, child in self._children.items():
            text = self._texts[values]
            prefix = text[:-1] + "," if text else "{"
            total = 0
            for le, count in zip(self._les, child.counts, strict=True):
                total += count
                yield f'{self.name}_bucket{prefix}le="{le}"}} {total}'
            yield f"{self.name}_sum{text} {format_value(child.sum)}"
            yield f"{self.name}_count{text} {total}"


class Collected:
    """A gauge or counter whose samples a callback produces at each scrape.

    ``collect()`` returns ``(label values, value)`` pairs, one per label set
    (each set once). A callback that raises is logged and its metric shows
    no samples in that scrape; the others are rendered as usual.
    """

    def __init__(
        self,
        name: str,
        help: str,
        collect: Callable[[], Iterable[Sample]],
        *,
        kind: str = "gauge",
        labels: Sequence[str] = (),
    ) -> None:
        if kind not in ("gauge", "counter"):
            raise ValueError(f"{name}: a collected metric is a gauge or a counter, not {kind}")
        _check_names(name, labels, kind)
        self.name = name
        self.help = help
        self.kind = kind
        self.labelnames = tuple(labels)
        self._collect = collect

    def samples(self) -> Iterable[str]:
        try:
            return [
                f"{self.name}{label_text(self.labelnames, values)} {format_value(value)}"
                for values, value in self._collect()
            ]
        except Exception:  # one broken callback (or sample) must not fail the whole scrape
            log.exception("metric %s: collecting failed", self.name)
            return []


Metric = Counter | Gauge | Histogram | Collected
M = TypeVar("M", Counter, Gauge, Histogram, Collected)


class Registry:
    """The metrics of one daemon, rendered in the order they were registered."""

    def __init__(self) -> None:
        self._metrics: dict[str, Metric] = {}

    def register(self, metric: M) -> M:
        if metric.name in self._metrics:
            raise ValueError(f"{metric.name} is registered already")
        self._metrics[metric.name] = metric
        return metric

    def counter(self, name: str, help: str, labels: Sequence[str] = ()) -> Counter:
        return self.register(Counter(name, help, labels))

    def gauge(self, name: str, help: str, labels: Sequence[str] = ()) -> Gauge:
        return self.register(Gauge(name, help, labels))

    def histogram(
        self, name: str, help: str, buckets: Sequence[float], labels: Sequence[str] = ()
    ) -> Histogram:
        return self.register(Histogram(name, help, buckets, labels))

    def collected(
        self,
        name: str,
        help: str,
        collect: Callable[[], Iterable[Sample]],
        *,
        kind: str = "gauge",
        labels: Sequence[str] = (),
    ) -> Collected:
        return self.register(Collected(name, help, collect, kind=kind, labels=labels))

    def get(self, name: str) -> Metric | None:
        return self._metrics.get(name)

    def daemon_info(self, version: str) -> None:
        """``narwhal_up`` and ``narwhal_build_info{version}``, first in every daemon's metrics."""
        self.gauge("narwhal_up", "1 while this daemon serves.").set(1)
        info = self.gauge("narwhal_build_info", "Always 1; the version running.", ["version"])
        info.labels(version).set(1)

    def render(self) -> str:
        """The text format 0.0.4 exposition of every metric."""
        lines: list[str] = []
        for metric in self._metrics.values():
            lines.append(f"# HELP {metric.name} {escape_help(metric.help)}")
            lines.append(f"# TYPE {metric.name} {metric.kind}")
            lines.extend(metric.samples())
        return "\n".join(lines) + "\n"
