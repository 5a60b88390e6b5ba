"""What narwhal.yml asks of containers: images, `services:` sidecars and `resources:` limits.

Only the Docker executor acts on these; the parsers here check them up
front anyway, so a typo fails at ``load`` with its line, not when a job
reaches a runner.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass

from yaml.nodes import Node, SequenceNode

from narwhal.yamlnodes import (
    INT,
    STR,
    TAG,
    describe,
    fail,
    line_of,
    mapping,
    optional,
    sequence,
    string,
    tagged,
    text_value,
    variables,
)

MAX_SERVICES = 16
MIN_MEMORY = 6 << 20  # the Docker engine refuses less
MAX_MEMORY = 1 << 40
MAX_CPUS = 1024
MAX_PIDS = 1 << 22

_IMAGE = re.compile(r"\S+")
_SERVICE_KEYS = ("name", "image", "env", "command")
_RESOURCE_KEYS = ("memory", "cpus", "pids")
# A service name is the host name the steps reach it by: one DNS label.
_HOSTNAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_MEMORY = re.compile(r"([0-9]{1,15})([kmg]?)b?", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


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


def parse_image(node: Node, path: str) -> str:
    """An image reference: any text without blanks (the engine judges the rest)."""
    return string(node, path, "an image like alpine:3.19", _IMAGE.fullmatch)


def parse_services(node: Node, path: str) -> tuple[Service, ...]:
    """A `services:` list; names are unique, being the steps' host names."""
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
        image=parse_image(fields["image"][1], f"{path}.image"),
        env=optional(fields, "env", path, _env) or {},
        command=optional(fields, "command", path, _argv),
        line=line_of(node.start_mark),
    )


def _env(node: Node, path: str) -> dict[str, str]:
    return variables(node, path, text_value)


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


def parse_resources(node: Node, path: str) -> Resources:
    """A `resources:` mapping (`memory`, `cpus`, `pids`), each within the engine's bounds."""
    fields = mapping(node, path, _RESOURCE_KEYS)
    return Resources(
        memory=optional(fields, "memory", path, _memory),
        cpus=optional(fields, "cpus", path, _cpus),
        pids=optional(fields, "pids", path, _pids),
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
