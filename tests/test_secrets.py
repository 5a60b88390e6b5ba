"""Per-repository secrets end to end: ``narwhal up`` as a subprocess, real git
repositories, the ``narwhal secrets`` CLI, signed GitHub webhooks."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import secrets
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.daemons import Client, Daemon
from tests.support.repos import Repo, git
from tests.support.webhooks import SECRET, github_request, recorded

Up = Callable[..., tuple[Daemon, Client]]
MakeRepo = Callable[..., Repo]

#: Prints the secret (the log must show it masked), its sha256 (proves the
#: value is exactly right), or that it is absent. The step's ``env`` tries to
#: shadow it and must lose.
PROBE = """\
steps:
  - name: probe
    env: {API_TOKEN: from-the-pipeline}
    commands:
      - 'echo "repo secret: $API_TOKEN"'
      - 'printf %s "$API_TOKEN" | sha256sum | sed "s/^/digest=/"'
"""
ABSENT = """\
steps:
  - name: probe
    command: 'test -n "${API_TOKEN+x}" && echo API_TOKEN present || echo API_TOKEN absent'
"""


def _value() -> str:
    return "s3cret-" + secrets.token_hex(16)


def _digest(value: str) -> str:
    return f"digest={hashlib.sha256(value.encode()).hexdigest()}"


def narwhal(daemon: Daemon, *args: str, stdin: str | None = "") -> subprocess.CompletedProcess[str]:
    """A ``narwhal`` client command against ``daemon``, with ``stdin`` as its input."""
    return subprocess.run(
        [sys.executable, "-m", "narwhal", *args, "--server", daemon.url],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ,
    )


def _set(daemon: Daemon, repo: Repo | str, name: str, value: str) -> None:
    done = narwhal(daemon, "secrets", "set", str(getattr(repo, "path", repo)), name, stdin=value)
    assert done.returncode == 0, done.stderr


def _data_files(tmp_path: Path) -> list[Path]:
    return [p for p in (tmp_path / "data0").iterdir() if p.name.startswith("narwhal.db")]


def test_a_secret_reaches_its_repositorys_steps_masked_and_no_other(
    narwhal_up: Up, make_repo: MakeRepo, tmp_path: Path
) -> None:
    daemon, api = narwhal_up()
    repo, other = make_repo({"narwhal.yml": PROBE}), make_repo({"narwhal.yml": ABSENT})
    value = _value()
    # Set from stdin with the newline echo adds; set twice: the second replaces.
    _set(daemon, repo, "API_TOKEN", "first-value\n")
    done = narwhal(daemon, "secrets", "set", str(repo.path), "API_TOKEN", stdin=value + "\n")
    assert done.returncode == 0 and "replaced secret API_TOKEN" in done.stderr
    job = api.wait(api.submit(repo))
    log = api.log(job["id"])
    assert job["state"] == "success", log
    assert "repo secret: ********" in log and value not in log
    assert _digest(value) in log  # the step had exactly the value, without the newline
    assert "from-the-pipeline" not in log
    other_job = api.wait(api.submit(other))
    assert "API_TOKEN absent" in api.log(other_job["id"])
    # Nothing the API answers holds the value.
    answers = [
        api.http.get("/api/secrets", params={"repo": str(repo.path)}),
        api.http.get("/api/jobs"),
        api.http.get(f"/api/jobs/{job['id']}"),
        api.http.get(f"/api/jobs/{job['id']}/logs"),
        api.http.get("/api/runners"),
        api.http.get("/health"),
    ]
    for answer in answers:
        assert answer.status_code == 200 and value not in answer.text, answer.url
    listing = answers[0].json()
    assert listing["repo"] == str(repo.path) and listing["forks"] is False
    assert [s["name"] for s in listing["secrets"]] == ["API_TOKEN"]
    assert set(listing["secrets"][0]) == {"name", "created_at", "updated_at"}
    shown = narwhal(daemon, "secrets", "list", str(repo.path))
    assert shown.returncode == 0 and "API_TOKEN" in shown.stdout and value not in shown.stdout
    # At rest: neither the database nor its WAL holds it; the key is private.
    files = _data_files(tmp_path)
    assert {p.name for p in files} >= {"narwhal.db", "narwhal.db-wal"}
    for path in files:
        assert value.encode() not in path.read_bytes(), path
    key = tmp_path / "data0" / "secrets.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    assert not any(value in line for line in daemon.stderr_lines)
    # Deleted: the next job of the repository no longer gets it.
    gone = narwhal(daemon, "secrets", "delete", str(repo.path), "API_TOKEN")
    assert gone.returncode == 0, gone.stderr
    after = api.wait(api.submit(repo))
    log = api.log(after["id"])
    assert _digest(value) not in log and _digest("from-the-pipeline") in log


def test_a_secret_survives_a_restart(narwhal_up: Up, make_repo: MakeRepo, tmp_path: Path) -> None:
    daemon, api = narwhal_up()
    repo, value = make_repo({"narwhal.yml": PROBE}), _value()
    _set(daemon, repo, "API_TOKEN", value)
    daemon.stop()
    again = Daemon(daemon.args)  # same data dir, same key
    try:
        client = Client(again.url)
        job = client.wait(client.submit(repo))
        assert _digest(value) in client.log(job["id"])
        client.close()
    finally:
        again.stop()


def _pull_request(base: Repo, head: Repo, sha: str, *, fork: bool) -> dict[str, Any]:
    """The recorded pull_request opened, from ``head`` into ``base`` (local repositories).

    A fork has another id and name; its clone URL is ``head``'s, which may be
    the base's own (a forge serving a fork's commits from the base repository).
    """
    payload = copy.deepcopy(recorded("pull_request_opened.payload.json"))
    payload["repository"]["clone_url"] = str(base.path)
    payload["pull_request"]["base"]["repo"]["clone_url"] = str(base.path)
    head_repo = payload["pull_request"]["head"]["repo"]
    head_repo["clone_url"] = str(head.path)
    if fork:
        head_repo.update(id=head_repo["id"] + 1, full_name="attacker/Hello-World", fork=True)
    payload["pull_request"]["head"].update(sha=sha, ref="main")
    return payload


def _webhook_job(daemon: Daemon, api: Client, payload: dict[str, Any]) -> dict[str, Any]:
    body, headers = github_request("pull_request", payload)
    answer = httpx.post(f"{daemon.url}/webhooks/github", content=body, headers=headers, timeout=30)
    assert answer.status_code == 200 and answer.json()["status"] == "queued", answer.text
    sha, repo = payload["pull_request"]["head"]["sha"], payload["pull_request"]["head"]["repo"]
    return api.wait_for_sha(sha, repo=repo["clone_url"])


def test_pull_requests_from_forks_get_secrets_only_when_the_repository_allows_it(
    narwhal_up: Up, make_repo: MakeRepo, tmp_path: Path
) -> None:
    hook_secret = tmp_path / "github-secret"
    hook_secret.write_text(SECRET + "\n")
    daemon, api = narwhal_up("--github-secret-file", str(hook_secret))
    base, fork = make_repo({"narwhal.yml": PROBE}), make_repo({"narwhal.yml": PROBE})
    value = _value()
    _set(daemon, base, "API_TOKEN", value)

    def pull_request(head: Repo, *, is_fork: bool) -> tuple[dict[str, Any], str]:
        sha = head.commit({"change.txt": secrets.token_hex(8)})  # a new body each time
        job = _webhook_job(daemon, api, _pull_request(base, head, sha, fork=is_fork))
        assert job["state"] == "success", job
        return job, api.log(job["id"])

    job, log = pull_request(fork, is_fork=True)
    assert job["fork_of"] == str(base.path) and job["repo"] == str(fork.path)
    assert _digest(value) not in log and _digest("from-the-pipeline") in log
    # A fork's commit cloned from the base repository's own URL gets nothing either.
    job, log = pull_request(base, is_fork=True)
    assert job["fork_of"] == str(base.path) and job["repo"] == str(base.path)
    assert _digest(value) not in log and _digest("from-the-pipeline") in log
    job, log = pull_request(base, is_fork=False)  # from a branch of the repository itself
    assert job["fork_of"] is None and _digest(value) in log

    allowed = narwhal(daemon, "secrets", "forks", str(base.path), "on")
    assert allowed.returncode == 0, allowed.stderr
    _, log = pull_request(fork, is_fork=True)
    assert _digest(value) in log and value not in log
    assert narwhal(daemon, "secrets", "forks", str(base.path), "off").returncode == 0
    _, log = pull_request(fork, is_fork=True)
    assert _digest(value) not in log


@pytest.mark.parametrize(
    ("args", "stdin", "error"),
    [
        (["set", "{repo}", "1BAD"], "value-1234", "secret '1BAD': expected a variable name"),
        (["set", "{repo}", "API_TOKEN"], "", "secret API_TOKEN: no value on stdin"),
        (["set", "{repo}", "API_TOKEN"], "\n", "secret API_TOKEN: no value on stdin"),
        (["set", "{repo}", "API_TOKEN"], "abc\n", "secret API_TOKEN: shorter than 4"),
        (["set", "{repo}", "API_TOKEN"], "x" * 9000, "secret API_TOKEN: larger than 8192"),
        (["set", "no/such/dir", "API_TOKEN"], "value-1234", "no/such/dir: no such directory"),
        (["delete", "{repo}", "NEVER_SET"], None, "404 {repo} has no secret NEVER_SET"),
        (["forks", "{repo}", "maybe"], None, "secrets forks: expected on or off, got 'maybe'"),
    ],
)
def test_bad_cli_input_gets_one_line_and_exit_2(
    narwhal_up: Up, make_repo: MakeRepo, args: list[str], stdin: str | None, error: str
) -> None:
    daemon, _ = narwhal_up()
    repo = make_repo({"narwhal.yml": PROBE})
    argv = [a.replace("{repo}", str(repo.path)) for a in args]
    done = narwhal(daemon, "secrets", *argv, stdin=stdin)
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and error.replace("{repo}", str(repo.path)) in lines[0], done.stderr


def test_the_value_is_never_read_from_the_command_line(narwhal_up: Up) -> None:
    daemon, _ = narwhal_up()
    done = narwhal(daemon, "secrets", "set", "/srv/r", "API_TOKEN", "the-value")
    assert done.returncode == 2 and "unrecognized arguments: the-value" in done.stderr


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"repo": "/srv/r", "name": "API_TOKEN"}, "value: expected a non-empty string"),
        ({"repo": "/srv/r", "name": "API_TOKEN", "value": 1234}, "value: expected"),
        ({"repo": "/srv/r", "name": "API_TOKEN", "value": "nul\u0000-{v}"}, "NUL byte"),
        ({"repo": "/srv/r", "name": "BAD NAME", "value": "{v}"}, "expected a variable name"),
        ({"repo": "-oProxyCommand=x", "name": "API_TOKEN", "value": "{v}"}, "repo: expected"),
        ({"repo": "rel/path", "name": "API_TOKEN", "value": "{v}"}, "repo: expected"),
    ],
)
def test_bad_api_input_is_a_400_that_never_echoes_the_value(
    narwhal_up: Up, body: dict[str, Any], error: str
) -> None:
    daemon, api = narwhal_up()
    value = _value()
    sent = {k: v.replace("{v}", value) if isinstance(v, str) else v for k, v in body.items()}
    answer = api.http.post("/api/secrets", json=sent)
    assert answer.status_code == 400 and error in answer.json()["error"], answer.text
    assert value not in answer.text
    assert api.http.get("/api/secrets", params={"repo": "/srv/r"}).json()["secrets"] == []


def test_every_secrets_route_needs_an_admin_token(narwhal_up: Up) -> None:
    daemon, api = narwhal_up()
    body = {"repo": "/srv/r", "name": "API_TOKEN", "value": _value()}
    created = api.http.post("/api/tokens", json={"name": "ci", "scope": "write"})
    assert created.status_code == 201, created.text
    for token, status in ((None, 401), (created.json()["token"], 403)):
        other = Client(daemon.url, token=token)
        refused = [
            other.http.get("/api/secrets", params={"repo": "/srv/r"}),
            other.http.post("/api/secrets", json=body),
            other.http.delete("/api/secrets", params={"repo": "/srv/r", "name": "API_TOKEN"}),
            other.http.post("/api/secrets/forks", json={"repo": "/srv/r", "allow": True}),
        ]
        other.close()
        assert [r.status_code for r in refused] == [status] * 4
    assert api.http.post("/api/secrets", json=body).status_code == 201
    done = narwhal(daemon, "secrets", "list", "/srv/r")
    assert done.returncode == 0 and "API_TOKEN" in done.stdout


def test_the_docker_executor_hands_secrets_to_containers_masked(
    narwhal_up: Up,
    make_repo: MakeRepo,
    busybox_image: str,  # noqa: F811 - the fixture
) -> None:
    daemon, api = narwhal_up("--executor", "docker", "--pull", "never")
    repo = make_repo({"narwhal.yml": f"image: {busybox_image}\n{PROBE}"})
    value = _value()
    _set(daemon, repo, "API_TOKEN", value)
    job = api.wait(api.submit(repo), timeout=120)
    log = api.log(job["id"])
    assert job["state"] == "success", log
    assert "repo secret: ********" in log and _digest(value) in log and value not in log


def test_a_local_path_given_as_dot_is_the_repository_submit_builds(
    narwhal_up: Up, make_repo: MakeRepo
) -> None:
    daemon, api = narwhal_up()
    repo, value = make_repo({"narwhal.yml": PROBE}), _value()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "narwhal",
            "secrets",
            "set",
            ".",
            "API_TOKEN",
            "--server",
            daemon.url,
        ],
        input=value,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=repo.path,
    )
    assert done.returncode == 0, done.stderr
    git(repo.path, "status")  # still a repository: nothing was written into it
    job = api.wait(api.submit(repo))
    assert _digest(value) in api.log(job["id"])
    assert json.loads(api.http.get(f"/api/jobs/{job['id']}").text)["fork_of"] is None


def test_the_jobs_reason_is_masked_too(narwhal_up: Up, make_repo: MakeRepo) -> None:
    daemon, api = narwhal_up()
    value = "k" + secrets.token_hex(16)  # a valid YAML key: the parse error quotes it
    repo = make_repo({"narwhal.yml": f"steps:\n  - name: x\n    command: 'true'\n    {value}: 1\n"})
    _set(daemon, repo, "API_TOKEN", value)
    job = api.wait(api.submit(repo))
    assert job["state"] == "error" and "unknown key '********'" in job["reason"], job
    assert value not in json.dumps(job) and value not in api.log(job["id"])
