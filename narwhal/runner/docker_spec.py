"""What a step or service container looks like: its script, limits and isolation.

Pure functions of the pipeline and the runner's config, so the Docker
executor's session only orchestrates calls to the engine.
"""

from __future__ import annotations

import shlex
from typing import Any, TypeVar

from narwhal.config import RunnerConfig
from narwhal.pipeline import Step
from narwhal.pipeline_containers import Resources
from narwhal.runner.executor import step_script

WORKSPACE = "/workspace"
#: Exit status and message file of a step whose ``dependencies`` could not be installed.
DEPS_EXIT = 86
DEPS_FILE = "/.narwhal-dependencies"

N = TypeVar("N", int, float)


def isolation(requested: Resources, config: RunnerConfig) -> dict[str, Any]:
    """Container options: limits (within the runner's maxima) and the isolation all get.

    Never privileged, no new privileges through setuid binaries, an init
    process as PID 1 so that SIGTERM reaches the step's shell.
    """
    limits = capped(requested, config)
    options: dict[str, Any] = {
        "init": True,
        "privileged": False,
        "security_opt": ["no-new-privileges"],
    }
    if limits.memory is not None:
        options["mem_limit"] = limits.memory
        options["memswap_limit"] = limits.memory  # no swap beyond the limit
    if limits.cpus is not None:
        options["nano_cpus"] = int(limits.cpus * 1e9)
    if limits.pids is not None:
        options["pids_limit"] = limits.pids
    return options


def capped(requested: Resources, config: RunnerConfig) -> Resources:
    """What narwhal.yml asked for, within the runner's maxima (which are also the defaults)."""
    return Resources(
        memory=_least(requested.memory, config.max_memory),
        cpus=_least(requested.cpus, config.max_cpus),
        pids=_least(requested.pids, config.max_pids),
    )


def _least(asked: N | None, most: N | None) -> N | None:
    if asked is None:
        return most
    return asked if most is None else min(asked, most)


def container_script(step: Step) -> str:
    """The shell script a step container runs: stderr into stdout, deps, then the commands."""
    return "exec 2>&1\n" + _deps_script(step.dependencies) + "set -e\n" + step_script(step)


# Runs before the step's commands. Installs nothing when every dependency is
# already a command on PATH (as the local executor checks); a failure writes
# its reason to DEPS_FILE and exits DEPS_EXIT, which the session reads back.
_DEPS = """\
_nw_fail() {{ printf '%s\\n' "$1" > {file}; printf 'narwhal: %s\\n' "$1"; exit {code}; }}
_nw_missing=
for _nw in {quoted}; do command -v "$_nw" >/dev/null 2>&1 || _nw_missing="$_nw_missing $_nw"; done
if [ -n "$_nw_missing" ]; then
  if command -v apk >/dev/null 2>&1; then
    apk add --no-cache -q {quoted} || _nw_fail "installing {names} with apk failed"
  elif command -v apt-get >/dev/null 2>&1; then
    {{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive \\
      apt-get install -y -qq --no-install-recommends {quoted}; }} \\
      || _nw_fail "installing {names} with apt-get failed"
  elif command -v dnf >/dev/null 2>&1; then
    dnf install -y -q {quoted} || _nw_fail "installing {names} with dnf failed"
  else
    _nw_fail "dependency${{_nw_missing}} not found, and the image has none of apk, apt-get, dnf"
  fi
fi
"""


def _deps_script(packages: tuple[str, ...]) -> str:
    if not packages:
        return ""
    quoted = " ".join(shlex.quote(p) for p in packages)
    names = " ".join(packages)  # the parser allows no quotes or '$' in a name
    return _DEPS.format(file=DEPS_FILE, code=DEPS_EXIT, quoted=quoted, names=names)
