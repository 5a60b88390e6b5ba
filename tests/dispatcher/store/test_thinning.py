"""How a store thins a long step's samples (``store.base.thinned``): evenly, by time."""

from __future__ import annotations

import pytest

from narwhal.dispatcher.store.base import MAX_STEP_SAMPLES, UsageSample, thinned


def _steady(count: int, jitter: float = 0.0) -> tuple[UsageSample, ...]:
    return tuple((i + jitter * (i % 3), 1.0, i) for i in range(count))


def test_up_to_the_bound_nothing_goes() -> None:
    samples = _steady(MAX_STEP_SAMPLES)
    assert thinned(samples) == samples


@pytest.mark.parametrize(
    "count", [MAX_STEP_SAMPLES + 1, 2 * MAX_STEP_SAMPLES, 5 * MAX_STEP_SAMPLES]
)
@pytest.mark.parametrize("jitter", [0.0, 0.3])
def test_over_the_bound_about_half_stay_evenly_with_both_ends(count: int, jitter: float) -> None:
    samples = _steady(count, jitter)
    kept = thinned(samples)
    assert MAX_STEP_SAMPLES // 4 <= len(kept) <= MAX_STEP_SAMPLES
    assert kept[0] == samples[0] and kept[-1] == samples[-1]
    gaps = [b[0] - a[0] for a, b in zip(kept, kept[1:], strict=False)]
    # Timer jitter must not make holes: spacings stay within a factor of two
    # (the last one may be short: the newest sample always stays).
    assert max(gaps) <= 2 * min(gaps[:-1]), (min(gaps), max(gaps))


def test_samples_all_at_one_time_are_thinned_by_position() -> None:
    same = tuple((0.0, 1.0, i) for i in range(MAX_STEP_SAMPLES + 2))
    assert len(thinned(same)) == (MAX_STEP_SAMPLES + 2 + 1) // 2
