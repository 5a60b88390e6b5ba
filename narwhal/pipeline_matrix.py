"""The `matrix:` of narwhal.yml: its combinations, and `${VAR}` substitution of one of them.

A matrix is either axes (``PY: [3.11, 3.12]``, every combination of their
values) or an explicit ``include:`` list. Each combination (a *variant*)
becomes a job of its own; ``substitute`` puts a variant's values into the
text of the pipeline, leaving every other ``${NAME}`` for the shell.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping, Sequence

from yaml.nodes import Node

from narwhal.yamlnodes import (
    Fields,
    child,
    describe,
    fail,
    mapping,
    sequence,
    single_line,
    text_value,
    variables,
)

Variants = tuple[dict[str, str], ...]

_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def parse_matrix(node: Node, path: str, *, most: int) -> Variants:
    """Every combination of a `matrix:` block, at most `most` of them, none repeated."""
    fields = mapping(node, path)
    if "include" in fields:
        return _include(fields, path, most)
    axes = variables(node, path, lambda item, at: _axis(item, at, most))
    count = 1
    for values in axes.values():
        # Saturate: the exact product of many axes is slow to compute and too long to print.
        count = min(count * len(values), 10**6)
    if count > most:
        shown = count if count < 10**6 else "a million or more"
        fail(node, path, f"expected {most} combinations or fewer, got {shown}")
    product = itertools.product(*axes.values())
    return tuple(dict(zip(axes, values, strict=True)) for values in product)


def _include(fields: Fields, matrix: str, most: int) -> Variants:
    other = next((key for key in fields if key != "include"), None)
    if other is not None:
        message = "cannot be mixed with 'include'; list every combination there"
        fail(fields[other][0], child(matrix, other), message)
    path = f"{matrix}.include"
    items = sequence(fields["include"][1], path, "combinations", most=most)
    found = tuple(variables(item, f"{path}[{i}]", _matrix_value) for i, item in enumerate(items))
    _no_repeats(items, found, path)
    return found


def _axis(node: Node, path: str, most: int) -> tuple[str, ...]:
    items = sequence(node, path, "values", most=most)
    values = tuple(_matrix_value(item, f"{path}[{i}]") for i, item in enumerate(items))
    _no_repeats(items, values, path)
    return values


def _no_repeats(items: list[Node], values: Sequence[object], path: str) -> None:
    # Repeats would make two jobs that `pipeline(variant)` cannot tell apart.
    for index, value in enumerate(values):
        if value in values[:index]:
            message = f"duplicate of {path}[{values.index(value)}]"
            fail(items[index], f"{path}[{index}]", message)


def _matrix_value(node: Node, path: str) -> str:
    value = text_value(node, path)
    # Values end up in step names, which must stay non-blank and one line.
    if not single_line(value):
        fail(node, path, f"expected a single-line value, got {describe(node)}")
    return value


def substitute(text: str, variant: Mapping[str, str]) -> str:
    """`text` with each `${NAME}` of the variant replaced by its value."""
    if "${" not in text:
        return text
    # Unknown names stay as written so shell variables like ${HOME} still work.
    return _REFERENCE.sub(lambda m: variant.get(m.group(1), m.group(0)), text)
