"""narwhal.yml: the original format, every extension, and every error message."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from narwhal.errors import PipelineError
from narwhal.pipeline import (
    MAX_FILE_BYTES,
    Pipeline,
    PipelineFile,
    load,
    load_path,
    parse_duration,
)
from narwhal.pipeline_when import When

ORIGINAL = """\
name: build
image: busybox
env: {FOO: bar}
steps:
  - name: test
    command: make test
    dependencies: [make]
"""

MATRIX = """\
name: test-${PY}
image: python:${PY}-${OS}
env: {PYVER: "${PY}", SHELL_HOME: "${HOME}"}
matrix:
  PY: ["3.11", 3.12]
  OS: [alpine, slim]
steps:
  - name: test-${PY}
    env: {TAG: "v${PY}-${OS}"}
    commands:
      - python${PY} -m pytest
      - echo $HOME ${UNKNOWN} ${OS}
  - name: lint
    image: ruff:${OS}
    command: ruff check
"""


def yml(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def error_of(text: str | bytes) -> str:
    with pytest.raises(PipelineError) as caught:
        load(text)
    message = str(caught.value)
    assert len(message.splitlines()) == 1
    return message


def only(text: str) -> Pipeline:
    pipeline_file = load(yml(text))
    assert pipeline_file.variants == ({},)
    return pipeline_file.pipeline()


# --- the original format -------------------------------------------------------------


def test_original_format_still_loads() -> None:
    pipeline_file = load(ORIGINAL)
    assert pipeline_file.filename == "narwhal.yml"
    assert pipeline_file.variants == ({},)
    pipeline = pipeline_file.pipeline()
    assert (pipeline.name, pipeline.image, pipeline.env) == ("build", "busybox", {"FOO": "bar"})
    assert (pipeline.timeout, pipeline.when, pipeline.variant) == (None, When(), {})
    (step,) = pipeline.steps
    assert step.name == "test"
    assert step.commands == ("make test",)
    assert step.image == "busybox"
    assert step.env == {"FOO": "bar"}
    assert step.dependencies == ("make",)
    assert (step.timeout, step.allow_failure, step.when, step.line) == (None, False, When(), 5)


def test_bytes_and_a_utf8_bom_load_like_text() -> None:
    assert load(b"\xef\xbb\xbf" + ORIGINAL.encode()).pipeline() == load(ORIGINAL).pipeline()


def test_crlf_line_endings_load_with_the_same_lines() -> None:
    pipeline = load(ORIGINAL.replace("\n", "\r\n")).pipeline()
    assert pipeline == load(ORIGINAL).pipeline()
    assert error_of("steps:\r\n  - name: a\r\n    command: b\r\n    bogus: 1\r\n").startswith(
        "narwhal.yml:4: steps[0].bogus: unknown key"
    )


def test_every_yaml_example_in_the_docs_loads() -> None:
    docs = Path(__file__).parent.parent / "docs" / "pipeline.md"
    examples = re.findall(r"```yaml\n(.*?)```", docs.read_text(), re.S)
    assert len(examples) >= 2
    for example in examples:
        if "steps:" in example:
            pipeline_file = load(example)
            assert all(pipeline_file.pipeline(v).steps for v in pipeline_file.variants)


def test_defaults_for_a_minimal_file() -> None:
    pipeline = only("steps: [{name: a, command: 'true'}]")
    assert (pipeline.name, pipeline.image, pipeline.env) == ("narwhal", None, {})
    assert pipeline.steps[0].image is None


def test_null_means_absent_for_optional_keys() -> None:
    pipeline = only(
        """
        name:
        env:
        when:
        matrix:
        steps:
          - name: a
            command: x
            timeout:
            allow_failure:
            when: {branch: ~}
        """
    )
    assert (pipeline.name, pipeline.env, pipeline.when) == ("narwhal", {}, When())
    assert (pipeline.steps[0].timeout, pipeline.steps[0].allow_failure) == (None, False)


# --- extensions ----------------------------------------------------------------------


def test_every_step_key() -> None:
    pipeline = only(
        """
        image: alpine:3.19
        env: {FOO: pipeline, KEEP: kept}
        timeout: 1h
        when: {event: push}
        steps:
          - name: build
            image: golang:1.22
            env: {FOO: step, EXTRA: 1}
            commands:
              - go build ./...
              - |
                echo multi
                echo line
            timeout: 10m
            allow_failure: yes
            when: {branch: [main, "release/*"], event: [push, tag]}
            dependencies: [make, build-base, python3=3.11.2]
          - name: plain
            command: make
        """
    )
    build, plain = pipeline.steps
    assert build.image == "golang:1.22"
    assert build.env == {"FOO": "step", "KEEP": "kept", "EXTRA": "1"}
    assert build.commands == ("go build ./...", "echo multi\necho line\n")
    assert (build.timeout, build.allow_failure) == (600.0, True)
    assert build.when == When(branch=("main", "release/*"), event=("push", "tag"))
    assert build.dependencies == ("make", "build-base", "python3=3.11.2")
    assert build.line == 6
    assert (plain.image, plain.env, plain.line) == (
        "alpine:3.19",
        {"FOO": "pipeline", "KEEP": "kept"},
        18,
    )
    assert (pipeline.timeout, pipeline.when) == (3600.0, When(event=("push",)))


def test_env_values_become_the_text_as_written() -> None:
    pipeline = only(
        """
        env: {A: true, B: no, C: 3.10, D: 010, E: 2024-01-01, F: "x y", G: 1e3}
        steps: [{name: a, command: b}]
        """
    )
    expected = {"A": "true", "B": "false", "C": "3.10", "D": "010", "E": "2024-01-01"}
    assert pipeline.env == {**expected, "F": "x y", "G": "1e3"}


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("10m", 600), ("30s", 30), ("1h30m", 5400), ("90s", 90), (90, 90), ("90", 90), ("2h", 7200),
     ("1h1m1s", 3661), (" 5m ", 300), ("168h", 604800)],
)  # fmt: skip
def test_parse_duration(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("soon", "expected a duration like 10m, got 'soon'"),
        ("", "expected a duration like 10m, got ''"),
        (0, "expected a positive duration like 10m, got 0"),
        ("0s", "expected a positive duration like 10m, got '0s'"),
        (-1, "expected a positive duration like 10m, got -1"),
        ("-1", "expected a duration like 10m, got '-1'"),
        ("1m1h", "expected a duration like 10m, got '1m1h'"),
        ("10 m", "expected a duration like 10m, got '10 m'"),
        (1.5, "expected a duration like 10m, got 1.5"),
        (True, "expected a duration like 10m, got True"),
        (None, "expected a duration like 10m, got None"),
        ("169h", "expected a duration of at most 168h, got '169h'"),
        (10**30, "expected a duration of at most 168h, got more"),
        ("9" * 13, "expected a duration like 10m, got '9999999999999'"),
    ],
)
def test_parse_duration_rejects(value: object, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_duration(value)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("when", "branch", "event", "matches"),
    [
        (When(), None, None, True),
        (When(), "main", "push", True),
        (When(branch=("main",)), "main", None, True),
        (When(branch=("main",)), "mainline", "push", False),
        (When(branch=("release/*",)), "release/1.0", "push", True),
        (When(branch=("release/*",)), "feature/x", "push", False),
        (When(branch=("v[0-9]*",)), "v2", None, True),
        (When(branch=("main", "dev")), "dev", None, True),
        (When(branch=("main",)), None, "push", False),
        (When(event=("push", "pull_*")), "x", "pull_request", True),
        (When(event=("push",)), "main", "tag", False),
        (When(event=("push",)), "main", None, False),
        (When(branch=("Main",)), "main", "push", False),
        (When(branch=("main",), event=("tag",)), "main", "push", False),
        (When(branch=("main",), event=("tag",)), "main", "tag", True),
    ],
)
def test_when_matches_globs(
    when: When, branch: str | None, event: str | None, matches: bool
) -> None:
    assert when.matches(branch=branch, event=event) is matches


def test_when_accepts_a_single_string_per_filter() -> None:
    pipeline = only(
        """
        when: {branch: main, event: push}
        steps: [{name: a, command: b, when: {branch: "feature/*"}}]
        """
    )
    assert pipeline.when == When(branch=("main",), event=("push",))
    assert pipeline.steps[0].when == When(branch=("feature/*",))


# --- matrix --------------------------------------------------------------------------


def test_matrix_is_a_cartesian_product_in_file_order() -> None:
    assert load(MATRIX).variants == (
        {"PY": "3.11", "OS": "alpine"},
        {"PY": "3.11", "OS": "slim"},
        {"PY": "3.12", "OS": "alpine"},
        {"PY": "3.12", "OS": "slim"},
    )


def test_matrix_substitutes_every_string_field() -> None:
    pipeline = load(MATRIX).pipeline({"PY": "3.12", "OS": "slim"})
    assert pipeline.variant == {"PY": "3.12", "OS": "slim"}
    assert (pipeline.name, pipeline.image) == ("test-3.12", "python:3.12-slim")
    assert pipeline.env == {"PYVER": "3.12", "SHELL_HOME": "${HOME}"}
    test, lint = pipeline.steps
    assert (test.name, test.image) == ("test-3.12", "python:3.12-slim")
    assert test.env == {"PYVER": "3.12", "SHELL_HOME": "${HOME}", "TAG": "v3.12-slim"}
    assert test.commands == ("python3.12 -m pytest", "echo $HOME ${UNKNOWN} slim")
    assert (lint.name, lint.image, lint.commands) == ("lint", "ruff:slim", ("ruff check",))


def test_matrix_defaults_to_the_first_variant_and_keeps_the_template() -> None:
    pipeline_file = load(MATRIX)
    assert pipeline_file.pipeline().variant == {"PY": "3.11", "OS": "alpine"}
    assert pipeline_file.template.steps[0].name == "test-${PY}"


def test_matrix_include_lists_combinations() -> None:
    pipeline_file = load(
        yml(
            """
            matrix:
              include:
                - {GO: "1.21", DB: postgres}
                - {GO: "1.22"}
            steps: [{name: "go${GO}-${DB}", command: go test}]
            """
        )
    )
    assert pipeline_file.variants == ({"GO": "1.21", "DB": "postgres"}, {"GO": "1.22"})
    names = [pipeline_file.pipeline(v).steps[0].name for v in pipeline_file.variants]
    assert names == ["go1.21-postgres", "go1.22-${DB}"]


def test_substituted_values_are_not_substituted_again() -> None:
    pipeline_file = load("matrix: {A: ['${B}'], B: [b]}\nsteps: [{name: x, command: '${A}'}]")
    assert pipeline_file.pipeline().steps[0].commands == ("${B}",)


def test_unknown_variant_is_an_error() -> None:
    pipeline_file = load(MATRIX)
    with pytest.raises(PipelineError) as caught:
        pipeline_file.pipeline({"PY": "3.13", "OS": "slim"})
    expected = (
        "narwhal.yml:4: matrix: expected one of the 4 combinations, "
        "got {'PY': '3.13', 'OS': 'slim'}"
    )
    assert str(caught.value) == expected
    with pytest.raises(PipelineError, match=r"^narwhal.yml:1: matrix: expected one of the 1 comb"):
        load(ORIGINAL).pipeline({"PY": "3.13"})


def test_exactly_256_combinations_are_allowed() -> None:
    values = list(range(16))
    pipeline_file = load(f"matrix: {{A: {values}, B: {values}}}\nsteps: [{{name: x, command: y}}]")
    assert len(pipeline_file.variants) == 256
    assert isinstance(pipeline_file, PipelineFile)


# --- errors --------------------------------------------------------------------------

STEP = "steps: [{name: a, command: b}]\n"

ERRORS = [
    pytest.param(
        """
        steps:
          - name: build
            command: make
          - name: test
            command: make test
            allow_failure: true
            timeout: soon
        """,
        "narwhal.yml:7: steps[1].timeout: expected a duration like 10m, got 'soon'",
        id="bad-timeout",
    ),
    pytest.param("", "narwhal.yml:1: file is empty; expected a mapping with 'steps'", id="empty"),
    pytest.param(
        "# only a comment\n",
        "narwhal.yml:1: file is empty; expected a mapping with 'steps'",
        id="only-comments",
    ),
    pytest.param(
        "- name: a\n",
        "narwhal.yml:1: expected a mapping at the top level, got a list",
        id="top-level-list",
    ),
    pytest.param(
        "just text\n",
        "narwhal.yml:1: expected a mapping at the top level, got 'just text'",
        id="top-level-scalar",
    ),
    pytest.param(
        "steps: [{name: a, command: b}\n",
        "narwhal.yml:2: invalid YAML: while parsing a flow sequence: expected ',' or ']', "
        "but got '<stream end>'",
        id="yaml-syntax",
    ),
    pytest.param(
        "name: a\n  image: b\nsteps: []\n",
        "narwhal.yml:2: invalid YAML: mapping values are not allowed here",
        id="yaml-bad-indent",
    ),
    pytest.param(
        "a: 1\n---\nb: 2\n",
        "narwhal.yml:2: invalid YAML: expected a single document "
        "in the stream: but found another document",
        id="two-documents",
    ),  # fmt: skip
    pytest.param(
        "name: x\n", "narwhal.yml:1: steps: missing; expected a list of steps", id="no-steps"
    ),
    pytest.param(
        "steps: []\n",
        "narwhal.yml:1: steps: expected a non-empty list of steps, got []",
        id="empty-steps",
    ),  # fmt: skip
    pytest.param(
        "steps:\n", "narwhal.yml:1: steps: expected a list of steps, got null", id="null-steps"
    ),
    pytest.param(
        "steps: {name: a}\n",
        "narwhal.yml:1: steps: expected a list of steps, got a mapping",
        id="steps-mapping",
    ),
    pytest.param(
        "steps: [make]\n",
        "narwhal.yml:1: steps[0]: expected a mapping, got 'make'",
        id="step-string",
    ),
    pytest.param(
        "nmae: x\n" + STEP,
        "narwhal.yml:1: nmae: unknown key 'nmae'; did you mean 'name'?",
        id="unknown-top-level-close",
    ),
    pytest.param(
        STEP + "volumes: [db]\n",
        "narwhal.yml:2: volumes: unknown key 'volumes'; "
        "expected one of name, image, env, timeout, when, matrix, steps, services, resources, "
        "priority",
        id="unknown-top-level",
    ),
    pytest.param(
        """
        steps:
          - name: a
            command: b
            comand: c
        """,
        "narwhal.yml:4: steps[0].comand: unknown key 'comand'; did you mean 'command'?",
        id="unknown-step-key",
    ),
    pytest.param(
        """
        steps:
          - name: a
            command: b
            when:
              branch: main
              events: [push]
        """,
        "narwhal.yml:6: steps[0].when.events: unknown key 'events'; did you mean 'event'?",
        id="unknown-when-key",
    ),
    pytest.param(
        "when: {tag: v1}\n" + STEP,
        "narwhal.yml:1: when.tag: unknown key 'tag'; expected one of branch, event",
        id="unknown-pipeline-when-key",
    ),
    pytest.param(
        """
        steps:
          - name: a
            command: make
            commands: [make]
        """,
        "narwhal.yml:4: steps[0].commands: expected 'command' (a string) or 'commands' (a list), "
        "got both",
        id="command-and-commands",
    ),
    pytest.param(
        """
        steps:
          - name: ok
            command: make
          - name: a
            image: alpine
        """,
        "narwhal.yml:4: steps[1]: expected 'command' (a string) or 'commands' (a list), "
        "got neither",
        id="neither-command",
    ),
    pytest.param(
        "steps:\n  - command: make\n",
        "narwhal.yml:2: steps[0].name: missing; expected a step name",
        id="missing-step-name",
    ),
    pytest.param(
        "steps: [{name: '', command: b}]",
        "narwhal.yml:1: steps[0].name: expected a single-line name, got ''",
        id="empty-step-name",
    ),
    pytest.param(
        'steps: [{name: "a\\nb", command: b}]',
        r"narwhal.yml:1: steps[0].name: expected a single-line name, got 'a\nb'",
        id="multi-line-step-name",
    ),
    pytest.param(
        """
        steps:
          - name: test
            command: a
          - name: test
            command: b
        """,
        "narwhal.yml:4: steps[1].name: duplicate step name 'test', already used by steps[0]",
        id="duplicate-step-name",
    ),
    pytest.param(
        """
        matrix: {PY: ["3.11", "3.12"]}
        steps:
          - name: test-3.12
            command: a
          - name: test-${PY}
            command: b
        """,
        "narwhal.yml:5: steps[1].name: duplicate step name 'test-3.12' with matrix "
        "{'PY': '3.12'}, already used by steps[0]",
        id="duplicate-step-name-after-substitution",
    ),
    pytest.param(
        """
        name: a
        steps: []
        name: b
        """,
        "narwhal.yml:3: name: duplicate key (first on line 1)",
        id="duplicate-top-level-key",
    ),
    pytest.param(
        "env:\n  FOO: 1\n  FOO: 2\n" + STEP,
        "narwhal.yml:3: env.FOO: duplicate key (first on line 2)",
        id="duplicate-env-key",
    ),
    pytest.param(
        "name: [a]\n" + STEP,
        "narwhal.yml:1: name: expected a single-line name, got a list",
        id="name-list",
    ),
    pytest.param(
        "image: 3\n" + STEP,
        "narwhal.yml:1: image: expected an image like alpine:3.19, got 3 "
        "(quote it to use it as text)",
        id="image-number",
    ),
    pytest.param(
        "image: alpine latest\n" + STEP,
        "narwhal.yml:1: image: expected an image like alpine:3.19, got 'alpine latest'",
        id="image-space",
    ),
    pytest.param(
        "env: [FOO=bar]\n" + STEP,
        "narwhal.yml:1: env: expected a mapping, got a list",
        id="env-list",
    ),
    pytest.param(
        "env: {FOO: {a: b}}\n" + STEP,
        "narwhal.yml:1: env.FOO: expected a string, number or bool, got a mapping",
        id="env-nested",
    ),
    pytest.param(
        "env:\n  FOO:\n" + STEP,
        "narwhal.yml:2: env.FOO: expected a string, number or bool, got null",
        id="env-null",
    ),
    pytest.param(
        "env: {MY-VAR: x}\n" + STEP,
        "narwhal.yml:1: env.MY-VAR: expected a variable name like FOO_BAR, got 'MY-VAR'",
        id="env-bad-name",
    ),
    pytest.param(
        "timeout: [10m]\n" + STEP,
        "narwhal.yml:1: timeout: expected a duration like 10m, got a list",
        id="timeout-list",
    ),
    pytest.param(
        "steps: [{name: a, command: b, timeout: 0}]",
        "narwhal.yml:1: steps[0].timeout: expected a positive duration like 10m, got 0",
        id="timeout-zero",
    ),
    pytest.param(
        "steps: [{name: a, command: b, timeout: -5}]",
        "narwhal.yml:1: steps[0].timeout: expected a positive duration like 10m, got -5",
        id="timeout-negative",
    ),
    pytest.param(
        "steps: [{name: a, command: b, allow_failure: sometimes}]",
        "narwhal.yml:1: steps[0].allow_failure: expected true or false, got 'sometimes'",
        id="allow-failure-string",
    ),
    pytest.param(
        "steps: [{name: a, command: true}]",
        "narwhal.yml:1: steps[0].command: expected a shell command, got true "
        "(quote it to use it as text)",
        id="command-bool",
    ),
    pytest.param(
        "steps: [{name: a, command: '  '}]",
        "narwhal.yml:1: steps[0].command: expected a shell command, got '  '",
        id="command-blank",
    ),
    pytest.param(
        "steps: [{name: a, commands: make}]",
        "narwhal.yml:1: steps[0].commands: expected a list of commands, got 'make'",
        id="commands-string",
    ),
    pytest.param(
        "steps: [{name: a, commands: []}]",
        "narwhal.yml:1: steps[0].commands: expected a non-empty list of commands, got []",
        id="commands-empty",
    ),
    pytest.param(
        "steps:\n  - name: a\n    commands:\n      - make\n      - [b]\n",
        "narwhal.yml:5: steps[0].commands[1]: expected a command, got a list",
        id="commands-item-list",
    ),
    pytest.param(
        "steps: [{name: a, command: b, when: [main]}]",
        "narwhal.yml:1: steps[0].when: expected a mapping, got a list",
        id="when-list",
    ),
    pytest.param(
        """
        steps:
          - name: a
            command: b
            when:
              branch: [main, dev, 42]
        """,
        "narwhal.yml:5: steps[0].when.branch[2]: expected a glob pattern, got 42 "
        "(quote it to use it as text)",
        id="when-branch-number",
    ),
    pytest.param(
        "when: {event: {push: true}}\n" + STEP,
        "narwhal.yml:1: when.event: expected a glob pattern or a list of them, got a mapping",
        id="when-event-mapping",
    ),
    pytest.param(
        "steps: [{name: a, command: b, dependencies: make}]",
        "narwhal.yml:1: steps[0].dependencies: expected a list of package names, got 'make'",
        id="dependencies-string",
    ),
    pytest.param(
        "steps: [{name: a, command: b, dependencies: [make, --force]}]",
        "narwhal.yml:1: steps[0].dependencies[1]: expected a package name like make, got '--force'",
        id="dependencies-option",
    ),
    pytest.param(
        "matrix: [PY]\n" + STEP,
        "narwhal.yml:1: matrix: expected a mapping, got a list",
        id="matrix-list",
    ),
    pytest.param(
        "matrix: {PY: 3.12}\n" + STEP,
        "narwhal.yml:1: matrix.PY: expected a list of values, got 3.12",
        id="matrix-scalar-axis",
    ),
    pytest.param(
        "matrix: {PY: []}\n" + STEP,
        "narwhal.yml:1: matrix.PY: expected a non-empty list of values, got []",
        id="matrix-empty-axis",
    ),
    pytest.param(
        "matrix:\n  PY: [a, b, a]\n" + STEP,
        "narwhal.yml:2: matrix.PY[2]: duplicate of matrix.PY[0]",
        id="matrix-repeated-value",
    ),
    pytest.param(
        "matrix: {PY: [[3]]}\n" + STEP,
        "narwhal.yml:1: matrix.PY[0]: expected a string, number or bool, got a list",
        id="matrix-nested-value",
    ),
    pytest.param(
        "matrix: {PY: ['']}\n" + STEP,
        "narwhal.yml:1: matrix.PY[0]: expected a single-line value, got ''",
        id="matrix-empty-value",
    ),
    pytest.param(
        "matrix: {py-version: [3]}\n" + STEP,
        "narwhal.yml:1: matrix.py-version: expected a variable name like FOO_BAR, got 'py-version'",
        id="matrix-bad-name",
    ),
    pytest.param(
        "matrix: {A: [1, 2, 3, 4, 5, 6, 7, 8, 9], B: [1, 2, 3, 4, 5, 6, 7, 8, 9], C: [1, 2, 3, 4]}"
        "\n" + STEP,
        "narwhal.yml:1: matrix: expected 256 combinations or fewer, got 324",
        id="too-many-combinations",
    ),
    pytest.param(
        "matrix:\n" + "".join(f"  A{i}: [a, b]\n" for i in range(200)) + STEP,
        "narwhal.yml:2: matrix: expected 256 combinations or fewer, got a million or more",
        id="too-many-combinations-from-many-axes",
    ),
    pytest.param(
        "env:\n" + "".join(f"  E{i}: x\n" for i in range(257)) + STEP,
        "narwhal.yml:2: env: expected 256 variables or fewer, got 257",
        id="too-many-env-variables",
    ),
    pytest.param(
        "steps:\n" + "  - {name: a, command: b}\n" * 1001,
        "narwhal.yml:2: steps: expected 1000 steps or fewer, got 1001",
        id="too-many-steps",
    ),
    pytest.param(
        "matrix: {A: [" + ", ".join(map(str, range(300))) + "]}\n" + STEP,
        "narwhal.yml:1: matrix.A: expected 256 values or fewer, got 300",
        id="too-many-values",
    ),
    pytest.param(
        "matrix:\n  include: [{A: 1}]\n  B: [2]\n" + STEP,
        "narwhal.yml:3: matrix.B: cannot be mixed with 'include'; list every combination there",
        id="include-mixed",
    ),
    pytest.param(
        "matrix: {include: {A: 1}}\n" + STEP,
        "narwhal.yml:1: matrix.include: expected a list of combinations, got a mapping",
        id="include-mapping",
    ),
    pytest.param(
        "matrix:\n  include:\n    - {A: 1, B: 2}\n    - {B: 2, A: 1}\n" + STEP,
        "narwhal.yml:4: matrix.include[1]: duplicate of matrix.include[0]",
        id="include-repeated",
    ),
    pytest.param(
        "matrix:\n  include:\n    - A: [1]\n" + STEP,
        "narwhal.yml:3: matrix.include[0].A: expected a string, number or bool, got a list",
        id="include-list-value",
    ),
    pytest.param(
        "base: &base {name: a, command: b}\nsteps: [*base]\n",
        "narwhal.yml:2: YAML aliases (*name) are not supported; write the value out",
        id="alias",
    ),
    pytest.param(
        'a: &a ["x", "x"]\nb: &b [*a, *a]\nc: &c [*b, *b]\n',
        "narwhal.yml:2: YAML aliases (*name) are not supported; write the value out",
        id="alias-bomb",
    ),
    pytest.param(
        "steps: [" + "1, " * 60_000 + "]\n",
        "narwhal.yml:1: more than 50000 YAML values in one file",
        id="too-many-values-in-the-file",
    ),
    pytest.param(
        "steps: " + "[" * 100 + "]" * 100 + "\n",
        "narwhal.yml:1: nested deeper than 64 levels",
        id="deep-nesting",
    ),
    pytest.param(
        "!!python/object:os.system {}\n",
        "narwhal.yml:1: expected a mapping at the top level, "
        "got a value tagged !!python/object:os.system",
        id="python-tag",
    ),
    pytest.param(
        "steps: [{name: !secret a, command: b}]",
        "narwhal.yml:1: steps[0].name: expected a single-line name, got a value tagged !secret",
        id="custom-tag",
    ),
    pytest.param(
        "? [a, b]\n: c\n", "narwhal.yml:1: expected a string key, got a list", id="list-key"
    ),
    pytest.param(
        "name: a\nsteps:\x00\n",
        "narwhal.yml:2: invalid YAML: unacceptable character #x0000",
        id="nul-character",
    ),
    pytest.param(
        b"name: a\nimage: \xff\n",
        "narwhal.yml:2: not valid UTF-8 (byte 0xff at offset 15)",
        id="bad-utf8",
    ),
    pytest.param(
        STEP + '"line\\nbreak": 1\n',
        "narwhal.yml:2: 'line\\nbreak': unknown key 'line\\nbreak'; "
        "expected one of name, image, env, timeout, when, matrix, steps, services, resources, "
        "priority",
        id="key-with-newline-stays-one-line",
    ),
    pytest.param(
        STEP + '"\\u2028": 1\n',
        "narwhal.yml:2: '\\u2028': unknown key '\\u2028'; "
        "expected one of name, image, env, timeout, when, matrix, steps, services, resources, "
        "priority",
        id="unicode-line-separator-key",
    ),
]


@pytest.mark.parametrize(("text", "message"), ERRORS)
def test_errors_name_file_line_field_and_problem(text: str | bytes, message: str) -> None:
    source = yml(text) if isinstance(text, str) else text
    assert error_of(source) == message


def test_errors_use_the_callers_filename() -> None:
    with pytest.raises(PipelineError, match=r"^ci/narwhal.yml:1: steps: missing"):
        load("name: x", filename="ci/narwhal.yml")


def test_yaml_errors_keep_the_pyyaml_cause() -> None:
    with pytest.raises(PipelineError) as caught:
        load("a: [")
    assert isinstance(caught.value.__cause__, yaml.YAMLError)


def test_oversized_text_is_refused() -> None:
    padding = "#" * MAX_FILE_BYTES
    assert error_of(padding + "\n" + STEP) == "narwhal.yml:1: file is larger than 1 MiB"
    # Under the cap in characters, over it in UTF-8 bytes.
    assert error_of("#" + "é" * (MAX_FILE_BYTES // 2)) == "narwhal.yml:1: file is larger than 1 MiB"
    assert error_of(padding.encode() + b"\n") == "narwhal.yml:1: file is larger than 1 MiB"


def test_a_file_just_under_the_cap_loads() -> None:
    text = STEP + "#" * (MAX_FILE_BYTES - len(STEP) - 1) + "\n"
    assert len(text.encode()) == MAX_FILE_BYTES
    assert load(text).pipeline().steps[0].name == "a"


# --- load_path -----------------------------------------------------------------------


def test_load_path_reads_the_file_and_names_errors_after_it(tmp_path: Path) -> None:
    path = tmp_path / "narwhal.yml"
    path.write_text(ORIGINAL)
    assert load_path(path).pipeline() == load(ORIGINAL).pipeline()
    other = tmp_path / "pipeline.yaml"
    other.write_text("steps: []\n")
    with pytest.raises(PipelineError, match=r"^pipeline.yaml:1: steps: expected a non-empty"):
        load_path(other)


def test_load_path_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PipelineError) as caught:
        load_path(tmp_path / "narwhal.yml")
    assert str(caught.value) == "narwhal.yml: file not found"


def test_load_path_directory(tmp_path: Path) -> None:
    (tmp_path / "narwhal.yml").mkdir()
    with pytest.raises(PipelineError, match=r"^narwhal.yml: cannot read: Is a directory$"):
        load_path(tmp_path / "narwhal.yml")


def test_load_path_oversized_file(tmp_path: Path) -> None:
    path = tmp_path / "narwhal.yml"
    path.write_bytes(b"#" * (3 * MAX_FILE_BYTES))
    with pytest.raises(PipelineError, match=r"^narwhal.yml:1: file is larger than 1 MiB$"):
        load_path(path)


# --- never anything but PipelineError ------------------------------------------------

FRAGMENTS = [
    "steps:", "\n", "  ", "- ", "name: ", "command: ", "commands:", "matrix:", "include:",
    "when:", "branch:", "event:", "env:", "timeout:", "image:", "allow_failure:", "dependencies:",
    "[", "]", "{", "}", ",", ": ", "&a ", "*a", "!!str ", "!!int ", "!!bool ", "!!set ", "!x ",
    "${PY}", "PY", "10m", "soon", "0", "-1", "yes", "null", "~", "'", '"', "|", ">", "#", "---",
    "? ", "1.5", "\t", "\x85", "\u2028", "\ufeff", "<<: ", "%YAML 1.1\n",
]  # fmt: skip
KEYS = st.sampled_from(
    ["name", "image", "env", "timeout", "when", "matrix", "steps", "command", "commands",
     "allow_failure", "dependencies", "branch", "event", "include", "PY", "FOO", "x y"]
)  # fmt: skip
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 10**6),
    st.floats(allow_nan=False),
    st.text(max_size=8),
    st.sampled_from(["10m", "soon", "${PY}", "main", "push", "make", "a${FOO}"]),
)
DOCUMENTS = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=6),
    max_leaves=40,
)
FUZZ = settings(
    max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)


def check_loads_or_refuses(text: str | bytes) -> None:
    try:
        pipeline_file = load(text)
    except PipelineError as error:
        assert str(error).startswith("narwhal.yml:")
        assert len(str(error).splitlines()) == 1
        return
    for variant in pipeline_file.variants:
        steps = pipeline_file.pipeline(variant).steps
        assert len({step.name for step in steps}) == len(steps)


@FUZZ
@given(st.text())
def test_any_text_loads_or_raises_pipeline_error(text: str) -> None:
    check_loads_or_refuses(text)


@FUZZ
@given(st.binary())
def test_any_bytes_load_or_raise_pipeline_error(data: bytes) -> None:
    check_loads_or_refuses(data)


@FUZZ
@given(st.lists(st.sampled_from(FRAGMENTS), max_size=40).map("".join))
def test_yaml_ish_text_loads_or_raises_pipeline_error(text: str) -> None:
    check_loads_or_refuses(text)


@FUZZ
@given(st.dictionaries(KEYS, DOCUMENTS, max_size=8))
def test_yaml_structures_load_or_raise_pipeline_error(document: dict[str, object]) -> None:
    check_loads_or_refuses(yaml.safe_dump(document))


STEPS = st.lists(
    st.fixed_dictionaries(
        {"name": st.sampled_from(["a", "b", "t-${PY}"]), "command": st.just("make")},
        optional={"timeout": SCALARS, "when": DOCUMENTS, "env": DOCUMENTS, "image": SCALARS},
    ),
    min_size=1,
    max_size=3,
)


@FUZZ
@given(STEPS, st.none() | st.dictionaries(st.sampled_from(["PY", "OS"]), st.lists(SCALARS)))
def test_nearly_valid_files_load_or_raise_pipeline_error(
    steps: list[dict[str, object]], matrix: dict[str, object] | None
) -> None:
    check_loads_or_refuses(yaml.safe_dump({"matrix": matrix, "steps": steps}))


# services and resources (used by the Docker executor)

SERVICES = """\
image: app:${PY}
matrix: {PY: ["3.11"]}
resources: {memory: 512m, cpus: 1.5, pids: 256}
services:
  - name: db
    image: postgres:${PY}
    env: {POSTGRES_PASSWORD: pw, V: "${PY}"}
  - name: cache-1
    image: redis
    command: redis-server --save ""
  - name: q
    image: busybox
    command: [sh, -c, "sleep 1000"]
steps:
  - name: test
    command: make
    resources: {memory: 1g}
  - name: lint
    command: ruff
"""


def test_services_and_resources() -> None:
    from narwhal.pipeline_containers import Resources, Service

    pipeline = load(SERVICES).pipeline()
    db, cache, queue = pipeline.services
    assert db == Service(
        name="db",
        image="postgres:3.11",
        env={"POSTGRES_PASSWORD": "pw", "V": "3.11"},
        command=None,
        line=5,
    )
    assert cache.command == ("redis-server", "--save", "")
    assert queue.command == ("sh", "-c", "sleep 1000")
    assert pipeline.resources == Resources(memory=512 << 20, cpus=1.5, pids=256)
    test, lint = pipeline.steps
    assert test.resources == Resources(memory=1 << 30, cpus=1.5, pids=256)
    assert lint.resources == pipeline.resources


def test_no_services_and_no_resources_by_default() -> None:
    from narwhal.pipeline_containers import Resources

    pipeline = load(STEP).pipeline()
    assert pipeline.services == ()
    assert pipeline.resources == Resources() == pipeline.steps[0].resources


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param(
            STEP + "services:\n  - {name: db, image: x}\n  - {name: db, image: y}\n",
            "narwhal.yml:4: services[1].name: duplicate service name 'db', "
            "already used by services[0]",
            id="service-duplicate",
        ),
        pytest.param(
            STEP + "services:\n  - {name: db, image: x, ports: [5432]}\n",
            "narwhal.yml:3: services[0].ports: unknown key 'ports'; "
            "expected one of name, image, env, command",
            id="service-unknown-key",
        ),
        pytest.param(
            STEP + "services:\n  - {image: x}\n",
            "narwhal.yml:3: services[0].name: missing; expected the service's name",
            id="service-without-name",
        ),
        pytest.param(
            STEP + "services:\n  - {name: Data_Base, image: x}\n",
            "narwhal.yml:3: services[0].name: expected a host name like db "
            "(lowercase letters, digits and '-'), got 'Data_Base'",
            id="service-bad-name",
        ),
        pytest.param(
            STEP + 'services:\n  - name: db\n    image: x\n    command: "a \'b"\n',
            "narwhal.yml:5: services[0].command: cannot split into arguments: No closing quotation",
            id="service-bad-command",
        ),
        pytest.param(
            STEP + "services: {db: x}\n",
            "narwhal.yml:2: services: expected a list of services, got a mapping",
            id="services-not-a-list",
        ),
        pytest.param(
            STEP + "resources: {memory: lots}\n",
            "narwhal.yml:2: resources.memory: expected a size like 512m or 2g, got 'lots'",
            id="memory-bad",
        ),
        pytest.param(
            STEP + "resources: {memory: 1m}\n",
            "narwhal.yml:2: resources.memory: expected a size from 6m to 1024g, got '1m'",
            id="memory-too-small",
        ),
        pytest.param(
            STEP + "resources: {cpus: 0}\n",
            "narwhal.yml:2: resources.cpus: expected a number of CPUs like 0.5 or 2, got 0",
            id="cpus-zero",
        ),
        pytest.param(
            STEP + "resources: {pids: 1.5}\n",
            "narwhal.yml:2: resources.pids: expected a whole number of processes, got 1.5",
            id="pids-fraction",
        ),
        pytest.param(
            "steps:\n  - name: a\n    command: b\n    resources: {disk: 1g}\n",
            "narwhal.yml:4: steps[0].resources.disk: unknown key 'disk'; "
            "expected one of memory, cpus, pids",
            id="step-resources-unknown-key",
        ),
    ],
)
def test_service_and_resource_errors(text: str, message: str) -> None:
    assert error_of(text) == message


# priority and what a pipeline asks of a runner (placement)


def test_priority_is_a_whole_number_within_bounds() -> None:
    assert load(STEP).pipeline().priority == 0
    assert load("priority: 5\n" + STEP).pipeline().priority == 5
    assert load("priority: -1000\n" + STEP).pipeline().priority == -1000
    assert load("priority:\n" + STEP).pipeline().priority == 0  # null: unset
    # Every combination of a matrix has the file's priority.
    matrix = load("priority: 3\nmatrix: {X: [a, b]}\n" + STEP)
    assert {matrix.pipeline(v).priority for v in matrix.variants} == {3}


def test_the_priority_bounds_are_the_wire_protocols() -> None:
    from narwhal.mesh import protocol as p
    from narwhal.pipeline import MAX_PRIORITY, MIN_PRIORITY

    assert (MIN_PRIORITY, MAX_PRIORITY) == (p.MIN_PRIORITY, p.MAX_PRIORITY)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param(
            "priority: high\n" + STEP,
            "narwhal.yml:1: priority: expected a whole number from -1000 to 1000, got 'high'",
            id="word",
        ),
        pytest.param(
            "priority: 1.5\n" + STEP,
            "narwhal.yml:1: priority: expected a whole number from -1000 to 1000, got 1.5",
            id="fraction",
        ),
        pytest.param(
            "priority: 1001\n" + STEP,
            "narwhal.yml:1: priority: expected a whole number from -1000 to 1000, got 1001",
            id="too-high",
        ),
        pytest.param(
            STEP + "priority: -5000\n",
            "narwhal.yml:2: priority: expected a whole number from -1000 to 1000, got -5000",
            id="too-low",
        ),
        pytest.param(
            "priority: true\n" + STEP,
            "narwhal.yml:1: priority: expected a whole number from -1000 to 1000, got true",
            id="bool",
        ),
        pytest.param(
            'priority: "5"\n' + STEP,
            "narwhal.yml:1: priority: expected a whole number from -1000 to 1000, got '5'",
            id="quoted",
        ),
        pytest.param(
            "priority: 0x10\n" + STEP,
            "narwhal.yml:1: priority: expected a whole number from -1000 to 1000, got 0x10",
            id="hex",
        ),
        pytest.param(
            "steps:\n  - {name: a, command: b, priority: 1}\n",
            "narwhal.yml:2: steps[0].priority: unknown key 'priority'; expected one of name, "
            "command, commands, image, env, timeout, allow_failure, when, dependencies, "
            "resources",
            id="per-step",
        ),
    ],
)
def test_priority_errors(text: str, message: str) -> None:
    assert error_of(text) == message


def test_demands_are_the_largest_resources_of_any_step() -> None:
    from narwhal.pipeline import Demands

    text = """\
priority: 2
resources: {cpus: 1, memory: 256m}
steps:
  - {name: big, command: x, resources: {cpus: 4}}
  - {name: fat, command: x, resources: {memory: 2g}}
  - {name: plain, command: x}
"""
    assert load(text).pipeline().demands() == Demands(priority=2, cpus=4.0, memory=2 << 30)
    # The pipeline's resources stand for every step that sets none.
    only_pipeline = "resources: {cpus: 0.5}\n" + STEP
    assert load(only_pipeline).pipeline().demands() == Demands(cpus=0.5)
    one_step = (
        "steps:\n  - {name: a, command: b}\n  - {name: c, command: d, resources: {pids: 9}}\n"
    )
    assert load(one_step).pipeline().demands() == Demands()
