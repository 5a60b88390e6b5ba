"""YAML read as nodes with line numbers, and checked conversions of nodes to values.

``narwhal.pipeline`` and its ``pipeline_*`` modules build on this: every
problem raises ``Problem(line, path, message)``, which the pipeline loader
turns into one ``PipelineError`` line. Composing nodes instead of loading
objects is what gives every value its line; the loader also refuses
aliases, deep nesting and huge files up front, so a hostile file costs
little.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Sequence
from typing import NoReturn, TypeVar

import yaml
from yaml.error import Mark
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

MAX_FILE_BYTES = 1024 * 1024
MAX_DEPTH = 64
# pyyaml composes ~30k values a second: this bounds the time a hostile file costs.
MAX_NODES = 50_000

TAG = "tag:yaml.org,2002:"
STR, INT, BOOL, NULL = (TAG + "str", TAG + "int", TAG + "bool", TAG + "null")
NUMBERS = (INT, TAG + "float", TAG + "timestamp")
# YAML 1.1 booleans: pyyaml resolves an unquoted yes/on/off... to bool.
BOOLS = dict.fromkeys(("true", "yes", "on"), True)
BOOLS.update(dict.fromkeys(("false", "no", "off"), False))
PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]{1,40}")
# Every step gets its own merged env, so steps x variables must stay small.
MAX_VARIABLES = 256
_VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

_T = TypeVar("_T")

Fields = dict[str, tuple[Node, Node]]  # key -> (key node, value node)


class Problem(Exception):
    """(line, path, message) of one invalid spot; load() adds the filename."""


def fail(node: Node, path: str, message: str) -> NoReturn:
    raise Problem(line_of(node.start_mark), path, message)


def line_of(mark: Mark | None) -> int:
    return 1 if mark is None else mark.line + 1


def one_line(text: str) -> str:
    # Keys and values from the file may hold any line break Python knows.
    return " ".join(text.splitlines())


def decode(text: str | bytes) -> str:
    # Check the length first: encoding a huge str just to measure it is waste.
    check_size(len(text))
    if isinstance(text, str):
        check_size(len(text.encode("utf-8", "surrogatepass")))
        return text
    try:
        return text.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = text.count(b"\n", 0, error.start) + 1
        bad = f"byte 0x{text[error.start]:02x} at offset {error.start}"
        raise Problem(line, "", f"not valid UTF-8 ({bad})") from error


def check_size(size: int) -> None:
    if size > MAX_FILE_BYTES:
        raise Problem(1, "", "file is larger than 1 MiB")


class Loader(yaml.SafeLoader):
    """Composes nodes only, refusing aliases, deep nesting and huge trees up front."""

    _depth = 0
    _nodes = 0

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]  # stubs lack it
        line = line_of(event.start_mark)
        if isinstance(event, yaml.AliasEvent):
            # Nested aliases make a billion-laughs bomb; no pipeline needs them.
            message = "YAML aliases (*name) are not supported; write the value out"
            raise Problem(line, "", message)
        if self._depth >= MAX_DEPTH:
            # pyyaml composes recursively: stop well before Python's stack does.
            raise Problem(line, "", f"nested deeper than {MAX_DEPTH} levels")
        self._nodes += 1
        if self._nodes > MAX_NODES:
            raise Problem(line, "", f"more than {MAX_NODES} YAML values in one file")
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def compose(text: str) -> Node | None:
    try:
        loader = Loader(text)
        try:
            return loader.get_single_node()
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as error:
        # Only pyyaml's context and problem, never str(error): that quotes the
        # offending line with a caret under it, and the file may be anything.
        line = line_of(error.problem_mark or error.context_mark)
        found = ": ".join(part for part in (error.context, error.problem) if part)
        raise Problem(line, "", f"invalid YAML: {_cut_quoted(found)}") from error
    except yaml.reader.ReaderError as error:
        line = text.count("\n", 0, error.position) + 1
        found = f"unacceptable character #x{error.character:04x}"
        raise Problem(line, "", f"invalid YAML: {found}") from error


#: What pyyaml quotes from the file in its messages (an anchor or tag name).
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")


def _cut_quoted(message: str) -> str:
    """pyyaml's message with every quoted name from the file cut like ``short``."""
    return _QUOTED.sub(lambda m: m[0] if len(m[0]) <= 42 else m[0][:38] + "...'", message)


#: Characters no command, argument or environment variable can hold: NUL,
#: and lone surrogates (from "\ud800" escapes) that have no bytes at all.
_UNUSABLE = re.compile("[\x00\ud800-\udfff]")


def usable(node: Node, path: str) -> str:
    """A scalar's text, refused when the system could not pass it to a process."""
    text = str(node.value)
    if _UNUSABLE.search(text):
        fail(node, path, "contains a NUL character or a lone surrogate, which no process can take")
    return text


def mapping(node: Node, path: str, allowed: Sequence[str] | None = None) -> Fields:
    if not (isinstance(node, MappingNode) and node.tag == TAG + "map"):
        fail(node, path, f"expected a mapping, got {describe(node)}")
    fields: Fields = {}
    for key_node, value_node in node.value:
        if not isinstance(key_node, ScalarNode):
            fail(key_node, path, f"expected a string key, got {describe(key_node)}")
        key = str(key_node.value)
        if key in fields:
            first = line_of(fields[key][0].start_mark)
            fail(key_node, child(path, key), f"duplicate key (first on line {first})")
        if allowed is not None and key not in allowed:
            fail(key_node, child(path, key), unknown_key(key, allowed))
        fields[key] = (key_node, value_node)
    return fields


def unknown_key(key: str, allowed: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, allowed, n=1)
    names = ", ".join(allowed)
    hint = f"did you mean {close[0]!r}?" if close else f"expected one of {names}"
    return f"unknown key {short(key)!r}; {hint}"


def sequence(
    node: Node, path: str, what: str, *, empty: bool = False, most: int = 10**9
) -> list[Node]:
    if not (isinstance(node, SequenceNode) and node.tag == TAG + "seq"):
        fail(node, path, f"expected a list of {what}, got {describe(node)}")
    if not (node.value or empty):
        fail(node, path, f"expected a non-empty list of {what}, got []")
    if len(node.value) > most:
        fail(node, path, f"expected {most} {what} or fewer, got {len(node.value)}")
    return list(node.value)


def string(node: Node, path: str, what: str, valid: Callable[[str], object] = str.strip) -> str:
    """A str scalar that `valid` accepts (by default: any non-blank one)."""
    if tagged(node, STR) and valid(node.value):
        return usable(node, path)
    hint = " (quote it to use it as text)" if tagged(node, BOOL, *NUMBERS) else ""
    fail(node, path, f"expected {what}, got {describe(node)}{hint}")


def text_value(node: Node, path: str) -> str:
    if tagged(node, BOOL):
        return "true" if boolean(node, path) else "false"
    if not tagged(node, STR, *NUMBERS):
        fail(node, path, f"expected a string, number or bool, got {describe(node)}")
    # The text as written: `3.10` stays "3.10" instead of becoming 3.1.
    return usable(node, path)


def boolean(node: Node, path: str) -> bool:
    truth = BOOLS.get(str(node.value).lower()) if tagged(node, BOOL) else None
    if truth is None:
        fail(node, path, f"expected true or false, got {describe(node)}")
    return truth


def tagged(node: Node, *tags: str) -> bool:
    return isinstance(node, ScalarNode) and node.tag in tags


def describe(node: Node) -> str:
    if not isinstance(node, ScalarNode) or not node.tag.startswith(TAG):
        kinds = {TAG + "map": "a mapping", TAG + "seq": "a list"}
        return kinds.get(node.tag) or f"a value tagged {short(node.tag.replace(TAG, '!!'))}"
    if node.tag == NULL:
        return "null"
    text = short(node.value)
    return text if node.tag != STR and text.isprintable() else repr(text)


def child(path: str, key: str) -> str:
    shown = key if PLAIN_KEY.fullmatch(key) else repr(short(key))
    return f"{path}.{shown}" if path else shown


def short(value: object) -> str:
    text = str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def optional(fields: Fields, key: str, path: str, parse: Callable[[Node, str], _T]) -> _T | None:
    """Parse an optional field; a null value counts as leaving it out."""
    pair = fields.get(key)
    if pair is None or tagged(pair[1], NULL):
        return None
    return parse(pair[1], child(path, key))


def variables(node: Node, path: str, parse: Callable[[Node, str], _T]) -> dict[str, _T]:
    """A mapping of variable names (like FOO_BAR) to values: an ``env`` or a matrix."""
    fields = mapping(node, path)
    if len(fields) > MAX_VARIABLES:
        fail(node, path, f"expected {MAX_VARIABLES} variables or fewer, got {len(fields)}")
    result: dict[str, _T] = {}
    for key, (key_node, value_node) in fields.items():
        if not _VARIABLE.fullmatch(key):
            message = f"expected a variable name like FOO_BAR, got {short(key)!r}"
            fail(key_node, child(path, key), message)
        result[key] = parse(value_node, child(path, key))
    return result


def single_line(text: str) -> bool:
    return bool(text.strip()) and text.splitlines() == [text]
