"""Field checks for wire messages, derived once from their dataclasses' type hints.

``protocol.decode`` builds every message through a ``Schema``: each field
is checked against its annotation (``int``, ``str | None``, ``tuple[...]``,
``dict[str, str]``, a nested dataclass), unknown fields are refused and
missing required ones too. The checkers are made once, at import, so that a
valid frame costs a dict walk and no string formatting; only a failure
builds the path of the bad value (``done.steps[0].status``).

The wire's own meaning (which messages exist, the semantic checks) stays in
``protocol``; this module knows nothing of it.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Union

Checker = Callable[[Any], Any]

#: Integers are stored as SQLite INTEGER: signed 64 bits.
_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1


class Invalid(Exception):
    """A value failed its check; ``path`` grows as the error unwinds.

    Paths are only built on failure: the hot path (valid frames) formats no
    strings at all.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        self.path: list[str] = []

    def at(self, part: str) -> Invalid:
        self.path.append(part)
        return self


class Schema:
    """The checkers of a set of dataclasses (messages and the records inside them)."""

    def __init__(self, classes: Iterable[type]) -> None:
        self._specs: dict[type, dict[str, tuple[Checker, bool]]] = {}
        for cls in classes:
            self._specs[cls] = self._fields(cls)
        #: Field names per class, in order, for encoding without dataclass introspection.
        self.names: dict[type, tuple[str, ...]] = {
            cls: tuple(spec) for cls, spec in self._specs.items()
        }

    def build(self, cls: type, body: Mapping[Any, Any]) -> Any:
        """An instance of ``cls`` from a decoded map; raises ``Invalid``."""
        spec = self._specs[cls]
        for key in body:
            if key not in spec:
                raise Invalid(f"unknown field {key!r}")
        values = {}
        for name, (check, required) in spec.items():
            if name in body:
                try:
                    values[name] = check(body[name])
                except Invalid as e:
                    raise e.at(f".{name}") from None
            elif required:
                raise Invalid(f"missing field {name!r}")
        return cls(**values)

    def _fields(self, cls: type) -> dict[str, tuple[Checker, bool]]:
        hints = typing.get_type_hints(cls)
        return {
            f.name: (self._checker(hints[f.name]), _required(f)) for f in dataclasses.fields(cls)
        }

    def _checker(self, hint: Any) -> Checker:
        origin = typing.get_origin(hint)
        args = typing.get_args(hint)
        if origin in (Union, types.UnionType):
            (inner,) = [a for a in args if a is not type(None)]
            return _optional(self._checker(inner))
        if origin is tuple:
            return _sequence(self._checker(args[0]))
        if origin is dict:
            return _mapping(self._checker(args[0]), self._checker(args[1]))
        if dataclasses.is_dataclass(hint):
            return self._record(typing.cast(type, hint))
        return _scalar(hint)

    def _record(self, cls: type) -> Checker:
        def check(value: Any) -> Any:
            if not isinstance(value, dict):
                raise Invalid(f"expected map, got {type(value).__name__}")
            return self.build(cls, value)

        return check


def _required(f: dataclasses.Field[Any]) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _scalar(kind: type) -> Checker:
    name = kind.__name__

    def check(value: Any) -> Any:
        # type() not isinstance(): bool is an int subclass, and a flag is never a count.
        if type(value) is kind:
            if kind is int and not _INT_MIN <= typing.cast(int, value) <= _INT_MAX:
                raise Invalid("integer out of range")
            return value
        if kind is float and type(value) is int:
            return float(value)
        raise Invalid(f"expected {name}, got {type(value).__name__}")

    return check


def _optional(inner: Checker) -> Checker:
    def check(value: Any) -> Any:
        return None if value is None else inner(value)

    return check


def _sequence(inner: Checker) -> Checker:
    def check(value: Any) -> Any:
        if not isinstance(value, list | tuple):
            raise Invalid(f"expected array, got {type(value).__name__}")
        out = []
        for i, item in enumerate(value):
            try:
                out.append(inner(item))
            except Invalid as e:
                raise e.at(f"[{i}]") from None
        return tuple(out)

    return check


def _mapping(key: Checker, val: Checker) -> Checker:
    def check(value: Any) -> Any:
        if not isinstance(value, dict):
            raise Invalid(f"expected map, got {type(value).__name__}")
        out = {}
        for k, v in value.items():
            try:
                out[key(k)] = val(v)
            except Invalid as e:
                raise e.at(f".{k}") from None
        return out

    return check
