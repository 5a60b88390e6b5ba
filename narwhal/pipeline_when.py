"""`when:` rules of narwhal.yml: which branches and events a pipeline or step runs for.

A rule is a pair of fnmatch glob lists, checked at run time against the
job's branch and event (``run_pipeline`` in the runner); the parser here
only turns the YAML into a `When`, with the line of every problem.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from yaml.nodes import Node, SequenceNode

from narwhal.yamlnodes import mapping, optional, sequence, string

_WHEN_KEYS = ("branch", "event")


@dataclass(frozen=True, slots=True, kw_only=True)
class When:
    """Branch and event filters (fnmatch globs); an empty filter matches all."""

    branch: tuple[str, ...] = ()
    event: tuple[str, ...] = ()

    def matches(self, *, branch: str | None, event: str | None) -> bool:
        """True when both filters accept; a set filter never accepts None."""
        return _accepts(self.branch, branch) and _accepts(self.event, event)


def _accepts(patterns: tuple[str, ...], value: str | None) -> bool:
    if not patterns:
        return True
    return value is not None and any(fnmatch.fnmatchcase(value, p) for p in patterns)


def parse_when(node: Node, path: str) -> When:
    """A `when:` mapping (`branch`, `event`: a glob or a list of globs)."""
    fields = mapping(node, path, _WHEN_KEYS)
    return When(
        branch=optional(fields, "branch", path, _patterns) or (),
        event=optional(fields, "event", path, _patterns) or (),
    )


def _patterns(node: Node, path: str) -> tuple[str, ...]:
    if not isinstance(node, SequenceNode):
        return (string(node, path, "a glob pattern or a list of them"),)
    items = enumerate(sequence(node, path, "glob patterns", empty=True))
    return tuple(string(item, f"{path}[{i}]", "a glob pattern") for i, item in items)
