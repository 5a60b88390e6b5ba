"""The feed's fast builders accept only what the schema accepts, and build the same records."""

from __future__ import annotations

from typing import Any

import pytest

from narwhal.mesh import feed as f
from narwhal.mesh.feedcheck import builders
from narwhal.mesh.schema import Invalid
from tests.mesh.test_feed import ITEMS

FLAT = [item for item in ITEMS if type(item) in f._FAST]
#: Values of every kind a field could be sent, right or wrong for it.
ODD_VALUES: list[Any] = [
    None,
    True,
    0,
    -1,
    2**63,
    -(2**63) - 1,
    2**63 - 1,
    1.5,
    "",
    "x",
    b"x",
    [],
    [1, 2],
    [True],
    [2**64],
    ["a"],
    {},
    {"a": "b"},
    {"a": 1},
    {1: "b"},
]


def _schema_build(cls: type, body: dict[Any, Any]) -> Any:
    try:
        return f._SCHEMA.build(cls, body)
    except Invalid:
        return Invalid


def _variants(body: dict[str, Any]) -> list[dict[Any, Any]]:
    """``body`` with each field missing, replaced by each odd value, plus unknown fields."""
    out: list[dict[Any, Any]] = [body, {**body, "extra": 1}, {**body, 1: 1}]
    for name in body:
        out.append({k: v for k, v in body.items() if k != name})
        out.append({**{k: v for k, v in body.items() if k != name}, "other": body[name]})
        out.extend({**body, name: odd} for odd in ODD_VALUES)
    return out


def test_the_flat_records_have_builders_and_the_nested_ones_not() -> None:
    assert set(f._FAST) == {f.JobView, f.StepView, f.LogView, f.RunnerView}


@pytest.mark.parametrize("item", FLAT, ids=lambda i: type(i).__name__)
def test_a_builder_accepts_nothing_the_schema_refuses(item: Any) -> None:
    cls = type(item)
    build = f._FAST[cls]
    accepted = 0
    for body in _variants(f.to_map(item)):
        expected = _schema_build(cls, body)
        built = build(body)
        if built is None:
            continue
        accepted += 1
        assert expected is not Invalid, body
        assert built == expected
        assert [getattr(built, n) for n in f.fields_of(cls)] == [
            getattr(expected, n) for n in f.fields_of(cls)
        ]
    assert accepted >= 1  # an int given for a float (StepView.at here) is left to the schema


def test_a_built_record_is_a_frozen_record_like_any_other() -> None:
    built = f._FAST[f.JobView](f.to_map(f.JobView(**{**f.to_map(ITEMS[0]), "labels": {}})))
    assert type(built) is f.JobView
    with pytest.raises(AttributeError):
        built.state = "success"  # type: ignore[misc]
    assert built == f.JobView(**f.to_map(built))


def test_a_record_with_a_nested_record_gets_no_builder() -> None:
    assert builders([f.QueueView, f.UsageView, f.StatsView, f.Snapshot]) == {}


def test_a_runner_without_its_default_reason_falls_back_to_the_schema() -> None:
    body = f.to_map(ITEMS[1])
    del body["reason"]
    assert f._FAST[f.RunnerView](body) is None
    assert f._build(f.RunnerView, body) == ITEMS[1]
