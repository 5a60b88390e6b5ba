"""narwhal.yml, the pipeline file at the root of a repository.

`load` validates everything up front; `PipelineFile.pipeline(variant)` then only substitutes
`${VAR}` for one matrix combination. The YAML is composed into nodes, not loaded into objects,
so that every problem can be one `PipelineError` line: `FILE:LINE: FIELD: message`.
"""

from __future__ import annotations

import fnmatch
import itertools
import pathlib
import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TypeVar

from yaml.nodes import MappingNode, Node, SequenceNode

from narwhal.errors import PipelineError
from narwhal.yamlnodes import (
    INT,
    MAX_FILE_BYTES,
    NULL,
    STR,
    TAG,
    Fields,
    Problem,
    boolean,
    child,
    compose,
    decode,
    describe,
    fail,
    line_of,
    mapping,
    one_line,
    sequence,
    short,
    string,
    tagged,
    text_value,
)

MAX_COMBINATIONS = 256
MAX_STEPS = 1000
# Every step gets its own merged env, so steps x variables must stay small.
MAX_VARIABLES = 256
MAX_TIMEOUT = 7 * 24 * 3600

_T = TypeVar("_T")
# Bare seconds, or hours, minutes and seconds in that order: 90, 1h30m, 45s.
_DURATION = re.compile(r"([0-9]{1,12})|(?:([0-9]{1,9})h)?(?:([0-9]{1,9})m)?(?:([0-9]{1,9})s)?")
_VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_IMAGE = re.compile(r"\S+")
# No leading '-', so a package is never taken for an option by apk/apt/dnf.
_PACKAGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+_:=~-]*")
_PIPELINE_KEYS = (
    "name",
    "image",
    "env",
    "timeout",
    "when",
    "matrix",
    "steps",
    "services",
    "resources",
)
_STEP_KEYS = tuple(
    "name command commands image env timeout allow_failure when dependencies resources".split()
)
_SERVICE_KEYS = ("name", "image", "env", "command")
_RESOURCE_KEYS = ("memory", "cpus", "pids")
MAX_SERVICES = 16
# A service name is the host name the steps reach it by: one DNS label.
_HOSTNAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_MEMORY = re.compile(r"([0-9]{1,15})([kmg]?)b?", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
MIN_MEMORY = 6 << 20  # the Docker engine refuses less
MAX_MEMORY = 1 << 40
MAX_CPUS = 1024
MAX_PIDS = 1 << 22
_WHEN_KEYS = ("branch", "event")

_Variants = tuple[dict[str, str], ...]


def parse_duration(value: object) -> float:
    """Seconds in a positive int or in text like `90`, `30s`, `10m`, `1h30m`."""
    seconds = _seconds(value)
    if seconds is None:
        expected = "a duration like 10m"
    elif seconds <= 0:
        expected = "a positive duration like 10m"
    elif seconds <= MAX_TIMEOUT:
        return float(seconds)
    else:
        expected = "a duration of at most 168h"
    # repr() refuses ints of thousands of digits; such a value needs no echo.
    shown = short(repr(value)) if seconds is None or seconds < 10**18 else "more"
    raise ValueError(f"expected {expected}, got {shown}")


def _seconds(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = value.strip() if isinstance(value, str) else ""
    match = _DURATION.fullmatch(text) if text else None
    if match is None:
        return None
    bare, hours, minutes, seconds = (int(group or 0) for group in match.groups())
    return bare + hours * 3600 + minutes * 60 + seconds


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


@dataclass(frozen=True, slots=True, kw_only=True)
class Resources:
    """Limits a container asks for; None: the runner's maximum (or no limit)."""

    memory: int | None = None  # bytes
    cpus: float | None = None
    pids: int | None = None

    def over(self, base: Resources) -> Resources:
        """These limits, with `base`'s where these set none."""
        return Resources(
            memory=base.memory if self.memory is None else self.memory,
            cpus=base.cpus if self.cpus is None else self.cpus,
            pids=base.pids if self.pids is None else self.pids,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Service:
    """A sidecar container (a database, say) that the steps reach by `name`."""

    name: str
    image: str
    env: Mapping[str, str]
    #: Replaces the image's command; None keeps it.
    command: tuple[str, ...] | None
    line: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Step:
    """One step of a pipeline, with the pipeline's image and env folded in."""

    name: str
    commands: tuple[str, ...]
    image: str | None
    env: Mapping[str, str]
    timeout: float | None
    allow_failure: bool
    when: When
    dependencies: tuple[str, ...]
    line: int
    resources: Resources = Resources()


@dataclass(frozen=True, slots=True, kw_only=True)
class Pipeline:
    """The pipeline for one matrix combination (`variant`), ready to run."""

    name: str
    image: str | None
    env: Mapping[str, str]
    steps: tuple[Step, ...]
    timeout: float | None
    when: When
    variant: Mapping[str, str]
    services: tuple[Service, ...] = ()
    resources: Resources = Resources()


@dataclass(frozen=True, slots=True, kw_only=True)
class PipelineFile:
    """A validated narwhal.yml: one job per variant; `template` is before substitution."""

    filename: str
    variants: tuple[Mapping[str, str], ...]
    template: Pipeline = field(repr=False)
    matrix_line: int = field(default=1, repr=False)

    def pipeline(self, variant: Mapping[str, str] | None = None) -> Pipeline:
        """The pipeline for `variant` (default: the first one)."""
        chosen = dict(self.variants[0] if variant is None else variant)
        if chosen not in self.variants:
            expected = f"expected one of the {len(self.variants)} combinations"
            where = f"{self.filename}:{self.matrix_line}: matrix"
            raise PipelineError(one_line(f"{where}: {expected}, got {short(chosen)}"))
        return _apply(self.template, chosen)


def load(text: str | bytes, *, filename: str = "narwhal.yml") -> PipelineFile:
    """Validate a whole narwhal.yml; every problem is a one-line PipelineError."""
    try:
        template, variants, matrix_line = _parse(compose(decode(text)))
    except Problem as problem:
        line, path, message = problem.args
        where = f"{filename}:{line}: {path}: " if path else f"{filename}:{line}: "
        # Keep pyyaml's error as the cause, but not our internal carrier.
        raise PipelineError(one_line(where + message)) from problem.__cause__
    return PipelineFile(
        filename=filename, variants=variants, template=template, matrix_line=matrix_line
    )


def load_path(path: pathlib.Path) -> PipelineFile:
    """Read and `load` a pipeline file; errors name it by `path.name`."""
    return load(read_path(path), filename=path.name)


def read_path(path: pathlib.Path) -> bytes:
    """A pipeline file's bytes, at most one past the size cap; errors name it by `path.name`."""
    try:
        with path.open("rb") as stream:
            # One byte past the cap is enough to refuse an oversized file.
            return stream.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError as error:
        raise PipelineError(f"{path.name}: file not found") from error
    except OSError as error:
        raise PipelineError(f"{path.name}: cannot read: {error.strerror}") from error


def _parse(root: Node | None) -> tuple[Pipeline, _Variants, int]:
    if root is None:
        raise Problem(1, "", "file is empty; expected a mapping with 'steps'")
    if not (isinstance(root, MappingNode) and root.tag == TAG + "map"):
        fail(root, "", f"expected a mapping at the top level, got {describe(root)}")
    fields = mapping(root, "", _PIPELINE_KEYS)
    base = Pipeline(
        name=_optional(fields, "name", "", _name) or "narwhal",
        image=_optional(fields, "image", "", _image),
        env=_optional(fields, "env", "", _env) or {},
        steps=(),
        timeout=_optional(fields, "timeout", "", _timeout),
        when=_optional(fields, "when", "", _when) or When(),
        variant={},
        services=_optional(fields, "services", "", _services) or (),
        resources=_optional(fields, "resources", "", _resources) or Resources(),
    )
    variants = _optional(fields, "matrix", "", _matrix) or ({},)
    template = replace(base, steps=_steps(root, fields, base, variants))
    matrix_line = line_of(fields["matrix"][0].start_mark) if "matrix" in fields else 1
    return template, variants, matrix_line


def _steps(root: Node, fields: Fields, base: Pipeline, variants: _Variants) -> tuple[Step, ...]:
    if "steps" not in fields:
        fail(root, "steps", "missing; expected a list of steps")
    steps: list[Step] = []
    name_nodes: list[Node] = []
    for index, item in enumerate(sequence(fields["steps"][1], "steps", "steps", most=MAX_STEPS)):
        path = f"steps[{index}]"
        step_fields = mapping(item, path, _STEP_KEYS)
        steps.append(_step(step_fields, item, path, base))
        name_nodes.append(step_fields["name"][1])
    for variant in variants:
        _check_unique_names(steps, name_nodes, variant)
    return tuple(steps)


def _step(fields: Fields, node: Node, path: str, base: Pipeline) -> Step:
    if "name" not in fields:
        fail(node, f"{path}.name", "missing; expected a step name")
    return Step(
        name=_name(fields["name"][1], f"{path}.name"),
        commands=_commands(fields, node, path),
        image=_optional(fields, "image", path, _image) or base.image,
        env={**base.env, **(_optional(fields, "env", path, _env) or {})},
        timeout=_optional(fields, "timeout", path, _timeout),
        allow_failure=_optional(fields, "allow_failure", path, boolean) or False,
        when=_optional(fields, "when", path, _when) or When(),
        dependencies=_optional(fields, "dependencies", path, _dependencies) or (),
        line=line_of(node.start_mark),
        resources=(_optional(fields, "resources", path, _resources) or Resources()).over(
            base.resources
        ),
    )


def _check_unique_names(steps: list[Step], name_nodes: list[Node], variant: dict[str, str]) -> None:
    # Checked per combination: `test-${PY}` and `test-3.12` may collide.
    first: dict[str, int] = {}
    for index, step in enumerate(steps):
        name = _substitute(step.name, variant)
        if name in first:
            where = "" if name == step.name else f" with matrix {short(variant)}"
            used = f"already used by steps[{first[name]}]"
            message = f"duplicate step name {short(name)!r}{where}, {used}"
            fail(name_nodes[index], f"steps[{index}].name", message)
        first[name] = index


def _commands(fields: Fields, node: Node, path: str) -> tuple[str, ...]:
    single, many = fields.get("command"), fields.get("commands")
    expected = "expected 'command' (a string) or 'commands' (a list)"
    if single and many:
        later = max(single[0], many[0], key=lambda key: key.start_mark.index)
        fail(later, child(path, later.value), f"{expected}, got both")
    if single:
        return (string(single[1], f"{path}.command", "a shell command"),)
    if not many:
        fail(node, path, f"{expected}, got neither")
    items = enumerate(sequence(many[1], f"{path}.commands", "commands"))
    return tuple(string(cmd, f"{path}.commands[{i}]", "a command") for i, cmd in items)


def _matrix(node: Node, path: str) -> _Variants:
    fields = mapping(node, path)
    if "include" in fields:
        return _include(fields, path)
    axes = _variables(node, path, _axis)
    count = 1
    for values in axes.values():
        # Saturate: the exact product of many axes is slow to compute and too long to print.
        count = min(count * len(values), 10**6)
    if count > MAX_COMBINATIONS:
        shown = count if count < 10**6 else "a million or more"
        fail(node, path, f"expected {MAX_COMBINATIONS} combinations or fewer, got {shown}")
    product = itertools.product(*axes.values())
    return tuple(dict(zip(axes, values, strict=True)) for values in product)


def _include(fields: Fields, matrix: str) -> _Variants:
    other = next((key for key in fields if key != "include"), None)
    if other is not None:
        message = "cannot be mixed with 'include'; list every combination there"
        fail(fields[other][0], child(matrix, other), message)
    path = f"{matrix}.include"
    items = sequence(fields["include"][1], path, "combinations", most=MAX_COMBINATIONS)
    variants = tuple(
        _variables(item, f"{path}[{i}]", _matrix_value) for i, item in enumerate(items)
    )
    _no_repeats(items, variants, path)
    return variants


def _axis(node: Node, path: str) -> tuple[str, ...]:
    items = sequence(node, path, "values", most=MAX_COMBINATIONS)
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
    if not _single_line(value):
        fail(node, path, f"expected a single-line value, got {describe(node)}")
    return value


def _services(node: Node, path: str) -> tuple[Service, ...]:
    services: list[Service] = []
    for index, item in enumerate(sequence(node, path, "services", empty=True, most=MAX_SERVICES)):
        service = _service(item, f"{path}[{index}]")
        first = next((i for i, s in enumerate(services) if s.name == service.name), None)
        if first is not None:
            name_node = mapping(item, "")["name"][1]
            message = f"duplicate service name {service.name!r}, already used by {path}[{first}]"
            fail(name_node, f"{path}[{index}].name", message)
        services.append(service)
    return tuple(services)


def _service(node: Node, path: str) -> Service:
    fields = mapping(node, path, _SERVICE_KEYS)
    for key in ("name", "image"):
        if key not in fields:
            fail(node, f"{path}.{key}", f"missing; expected the service's {key}")
    what = "a host name like db (lowercase letters, digits and '-')"
    return Service(
        name=string(fields["name"][1], f"{path}.name", what, _HOSTNAME.fullmatch),
        image=_image(fields["image"][1], f"{path}.image"),
        env=_optional(fields, "env", path, _env) or {},
        command=_optional(fields, "command", path, _argv),
        line=line_of(node.start_mark),
    )


def _argv(node: Node, path: str) -> tuple[str, ...]:
    if isinstance(node, SequenceNode):
        items = enumerate(sequence(node, path, "arguments"))
        return tuple(string(item, f"{path}[{i}]", "an argument", str) for i, item in items)
    text = string(node, path, "a command (a string or a list of arguments)")
    try:
        argv = shlex.split(text)
    except ValueError as error:
        fail(node, path, f"cannot split into arguments: {error}")
    if not argv:
        fail(node, path, "expected a command, got only spaces")
    return tuple(argv)


def _resources(node: Node, path: str) -> Resources:
    fields = mapping(node, path, _RESOURCE_KEYS)
    return Resources(
        memory=_optional(fields, "memory", path, _memory),
        cpus=_optional(fields, "cpus", path, _cpus),
        pids=_optional(fields, "pids", path, _pids),
    )


def _memory(node: Node, path: str) -> int:
    match = _MEMORY.fullmatch(str(node.value)) if tagged(node, STR, INT) else None
    if match is None:
        fail(node, path, f"expected a size like 512m or 2g, got {describe(node)}")
    size = int(match.group(1)) * _UNITS[match.group(2).lower()]
    if not MIN_MEMORY <= size <= MAX_MEMORY:
        fail(node, path, f"expected a size from 6m to 1024g, got {describe(node)}")
    return size


def _cpus(node: Node, path: str) -> float:
    try:
        cpus = float(node.value) if tagged(node, INT, TAG + "float") else None
    except ValueError:
        cpus = None
    if cpus is None or not 0.01 <= cpus <= MAX_CPUS:
        fail(node, path, f"expected a number of CPUs like 0.5 or 2, got {describe(node)}")
    return cpus


def _pids(node: Node, path: str) -> int:
    if not (tagged(node, INT) and re.fullmatch(r"[0-9]{1,9}", node.value)):
        fail(node, path, f"expected a whole number of processes, got {describe(node)}")
    pids = int(node.value)
    if not 1 <= pids <= MAX_PIDS:
        fail(node, path, f"expected from 1 to {MAX_PIDS} processes, got {pids}")
    return pids


def _when(node: Node, path: str) -> When:
    fields = mapping(node, path, _WHEN_KEYS)
    return When(
        branch=_optional(fields, "branch", path, _patterns) or (),
        event=_optional(fields, "event", path, _patterns) or (),
    )


def _patterns(node: Node, path: str) -> tuple[str, ...]:
    if not isinstance(node, SequenceNode):
        return (string(node, path, "a glob pattern or a list of them"),)
    items = enumerate(sequence(node, path, "glob patterns", empty=True))
    return tuple(string(item, f"{path}[{i}]", "a glob pattern") for i, item in items)


def _dependencies(node: Node, path: str) -> tuple[str, ...]:
    items = enumerate(sequence(node, path, "package names", empty=True))
    what = "a package name like make"
    return tuple(string(it, f"{path}[{i}]", what, _PACKAGE.fullmatch) for i, it in items)


def _env(node: Node, path: str) -> dict[str, str]:
    return _variables(node, path, text_value)


def _variables(node: Node, path: str, parse: Callable[[Node, str], _T]) -> dict[str, _T]:
    fields = mapping(node, path)
    if len(fields) > MAX_VARIABLES:
        fail(node, path, f"expected {MAX_VARIABLES} variables or fewer, got {len(fields)}")
    variables: dict[str, _T] = {}
    for key, (key_node, value_node) in fields.items():
        if not _VARIABLE.fullmatch(key):
            message = f"expected a variable name like FOO_BAR, got {short(key)!r}"
            fail(key_node, child(path, key), message)
        variables[key] = parse(value_node, child(path, key))
    return variables


def _optional(fields: Fields, key: str, path: str, parse: Callable[[Node, str], _T]) -> _T | None:
    """Parse an optional field; a null value counts as leaving it out."""
    pair = fields.get(key)
    if pair is None or tagged(pair[1], NULL):
        return None
    return parse(pair[1], child(path, key))


def _name(node: Node, path: str) -> str:
    return string(node, path, "a single-line name", _single_line)


def _image(node: Node, path: str) -> str:
    return string(node, path, "an image like alpine:3.19", _IMAGE.fullmatch)


def _single_line(text: str) -> bool:
    return bool(text.strip()) and text.splitlines() == [text]


def _timeout(node: Node, path: str) -> float:
    if not tagged(node, STR, INT):
        fail(node, path, f"expected a duration like 10m, got {describe(node)}")
    value: object = node.value
    if node.tag == INT and re.fullmatch(r"[-+]?[0-9]{1,12}", node.value):
        value = int(node.value)  # so `timeout: 0` reads "got 0", not "got '0'"
    try:
        return parse_duration(value)
    except ValueError as error:
        fail(node, path, str(error))


def _substitute(text: str, variant: Mapping[str, str]) -> str:
    if "${" not in text:
        return text
    # Unknown names stay as written so shell variables like ${HOME} still work.
    return _REFERENCE.sub(lambda m: variant.get(m.group(1), m.group(0)), text)


def _apply(template: Pipeline, variant: Mapping[str, str]) -> Pipeline:
    return replace(
        template,
        name=_substitute(template.name, variant),
        image=template.image and _substitute(template.image, variant),
        env={key: _substitute(value, variant) for key, value in template.env.items()},
        steps=tuple(_apply_step(step, variant) for step in template.steps),
        variant=dict(variant),
        services=tuple(_apply_service(service, variant) for service in template.services),
    )


def _apply_service(service: Service, variant: Mapping[str, str]) -> Service:
    return replace(
        service,
        image=_substitute(service.image, variant),
        env={key: _substitute(value, variant) for key, value in service.env.items()},
    )


def _apply_step(step: Step, variant: Mapping[str, str]) -> Step:
    return replace(
        step,
        name=_substitute(step.name, variant),
        commands=tuple(_substitute(command, variant) for command in step.commands),
        image=step.image and _substitute(step.image, variant),
        env={key: _substitute(value, variant) for key, value in step.env.items()},
    )
