"""Fast builders for the metrics feed's flat records (``JobView``, ``StepView`` ...).

A subscriber decodes every item of every message, and ``Schema.build``
costs 8-15 µs a ``JobView`` (a checker call per field, a dict of values,
the frozen dataclass's ``__init__``): ten subscribers on the dispatcher's
cores cost more than the dispatcher. The builder made here for a record
class is one generated function, as ``dataclasses`` generates
``__init__``: it takes the map's values by name, tests each one's exact
type in one expression (ints in the signed 64-bit range), and sets the
slots of a bare instance. About 3 µs a ``JobView``.

It only ever accepts: a map it cannot take as it is (a field missing or
unknown, a type that is not exactly the annotation's, an int for a float,
a default left out) gives None, and the caller hands it to ``Schema.build``,
which converts what it may and raises ``Invalid`` for the rest. So what is
accepted and every error stay the schema's; only the cost of the common
case changes. A class with a field of another kind (a nested record, an
array of arrays) gets no builder.

The generated source comes from the classes' type hints alone (field names
are identifiers, checked), never from anything received.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Union

Builder = Callable[[Mapping[Any, Any]], Any]

#: Integers are stored as SQLite INTEGER: signed 64 bits (as ``schema``).
_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1

#: Exact-type tests per annotation; ``{0}`` is the value's name.
_TESTS: dict[Any, str] = {
    int: "(type({0}) is int and MIN <= {0} <= MAX)",
    str: "type({0}) is str",
    float: "type({0}) is float",
    bool: "type({0}) is bool",
    dict[str, str]: "(type({0}) is dict and str_map({0}))",
    tuple[int, ...]: "(type({0}) is list and int_list({0}))",
}
#: Values stored otherwise than received (msgpack gives a list for a tuple).
_CONVERT: dict[Any, str] = {tuple[int, ...]: "tuple({0})"}


def _str_map(value: dict[Any, Any]) -> bool:
    return all(type(k) is str and type(v) is str for k, v in value.items())


def _int_list(value: list[Any]) -> bool:
    return all(type(v) is int and _INT_MIN <= v <= _INT_MAX for v in value)


def builders(classes: Iterable[type]) -> dict[type, Builder]:
    """A builder for each class whose fields are all of kinds in ``_TESTS`` (or optional)."""
    made: dict[type, Builder] = {}
    for cls in classes:
        builder = _builder(cls)
        if builder is not None:
            made[cls] = builder
    return made


def _builder(cls: type) -> Builder | None:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    tests, stores = [], []
    for name in names:
        hint, optional = _unwrap(hints[name])
        if hint not in _TESTS or not name.isidentifier():
            return None
        test = _TESTS[hint].format(f"v_{name}")
        tests.append(f"(v_{name} is None or {test})" if optional else test)
        store = _CONVERT.get(hint, "{0}").format(f"v_{name}")
        if optional and hint in _CONVERT:
            store = f"(None if v_{name} is None else {store})"
        stores.append(f"    set_{name}(obj, {store})")
    source = "\n".join(
        [
            "def build(body):",
            f"    if len(body) != {len(names)}:",
            "        return None",
            "    try:",
            *(f"        v_{name} = body[{name!r}]" for name in names),
            "    except KeyError:",
            "        return None",
            f"    if not ({' and '.join(tests)}):",
            "        return None",
            "    obj = new(cls)",
            *stores,
            "    return obj",
        ]
    )
    scope: dict[str, Any] = {
        "new": object.__new__,
        "cls": cls,
        "MIN": _INT_MIN,
        "MAX": _INT_MAX,
        "str_map": _str_map,
        "int_list": _int_list,
        # A slot's own descriptor sets it past the frozen class's __setattr__.
        **{f"set_{name}": getattr(cls, name).__set__ for name in names},
    }
    exec(compile(source, f"<feedcheck {cls.__name__}>", "exec"), scope)  # noqa: S102
    return typing.cast(Builder, scope["build"])


def _unwrap(hint: Any) -> tuple[Any, bool]:
    """``X | None`` -> ``(X, True)``; anything else -> ``(hint, False)``."""
    if typing.get_origin(hint) in (Union, types.UnionType):
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(inner) == 1:
            return inner[0], True
    return hint, False
