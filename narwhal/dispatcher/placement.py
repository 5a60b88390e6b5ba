"""Which runner takes a job: filters, then a score, behind a protocol of two methods.

The dispatcher asks ``Placement.round`` once per scheduling round, with the
runners the mesh offers, then ``Round.take`` once per queued job until the
round has no slot left. A policy sees the whole job (its repository, labels,
needs, commit, attempt). A round counts only the slots it handed out; the
dispatcher reserves each one on the mesh.

A runner can take a job if it passes every filter (``fleet``: labels,
platform, CPUs and memory, disk, quarantine) and has a free slot; the
policy scores those that can (``--placement``):

- ``affinity`` (the default): the runners with the job's repository warm in
  their mirror cache first, the fewest commits behind first (a warm mirror
  whose distance is not known ranks as ``UNKNOWN_BEHIND`` commits behind:
  after close ones, before cold ones); then, as ``spread``, the most
  free-slot fraction and the least load per CPU. A runner with a job of
  the repository under way that this policy placed there counts as warm
  too (warming: the runner's lock on its mirror makes the next job wait
  for that clone rather than clone again). A runner whose last job ended
  in a fault of its side counts as cold (its mirror may be what fails).
  A cold clone goes to a healthy runner first, then to one whose bounded
  mirror cache has room for the repository (no eviction), then as
  ``spread``. Two bounds keep affinity from piling a burst onto one host:

  The share cap: a runner takes a job only while it runs fewer than
  ``SHARE`` of the jobs under way on every runner, plus one (counting what
  this round placed): ``running < 0.4 * under way + 1``. Jobs of a
  repository that come one at a time all go to its warm runner (nothing
  else is under way: it takes 1 of 1); a burst spreads once that runner
  runs 2 of 2, 3 of 5, 5 of 10, 9 of 20. It is measured on the jobs under
  way rather than on history so that it bites when several jobs compete,
  and only then. The cap only steers: when every runner that can take the
  job is over it, the best takes it all the same.

  The bounded wait: when every runner with the repository warm is full and
  a cold one is free, the job waits for one of the best ``HOLD_FOR_BEST``
  of them at most the checkout time that saves (``Signals.saving``, as
  measured on that runner: 0 until measured, so no wait before), counted
  from the first round that held it; then it clones cold. No more jobs
  wait for a runner than it frees slots for within that time (its slots
  times the saving over the repository's typical duration; its slots
  while no duration is known), and none for a runner whose share of the
  last ``WINDOW`` placements, the held jobs counted, would pass ``SHARE``
  (holds turn a burst into a queue for one host: they stop before that
  host gets more than its share).

  With 4 runners and 8 repositories each runner ends up with about a
  quarter of the jobs, none above 40% (``tests/dispatcher/test_placement.py``
  plays bursts against a model of runners and their mirror caches).

- ``spread``: the most free-slot fraction, then the least load per CPU.
- ``pack``: the fullest runner that still has a slot, to keep others idle.

Ties go at random (``random.Random``, injectable). The images a job's
steps use are known only once its checkout read narwhal.yml, on the
runner: with no cheap honest signal before, no policy weighs runners'
images. A round costs O(runners) to build, O(runners that pass) once per
kind of job (label set and needs) and, for affinity, O(runners) once per
repository, then O(log runners) per job (``policies``). The modules:
``fleet`` (filters, verdicts and their words), ``policies`` (what the
policies share; spread, pack), ``affinity``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from narwhal.config import PLACEMENTS
from narwhal.dispatcher.affinity import Affinity
from narwhal.dispatcher.fleet import REASONS, Placed, Verdict, Waiting
from narwhal.dispatcher.mesh import Peer
from narwhal.dispatcher.policies import Pack, Policy, Spread
from narwhal.dispatcher.records import JobRecord
from narwhal.dispatcher.signals import Signals
from narwhal.errors import ConfigError

__all__ = [
    "POLICIES",
    "REASONS",
    "Affinity",
    "Pack",
    "Placed",
    "Placement",
    "Round",
    "Spread",
    "Verdict",
    "Waiting",
    "policy",
]

#: The policies ``--placement`` names (the first the default): ``config``'s.
POLICIES = PLACEMENTS


class Round(Protocol):
    """The free slots of one scheduling round, and which runner takes each job."""

    def __bool__(self) -> bool:
        """Whether a slot is left this round (if not, the rest of the queue is not looked at)."""
        ...

    def take(self, job: JobRecord) -> Verdict:
        """Place ``job`` (count the slot taken) or say why it waits."""
        ...

    def retry_at(self) -> float | None:
        """When (``time.monotonic``) a job this round held for a busy warm runner
        stops waiting for it: the dispatcher schedules again then. None: no such job."""
        ...


class Placement(Protocol):
    """A placement policy: one ``Round`` per scheduling round."""

    def round(self, peers: Sequence[Peer]) -> Round:
        """A round over ``peers`` (every link, in connection order; not only ready ones)."""
        ...

    def explain(self, job: JobRecord, peers: Sequence[Peer]) -> Waiting | None:
        """Why ``job`` waits, for a job no round looked at (filters only, no slot
        taken); None if a runner could take it now."""
        ...


_POLICIES: dict[str, type[Policy]] = {"affinity": Affinity, "spread": Spread, "pack": Pack}


def policy(
    name: str,
    signals: Signals,
    *,
    rng: random.Random | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Placement:
    """The policy ``--placement`` names (``POLICIES``), weighing ``signals``;
    ``rng`` breaks ties (seeded in tests), ``clock`` is ``time.monotonic``'s kind."""
    if name not in POLICIES:
        raise ConfigError(f"placement must be one of {', '.join(POLICIES)}, got {name!r}")
    chosen: Placement = _POLICIES[name](signals, rng=rng, clock=clock)
    return chosen
