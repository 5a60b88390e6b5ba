"""narwhal.yml, the pipeline file at the root of a repository.

`load` validates everything up front; `PipelineFile.pipeline(variant)` then only substitutes
`${VAR}` for one matrix combination. The YAML is composed into nodes, not loaded into objects,
so that every problem can be one `PipelineError` line: `FILE:LINE: FIELD: message`.

This module holds the file's shape (the pipeline, its steps) and its limits; the parts with
rules of their own have a module each: `pipeline_matrix` (combinations, `${VAR}`),
`pipeline_when` (branch and event filters), `pipeline_containers` (images, services,
resources). The node checks they share are in `yamlnodes`.
"""

from __future__ import annotations

import pathlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from yaml.nodes import MappingNode, Node

from narwhal.errors import PipelineError
from narwhal.pipeline_containers import (
    Resources,
    Service,
    parse_image,
    parse_resources,
    parse_services,
)
from narwhal.pipeline_matrix import Variants, parse_matrix, substitute
from narwhal.pipeline_when import When, parse_when
from narwhal.yamlnodes import (
    INT,
    MAX_FILE_BYTES,
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
    optional,
    sequence,
    short,
    single_line,
    string,
    tagged,
    text_value,
    variables,
)

#: The pipeline file's name, at the root of a repository (and of ``narwhal exec``'s directory).
PIPELINE_FILE = "narwhal.yml"
#: The most jobs one narwhal.yml makes (one per matrix combination).
MAX_COMBINATIONS = 256
MAX_STEPS = 1000
MAX_TIMEOUT = 7 * 24 * 3600
#: ``priority:`` lies within these bounds; the wire protocol's MIN_PRIORITY and
#: MAX_PRIORITY are the same (a leaf module does not import the mesh).
MIN_PRIORITY, MAX_PRIORITY = -1000, 1000

# Bare seconds, or hours, minutes and seconds in that order: 90, 1h30m, 45s.
_DURATION = re.compile(r"([0-9]{1,12})|(?:([0-9]{1,9})h)?(?:([0-9]{1,9})m)?(?:([0-9]{1,9})s)?")
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
    "priority",
)
_STEP_KEYS = tuple(
    "name command commands image env timeout allow_failure when dependencies resources".split()
)


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
    #: Higher runs first when jobs wait (``MIN_PRIORITY``..``MAX_PRIORITY``).
    priority: int = 0

    def demands(self) -> Demands:
        """What the pipeline asks of the runner that takes it (placement weighs it)."""
        cpus = [step.resources.cpus for step in self.steps if step.resources.cpus is not None]
        memory = [s.resources.memory for s in self.steps if s.resources.memory is not None]
        return Demands(
            priority=self.priority,
            cpus=max(cpus) if cpus else None,
            memory=max(memory) if memory else None,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Demands:
    """A pipeline's priority and the most CPUs and memory (bytes) one of its steps asks.

    A step's ``resources`` already hold the pipeline's where it sets none;
    None: no step asks any.
    """

    priority: int = 0
    cpus: float | None = None
    memory: int | None = None


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


def load(text: str | bytes, *, filename: str = PIPELINE_FILE) -> PipelineFile:
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


def _parse(root: Node | None) -> tuple[Pipeline, Variants, int]:
    if root is None:
        raise Problem(1, "", "file is empty; expected a mapping with 'steps'")
    if not (isinstance(root, MappingNode) and root.tag == TAG + "map"):
        fail(root, "", f"expected a mapping at the top level, got {describe(root)}")
    fields = mapping(root, "", _PIPELINE_KEYS)
    base = Pipeline(
        name=optional(fields, "name", "", _name) or "narwhal",
        image=optional(fields, "image", "", parse_image),
        env=optional(fields, "env", "", _env) or {},
        steps=(),
        timeout=optional(fields, "timeout", "", _timeout),
        when=optional(fields, "when", "", parse_when) or When(),
        variant={},
        services=optional(fields, "services", "", parse_services) or (),
        resources=optional(fields, "resources", "", parse_resources) or Resources(),
        priority=optional(fields, "priority", "", _priority) or 0,
    )
    variants = optional(fields, "matrix", "", _matrix) or ({},)
    template = replace(base, steps=_steps(root, fields, base, variants))
    matrix_line = line_of(fields["matrix"][0].start_mark) if "matrix" in fields else 1
    return template, variants, matrix_line


def _steps(root: Node, fields: Fields, base: Pipeline, variants: Variants) -> tuple[Step, ...]:
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
        image=optional(fields, "image", path, parse_image) or base.image,
        env={**base.env, **(optional(fields, "env", path, _env) or {})},
        timeout=optional(fields, "timeout", path, _timeout),
        allow_failure=optional(fields, "allow_failure", path, boolean) or False,
        when=optional(fields, "when", path, parse_when) or When(),
        dependencies=optional(fields, "dependencies", path, _dependencies) or (),
        line=line_of(node.start_mark),
        resources=(optional(fields, "resources", path, parse_resources) or Resources()).over(
            base.resources
        ),
    )


def _check_unique_names(steps: list[Step], name_nodes: list[Node], variant: dict[str, str]) -> None:
    # Checked per combination: `test-${PY}` and `test-3.12` may collide.
    first: dict[str, int] = {}
    for index, step in enumerate(steps):
        name = substitute(step.name, variant)
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


def _matrix(node: Node, path: str) -> Variants:
    return parse_matrix(node, path, most=MAX_COMBINATIONS)


def _env(node: Node, path: str) -> dict[str, str]:
    return variables(node, path, text_value)


def _dependencies(node: Node, path: str) -> tuple[str, ...]:
    items = enumerate(sequence(node, path, "package names", empty=True))
    what = "a package name like make"
    return tuple(string(it, f"{path}[{i}]", what, _PACKAGE.fullmatch) for i, it in items)


def _name(node: Node, path: str) -> str:
    return string(node, path, "a single-line name", single_line)


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


def _priority(node: Node, path: str) -> int:
    expected = f"a whole number from {MIN_PRIORITY} to {MAX_PRIORITY}"
    if not (tagged(node, INT) and re.fullmatch(r"[-+]?[0-9]{1,12}", node.value)):
        fail(node, path, f"expected {expected}, got {describe(node)}")
    priority = int(node.value)
    if not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        fail(node, path, f"expected {expected}, got {priority}")
    return priority


def _apply(template: Pipeline, variant: Mapping[str, str]) -> Pipeline:
    return replace(
        template,
        name=substitute(template.name, variant),
        image=template.image and substitute(template.image, variant),
        env={key: substitute(value, variant) for key, value in template.env.items()},
        steps=tuple(_apply_step(step, variant) for step in template.steps),
        variant=dict(variant),
        services=tuple(_apply_service(service, variant) for service in template.services),
    )


def _apply_service(service: Service, variant: Mapping[str, str]) -> Service:
    return replace(
        service,
        image=substitute(service.image, variant),
        env={key: substitute(value, variant) for key, value in service.env.items()},
    )


def _apply_step(step: Step, variant: Mapping[str, str]) -> Step:
    return replace(
        step,
        name=substitute(step.name, variant),
        commands=tuple(substitute(command, variant) for command in step.commands),
        image=step.image and substitute(step.image, variant),
        env={key: substitute(value, variant) for key, value in step.env.items()},
    )
