"""Hostile repository input against real processes: nothing it names ever runs.

Every payload would create a marker file if git (or a shell) ran what it
carries; each test asserts the request is refused with a one-line reason and
that the marker does not exist. The doors: the REST API of ``narwhal up``
and of a ``narwhal dispatcher`` without ``--allow-local-repos``, a signed
GitHub webhook, a JOB frame sent straight to a ``narwhal runner`` by a peer
that is not its dispatcher, a ``narwhal.yml`` committed as a symbolic link,
and a ``~/.gitconfig`` planted in the runner's home.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import zmq

from narwhal.mesh import protocol as p
from tests.support.cluster import Cluster
from tests.support.daemons import Client, Daemon
from tests.support.eventually import eventually
from tests.support.keys import MeshKeys
from tests.support.repos import Repo, git
from tests.support.webhooks import SECRET, github_request, push_payload

PIPELINE = "steps:\n  - name: s\n    command: echo built\n"


def injections(marker: Path) -> list[str]:
    """Repository values that ran ``touch MARKER`` (or would) before the validator."""
    return [
        f"--upload-pack=touch {marker};:@x",
        f"--upload-pack=touch${{IFS}}{marker};:@x",
        f"-u{marker}",
        f"ext::sh -c touch% {marker}",
        f"ext::sh%20-c%20touch%20{marker}@x:y",
        f"ssh://-oProxyCommand=touch%20{marker}/x",
        f"git@host:--upload-pack=touch{marker}",
    ]


@pytest.fixture
def marker(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / f"marker-{uuid.uuid4().hex[:8]}"
    yield path
    assert not path.exists(), "a hostile value ran a command"


def _refused(client: Client, body: dict[str, object], what: str) -> str:
    response = client.http.post("/api/jobs", json=body)
    assert response.status_code == 400, (body, response.text)
    error = str(response.json()["error"])
    assert error.startswith(what) and "\n" not in error
    return error


def _no_jobs(client: Client) -> None:
    assert client.http.get("/api/jobs").json()["jobs"] == []


def test_the_api_of_narwhal_up_refuses_every_injection(
    narwhal_up: Callable[..., tuple[Daemon, Client]], marker: Path, make_repo: Callable[..., Repo]
) -> None:
    _, client = narwhal_up()
    for repo in injections(marker):
        _refused(client, {"repo": repo}, "repo: ")
    good = make_repo({"narwhal.yml": PIPELINE})
    for ref in (f"--upload-pack=touch {marker}", "--upload-pack=touch", "-q", "a..b", "x:y"):
        _refused(client, {"repo": str(good.path), "ref": ref}, "ref: ")
    _refused(client, {"repo": str(good.path), "sha": f"--upload-pack={marker}"}, "sha: ")
    _refused(client, {"repo": str(good.path), "ref": "main\x00"}, "ref: ")
    _no_jobs(client)
    # The one door left open on purpose: ``up`` builds local repositories.
    job = client.wait(client.submit(good))
    assert job["state"] == "success", job


@pytest.fixture
def cluster(cluster: Cluster) -> Cluster:
    """The shared cluster, started with local repositories refused."""
    # The test daemons allow local repositories unless told otherwise.
    cluster.start_runner("r1", 1, "--no-allow-local-repos")
    cluster.start_dispatcher("--no-allow-local-repos")
    cluster.wait_ready(1)
    return cluster


def test_a_dispatcher_refuses_injections_and_local_repositories(
    cluster: Cluster, marker: Path, make_repo: Callable[..., Repo], tmp_path: Path
) -> None:
    client = cluster.client()
    for repo in injections(marker):
        _refused(client, {"repo": repo}, "repo: ")
    good = make_repo({"narwhal.yml": f"steps: [{{name: s, command: 'touch {marker}'}}]\n"})
    for repo in (str(good.path), f"file://{good.path}", "file:///etc"):
        error = _refused(client, {"repo": repo}, "repo: ")
        assert "--allow-local-repos" in error
    _refused(client, {"repo": "https://example.invalid/x.git", "ref": "-c"}, "ref: ")
    _no_jobs(client)


class RogueDispatcher:
    """A ROUTER that connects to a runner and speaks the protocol.

    It holds the installation's server key (``keys``): the mesh lets it in, so
    what it sends reaches the runner's own checks, the last door before git
    (a dispatcher gone bad, or one fooled by input no other door caught).
    """

    def __init__(self, endpoint: str, keys: MeshKeys) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.curve_server = True
        self.sock.curve_secretkey = keys.server.secret
        self.sock.setsockopt(zmq.CONNECT_ROUTING_ID, b"runner")
        self.sock.connect(endpoint)
        self.session = uuid.uuid4().hex

    def send(self, message: p.Message) -> None:
        self.sock.send_multipart([b"runner", p.encode(message)])

    def recv(self, timeout: float = 20) -> p.Message:
        if not self.sock.poll(int(timeout * 1000)):
            raise AssertionError("the runner said nothing")
        _, frame = self.sock.recv_multipart()
        return p.decode(frame)

    def until(self, kind: type[p.Message], timeout: float = 30) -> p.Message:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = self.recv()
            if isinstance(message, kind):
                return message
        raise AssertionError(f"no {kind.__name__} from the runner")

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()


def _job(session: str, job_id: int, repo: str, ref: str = "HEAD") -> p.Job:
    return p.Job(
        job_id=job_id, attempt=1, runner_session=session, repo=repo, ref=ref, sha=None, event="push"
    )


def test_a_runner_checks_the_repository_of_a_job_again(tmp_path: Path, marker: Path) -> None:
    keys = MeshKeys(tmp_path)
    runner = Daemon(
        [
            "runner",
            "--listen",
            "tcp://127.0.0.1:0",
            "--id",
            "lonely",
            "--work-dir",
            str(tmp_path / "work"),
            "--no-allow-local-repos",
            *keys.runner("lonely"),
        ]
    )
    rogue = RogueDispatcher(runner.endpoint, keys)
    try:
        rogue.send(p.Hello(session=rogue.session))
        ready = rogue.until(p.Ready)
        assert isinstance(ready, p.Ready)
        hostile = [
            *((repo, "HEAD") for repo in injections(marker)),
            ("/etc", "HEAD"),
            (f"file://{tmp_path}", "HEAD"),
            ("https://example.invalid/x.git", f"--upload-pack=touch {marker}"),
        ]
        for job_id, (repo, ref) in enumerate(hostile, 1):
            rogue.send(_job(ready.session, job_id, repo, ref))
            done = rogue.until(p.Done)
            assert isinstance(done, p.Done)
            assert (done.job_id, done.status, done.steps) == (job_id, "error", ())
            assert done.reason.startswith(("repo: ", "ref: ")) and "\n" not in done.reason
            rogue.send(p.Ack(streams=((job_id, 1, done.seq),)))
    finally:
        rogue.close()
        runner.stop()
    assert not list((tmp_path / "work").rglob("*.git")), "git ran for a refused job"


@pytest.fixture
def webhook_up(
    narwhal_up: Callable[..., tuple[Daemon, Client]], tmp_path: Path
) -> Callable[..., tuple[Daemon, Client]]:
    secret_file = tmp_path / "github-secret"
    secret_file.write_text(SECRET)

    def start(*extra: str) -> tuple[Daemon, Client]:
        return narwhal_up("--github-secret-file", str(secret_file), *extra)

    return start


def _deliver(client: Client, repo: str, sha: str, delivery: str) -> httpx.Response:
    body, headers = github_request("push", push_payload(repo, sha), delivery=delivery)
    return client.http.post("/webhooks/github", content=body, headers=headers)


def test_signed_webhooks_carrying_injections_are_refused(
    webhook_up: Callable[..., tuple[Daemon, Client]], marker: Path
) -> None:
    _, client = webhook_up()
    for n, repo in enumerate(injections(marker)):
        answer = _deliver(client, repo, "a" * 40, f"hostile-{n}")
        assert answer.status_code == 400, answer.text
        assert "repo: " in answer.json()["error"]
    sha_attack = push_payload("https://example.invalid/x.git", "a" * 40)
    sha_attack["after"] = f"--upload-pack=touch {marker}"
    body, headers = github_request("push", sha_attack, delivery="hostile-sha")
    answer = client.http.post("/webhooks/github", content=body, headers=headers)
    assert answer.status_code == 400 and "sha: " in answer.json()["error"]
    _no_jobs(client)


def test_a_signed_webhook_for_a_local_path_is_refused_where_local_is_off(
    webhook_up: Callable[..., tuple[Daemon, Client]], make_repo: Callable[..., Repo], marker: Path
) -> None:
    _, client = webhook_up("--no-allow-local-repos")
    repo = make_repo({"narwhal.yml": f"steps: [{{name: s, command: 'touch {marker}'}}]\n"})
    sha = git(repo.path, "rev-parse", "HEAD")
    for n, url in enumerate((str(repo.path), f"file://{repo.path}")):
        answer = _deliver(client, url, sha, f"local-{n}")
        assert answer.status_code == 400, answer.text
        assert "--allow-local-repos" in answer.json()["error"]
    _no_jobs(client)


def test_a_replayed_body_under_a_new_delivery_id_builds_once(
    webhook_up: Callable[..., tuple[Daemon, Client]], make_repo: Callable[..., Repo]
) -> None:
    _, client = webhook_up()
    repo = make_repo({"narwhal.yml": PIPELINE})
    sha = git(repo.path, "rev-parse", "HEAD")
    first = _deliver(client, str(repo.path), sha, "original")
    assert first.json()["status"] == "queued"
    job = client.http.get("/api/jobs").json()["jobs"][0]
    client.wait(job["id"])
    # The signature covers the body only: an attacker who saw one delivery
    # can send it again under any X-GitHub-Delivery it likes.
    for n in range(3):
        again = _deliver(client, str(repo.path), sha, f"replay-{n}")
        assert (again.status_code, again.json()["status"]) == (200, "duplicate")
    assert len(client.http.get("/api/jobs").json()["jobs"]) == 1


def test_a_symlinked_narwhal_yml_is_an_error_without_the_target(
    narwhal_up: Callable[..., tuple[Daemon, Client]], make_repo: Callable[..., Repo], tmp_path: Path
) -> None:
    secret = tmp_path / "host-secret"
    secret.write_text("HOSTSECRET: 1\nsteps: [{name: s, command: 'echo HOSTSECRET'}]\n")
    _, client = narwhal_up()
    repo = make_repo({"README": "x\n"})
    (repo.path / "narwhal.yml").symlink_to(secret)
    repo.commit({})
    passwd = make_repo({"README": "y\n"})
    (passwd.path / "narwhal.yml").symlink_to("/etc/passwd")
    passwd.commit({})
    for target in (repo, passwd):
        job = client.wait(client.submit(target))
        assert job["state"] == "error", job
        assert "symbolic link" in job["reason"], job["reason"]
        shown = job["reason"] + client.log(job["id"])
        assert "HOSTSECRET" not in shown and "root:" not in shown


def test_a_narwhal_yml_that_is_a_directory_or_missing_is_an_error(
    narwhal_up: Callable[..., tuple[Daemon, Client]], make_repo: Callable[..., Repo]
) -> None:
    _, client = narwhal_up()
    folder = make_repo({"narwhal.yml/steps": PIPELINE})
    missing = make_repo({"README": "x\n"})
    job = client.wait(client.submit(folder))
    assert (job["state"], "a directory" in job["reason"]) == ("error", True), job
    job = client.wait(client.submit(missing))
    assert (job["state"], "not found" in job["reason"]) == ("error", True), job


def _planted_home(home: Path, marker: Path) -> None:
    """A home whose git config would run ``touch MARKER`` from every angle git offers."""
    hooks = home / "hooks"
    hooks.mkdir(parents=True)
    for hook in ("post-checkout", "reference-transaction", "pre-auto-gc"):
        (hooks / hook).write_text(f"#!/bin/sh\ntouch {marker}\n")
        (hooks / hook).chmod(0o755)
    config = f"""[core]
\thooksPath = {hooks}
\tfsmonitor = touch {marker}
\tsshCommand = touch {marker}
[uploadpack]
\tpackObjectsHook = touch {marker};
[credential]
\thelper = !touch {marker}
[protocol]
\tallow = always
[alias]
\tfetch = !touch {marker}
[url "ext::sh -c touch% {marker}"]
\tinsteadOf = /
"""
    (home / ".gitconfig").write_text(config)
    (home / ".config" / "git").mkdir(parents=True)
    (home / ".config" / "git" / "config").write_text(config)


def test_the_runners_git_never_reads_the_users_git_config(
    tmp_path: Path, make_repo: Callable[..., Repo], marker: Path
) -> None:
    home = tmp_path / "home"
    _planted_home(home, marker)
    probe = tmp_path / "probe"  # what git saw: its environment, written by a wrapper
    probe.mkdir()
    wrapper = tmp_path / "bin"
    wrapper.mkdir()
    (wrapper / "git").write_text(
        f'#!/bin/sh\nenv > {probe}/env.$$\nexec {shutil.which("git")} "$@"\n'
    )
    (wrapper / "git").chmod(0o755)
    repo = make_repo({"narwhal.yml": PIPELINE})
    env = {
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "PATH": f"{wrapper}:{os.environ['PATH']}",
        "DEPLOY_TOKEN": "s3cr3t-deploy-token",
        "NARWHAL_GITHUB_TOKEN": "s3cr3t-forge-token",
    }
    up = Daemon(
        [
            "up",
            "--http",
            "127.0.0.1:0",
            "--data-dir",
            str(tmp_path / "data"),
            "--work-dir",
            str(tmp_path / "work"),
            "--secret",
            "DEPLOY_TOKEN",
        ],
        env=env,
    )
    client = Client(up.url)
    try:
        eventually(lambda: client.http.get("/health").json()["runners"] == 1, timeout=15)
        for url in (str(repo.path), f"file://{repo.path}"):
            job = client.wait(client.submit(url))
            assert job["state"] == "success", (job, client.log(job["id"]))
    finally:
        client.close()
        up.stop()
    seen = [path.read_text() for path in probe.iterdir()]
    assert seen, "the runner's git never ran through the wrapper"
    for text in seen:
        assert "GIT_CONFIG_GLOBAL=/dev/null" in text and "GIT_CONFIG_NOSYSTEM=1" in text
        assert "s3cr3t" not in text and str(home) not in text
        names = {line.partition("=")[0] for line in text.splitlines() if "=" in line}
        assert "DEPLOY_TOKEN" not in names and not any(n.startswith("NARWHAL") for n in names)


def test_workspaces_are_private_and_steps_get_a_home_of_their_own(
    narwhal_up: Callable[..., tuple[Daemon, Client]], make_repo: Callable[..., Repo], tmp_path: Path
) -> None:
    script = "stat -c %a . ..; echo HOME=$HOME; echo TMPDIR=$TMPDIR; env | cut -d= -f1 | sort"
    repo = make_repo({"narwhal.yml": json.dumps({"steps": [{"name": "s", "command": script}]})})
    daemon, client = narwhal_up()
    job = client.wait(client.submit(repo))
    assert job["state"] == "success", job
    warning = [line for line in daemon.stderr_lines if "does not isolate steps" in line]
    assert warning and " WARNING " in warning[0]
    log = client.log(job["id"]).splitlines()
    assert log[2:4] == ["700", "700"], log  # the workspace, and the runner's folder
    home = next(line for line in log if line.startswith("HOME="))[5:]
    tmp = next(line for line in log if line.startswith("TMPDIR="))[7:]
    assert home.endswith(".home") and tmp.endswith(".tmp") and "/job-" in home
    names = set(log[log.index(next(x for x in log if x.startswith("TMPDIR="))) + 1 :])
    assert not {"NARWHAL_API_TOKEN", "PYTHONPATH", "NARWHAL_ALLOW_LOCAL_REPOS"} & names
    assert not Path(home).exists() and not Path(tmp).exists()  # gone with the job
