"""What a narwhal.yml error may show of the file: the offending key or token, cut short.

A job's reason is readable through the API by people who may not read the
repository, and pyyaml's own messages quote the offending line with a caret
under it. Every error path here gets a file with a marker planted around
the offending spot (in the same line, in the lines around it, past the
40-character cut of a long token): no message may contain it.
"""

from __future__ import annotations

import pytest

from narwhal.errors import PipelineError
from narwhal.pipeline import load

MARK = "PLANTEDMARKER"
#: A token longer than the cut, with the marker past the part that is shown.
LONG = "x" * 40 + MARK
OK_STEP = f"steps: [{{name: a, command: b}}]  # {MARK}\n"

BROKEN = {
    # pyyaml scanner, parser and composer errors
    "tab": f"# {MARK}\nsteps:\n\t- {MARK}\n",
    "bad escape": f'steps: "\\q{MARK}"\n',
    "unclosed quote": f'steps: "{MARK}\n{MARK}\n',
    "mapping values": f"steps: {MARK}: x: y {MARK}\n",
    "block end": f"steps:\n  - a {MARK}\n {MARK}\n",
    "bad character": f"steps: @{MARK}\n",
    "flow sequence": f"steps: [{MARK}, \n",
    "flow mapping": f"steps: {{{MARK}\n",
    "tag": f"steps: !<{MARK} >\n",
    "YAML version": f"%YAML 2.0\n---\n{MARK}: 1\n",
    "second document": f"steps: []\n---\n{MARK}\n",
    "duplicate anchor": f"a: &{LONG} 1\nb: &{LONG} 2 {MARK}\n",
    "duplicate tag handle": f"%TAG !{LONG}! tag:x,2000:\n%TAG !{LONG}! tag:y,2000:\n---\na: 1\n",
    "alias": f"a: &x {MARK}\nsteps: *x\n",
    "NUL in the file": f"steps: [a]\n\x00{MARK}\n",
    "invalid UTF-8": b"steps: [\xff]\n" + MARK.encode(),
    "nested too deep": "a: " + "[" * 70 + MARK + "]" * 70 + "\n",
    # narwhal's own checks: the offending token is shown, cut at 40 characters
    "top-level scalar": f"{LONG}\n",
    "unknown key": f"{LONG}: {MARK}\n{OK_STEP}",
    "duration": f"timeout: {LONG}\n{OK_STEP}",
    "image": f"image: '{LONG} x'\n{OK_STEP}",
    "variable name": f"env: {{'{LONG}-x': {MARK}}}\n{OK_STEP}",
    "NUL in a value": f'env: {{A: "\\0{MARK}"}}\n{OK_STEP}',
    "lone surrogate": f'steps: [{{name: a, command: "\\ud800{MARK}"}}]\n',
    "tagged value": f"steps: !{LONG} x\n",
    "boolean": f"steps: [{{name: a, command: b, allow_failure: {LONG}}}]\n",
    "package": f"steps: [{{name: a, command: b, dependencies: ['--{LONG}']}}]\n",
    "memory": f"resources: {{memory: {LONG}}}\n{OK_STEP}",
    "duplicate step name": f"steps: [{{name: {LONG}, command: b}}, {{name: {LONG}, command: c}}]\n",
    "step not a mapping": f"steps:\n  - name: a\n    command: {MARK}\n  - {LONG}\n",
    "service command": f'services: [{{name: db, image: x, command: "\'{MARK}"}}]\n{OK_STEP}',
    "missing steps": f"name: {MARK}\n",
}


@pytest.mark.parametrize("text", BROKEN.values(), ids=BROKEN.keys())
def test_no_error_shows_the_file_beyond_the_offending_token(text: str | bytes) -> None:
    with pytest.raises(PipelineError) as caught:
        load(text)
    message = str(caught.value)
    assert MARK not in message
    assert "^" not in message  # pyyaml's caret snippet
    assert "\n" not in message and len(message) < 300


def test_a_short_offending_key_is_named() -> None:
    # The one thing of the file an error does show: where it is.
    with pytest.raises(PipelineError, match="unknown key 'imagez'; did you mean 'image'"):
        load(f"imagez: {MARK}\n{OK_STEP}")
