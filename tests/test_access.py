"""Who may use the API, attacked over real HTTP against a real ``narwhal up``.

Browser-shaped requests (CSRF, DNS rebinding) are refused before routing
and run nothing; tokens are scoped, hashed, revocable at once; the CLI finds
the admin token by itself; credentials in repository URLs never come back
out; no secret is ever on a daemon's command line.
"""

from __future__ import annotations

import hashlib
import http.server
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from narwhal.cli import main
from tests.support.daemons import API_TOKEN, Client, Daemon, wait_for_runners
from tests.support.repos import Repo

Up = Callable[..., tuple[Daemon, Client]]
MakeRepo = Callable[..., Repo]
JSON = {"content-type": "application/json"}


def narwhal(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI, without the tests' NARWHAL_API_TOKEN unless ``env`` gives one."""
    base = {k: v for k, v in os.environ.items() if k != "NARWHAL_API_TOKEN"}
    return subprocess.run(
        [sys.executable, "-m", "narwhal", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**base, **(env or {})},
    )


def data_dir(daemon: Daemon) -> Path:
    return Path(daemon.args[daemon.args.index("--data-dir") + 1])


def marker_repo(make_repo: MakeRepo, marker: Path) -> Repo:
    return make_repo({"narwhal.yml": f"steps:\n  - name: m\n    command: touch {marker}\n"})


def test_browser_shaped_requests_are_refused_and_run_nothing(
    narwhal_up: Up, make_repo: MakeRepo, tmp_path: Path
) -> None:
    daemon, api = narwhal_up()
    marker = tmp_path / "ran"
    body = f'{{"repo": "{marker_repo(make_repo, marker).path}"}}'.encode()
    port = httpx.URL(daemon.url).port
    # Each with the admin token: the guard alone must stop them.
    shapes: list[tuple[str, dict[str, Any], int]] = [
        ("no content type", {"content": body}, 415),
        ("text/plain", {"content": body, "headers": {"content-type": "text/plain"}}, 415),
        (
            "text/plain naming json",
            {"content": body, "headers": {"content-type": "text/plain; x=application/json"}},
            415,
        ),
        ("form", {"data": {"repo": "x"}}, 415),
        ("multipart", {"files": {"repo": ("r", body)}}, 415),
        (
            "foreign origin",
            {"content": body, "headers": {**JSON, "origin": "http://evil.example"}},
            403,
        ),
        ("origin null", {"content": body, "headers": {**JSON, "origin": "null"}}, 403),
        (
            "origin on another port",
            {"content": body, "headers": {**JSON, "origin": "http://127.0.0.1:1"}},
            403,
        ),
        ("rebinding", {"content": body, "headers": {**JSON, "host": f"evil.example:{port}"}}, 421),
        ("no port", {"content": body, "headers": {**JSON, "host": "127.0.0.1"}}, 421),
        ("deep json", {"content": b"[" * 20000 + b"]" * 20000, "headers": JSON}, 400),
        ("deep object", {"content": b'{"a":' * 5000 + b"1" + b"}" * 5000, "headers": JSON}, 400),
    ]
    for name, kwargs, status in shapes:
        answer = api.http.post("/api/jobs", **kwargs)
        assert answer.status_code == status, (name, answer.text)
        assert isinstance(answer.json()["error"], str), name
        assert not any(h.startswith("access-control-") for h in answer.headers), name
    # A rebinding page cannot read either.
    rebound = api.http.get("/api/jobs", headers={"host": f"evil.example:{port}"})
    assert rebound.status_code == 421
    time.sleep(1.0)
    assert api.http.get("/api/jobs").json()["jobs"] == []
    assert not marker.exists()
    # A preflight gets no CORS answer, so a browser never sends the real request.
    preflight = api.http.options(
        "/api/jobs",
        headers={"origin": "http://evil.example", "access-control-request-method": "POST"},
    )
    assert preflight.status_code == 403 and "access-control-allow-origin" not in preflight.headers
    # The same body, as the CLI sends it, under every name of this dispatcher, runs.
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"):
        headers = {**JSON, "host": host, "origin": f"http://{host}"}
        answer = api.http.post("/api/jobs", content=body, headers=headers)
        assert answer.status_code == 201, (host, answer.text)
        assert api.wait(answer.json()["id"])["state"] == "success"
    assert marker.exists()


def test_public_url_names_are_accepted(narwhal_up: Up) -> None:
    daemon, api = narwhal_up("--public-url", "https://ci.example")
    for host, origin in (("ci.example", "https://ci.example"), ("ci.example:443", None)):
        headers = {"host": host, **({"origin": origin} if origin else {})}
        assert api.http.get("/api/jobs", headers=headers).status_code == 200, host
    assert api.http.get("/api/jobs", headers={"host": "ci.example:8470"}).status_code == 421


def test_reads_need_a_token_and_scopes_are_ordered(narwhal_up: Up, make_repo: MakeRepo) -> None:
    daemon, api = narwhal_up()
    job_id = api.submit(make_repo({"narwhal.yml": "steps: [{name: a, command: 'true'}]\n"}))
    anonymous = Client(daemon.url, token=None)
    try:
        for path in (
            "/api/jobs",
            f"/api/jobs/{job_id}",
            f"/api/jobs/{job_id}/logs",
            "/api/runners",
        ):
            answer = anonymous.http.get(path)
            assert answer.status_code == 401, path
            assert answer.headers["www-authenticate"] == "Bearer"
            assert "token" in answer.json()["error"]
        assert anonymous.http.get("/health").json() == {"status": "ok"}
        assert "runners" in api.http.get("/health").json()  # details for a token
        wrong = Client(daemon.url, token="nw_" + "x" * 43)
        assert wrong.http.get("/api/jobs").status_code == 401
        wrong.close()
    finally:
        anonymous.close()

    made = {
        scope: api.http.post("/api/tokens", json={"name": f"t-{scope}", "scope": scope}).json()
        for scope in ("read", "write")
    }
    reader = Client(daemon.url, token=made["read"]["token"])
    writer = Client(daemon.url, token=made["write"]["token"])
    try:
        assert reader.http.get("/api/jobs").status_code == 200
        denied = reader.http.post("/api/jobs", json={"repo": "/x"})
        assert denied.status_code == 403 and "scope read" in denied.json()["error"]
        assert reader.http.post(f"/api/jobs/{job_id}/resubmit", json={}).status_code == 403
        assert writer.http.post(f"/api/jobs/{job_id}/resubmit", json={}).status_code == 201
        for path, body in (
            ("/api/tokens", {"name": "mine", "scope": "admin"}),
            ("/api/runners", {"url": "tcp://127.0.0.1:1"}),
        ):
            answer = writer.http.post(path, json=body)
            assert answer.status_code == 403, (path, answer.text)
        assert writer.http.get("/api/tokens").status_code == 403
        assert writer.http.delete("/api/tokens/t-read").status_code == 403
        # Revoked: refused at the very next request, no restart.
        assert api.http.delete("/api/tokens/t-write").status_code == 200
        assert writer.http.get("/api/jobs").status_code == 401
        assert reader.http.get("/api/jobs").status_code == 200
    finally:
        reader.close()
        writer.close()
    bad = [
        ({"name": "admin", "scope": "read"}, 409),
        ({"name": "t-read", "scope": "read"}, 409),
        ({"name": "x", "scope": "root"}, 400),
        ({"name": "bad name", "scope": "read"}, 400),
    ]
    for body, status in bad:
        assert api.http.post("/api/tokens", json=body).status_code == status, body
    assert api.http.delete("/api/tokens/nobody").status_code == 404


def test_public_read_opens_reads_only(narwhal_up: Up) -> None:
    daemon, _ = narwhal_up("--public-read")
    anonymous = Client(daemon.url, token=None)
    try:
        assert anonymous.http.get("/api/jobs").status_code == 200
        assert anonymous.http.get("/api/runners").status_code == 200
        assert anonymous.http.post("/api/jobs", json={"repo": "/x"}).status_code == 401
        assert anonymous.http.get("/api/tokens").status_code == 401
    finally:
        anonymous.close()


def test_admin_token_file_cli_and_hashes_only_in_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_repo: MakeRepo
) -> None:
    """Local use stays two commands: ``narwhal up``, then ``narwhal jobs``, no flags."""
    monkeypatch.delenv("NARWHAL_API_TOKEN")
    env = {"XDG_DATA_HOME": str(tmp_path / "xdg"), "NARWHAL_WORK_DIR": str(tmp_path / "work")}
    port = _free_port()
    daemon = Daemon(["up", "--http", f"127.0.0.1:{port}"], env=env)
    try:
        local = {**env, "NARWHAL_SERVER": daemon.url}
        data = tmp_path / "xdg" / "narwhal"
        admin = (data / "admin.token").read_text().strip()
        assert (data / "admin.token").stat().st_mode & 0o777 == 0o600
        assert data.stat().st_mode & 0o777 == 0o700
        first = Client(daemon.url, token=admin)
        wait_for_runners(first, 1)
        first.close()
        repo = make_repo({"narwhal.yml": "steps: [{name: a, command: 'true'}]\n"})
        submitted = narwhal("submit", str(repo.path), "-f", env=local)
        assert submitted.returncode == 0, submitted.stderr
        jobs = narwhal("jobs", env=local)
        assert jobs.returncode == 0 and "success" in jobs.stdout, jobs.stderr
        made = narwhal("tokens", "create", "--name", "ci", "--scope", "write", env=local)
        assert made.returncode == 0, made.stderr
        token = made.stdout.strip()
        assert token.startswith("nw_") and len(token) > 40
        listing = narwhal("tokens", "list", env=local)
        assert "ci" in listing.stdout and "write" in listing.stdout and "admin" in listing.stdout
        assert token not in listing.stdout and admin not in listing.stdout
        # Another machine's CLI has no file: refused, with the way out.
        elsewhere = narwhal("jobs", env={**local, "XDG_DATA_HOME": str(tmp_path / "other")})
        assert elsewhere.returncode == 2 and "401" in elsewhere.stderr
        assert "--api-token-file" in elsewhere.stderr and elsewhere.stderr.count("\n") == 1
        (tmp_path / "ci.token").write_text(token + "\n")
        with_file = narwhal(
            "jobs",
            "--api-token-file",
            str(tmp_path / "ci.token"),
            env={"XDG_DATA_HOME": "/nonexistent", "NARWHAL_SERVER": daemon.url},
        )
        assert with_file.returncode == 0, with_file.stderr
        assert narwhal("tokens", "revoke", "ci", env=local).returncode == 0
        revoked = narwhal("jobs", "--api-token-file", str(tmp_path / "ci.token"), env=local)
        assert revoked.returncode == 2 and "unknown or revoked" in revoked.stderr
        stored = b"".join(p.read_bytes() for p in data.glob("narwhal.db*"))
        assert admin.encode() not in stored and token.encode() not in stored
        assert hashlib.sha256(admin.encode()).hexdigest().encode() in stored
        # Revoking the admin token rotates the file at the next start.
        assert narwhal("tokens", "revoke", "admin", env=local).returncode == 0
        assert narwhal("jobs", env=local).returncode == 2
    finally:
        assert daemon.stop() == 0
    again = Daemon(["up", "--http", f"127.0.0.1:{port}"], env=env)
    try:
        fresh = (data / "admin.token").read_text().strip()
        assert fresh != admin
        assert narwhal("jobs", env=local).returncode == 0
    finally:
        assert again.stop() == 0


class _Forge(http.server.BaseHTTPRequestHandler):
    """A git server that asks for credentials, and writes down what it got."""

    seen: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.seen.append(self.headers.get("Authorization", ""))
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="forge"')
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def forge() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Forge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Forge.seen = []
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_repository_credentials_never_come_back_out(narwhal_up: Up, forge: str) -> None:
    daemon, api = narwhal_up()
    secret = "s3cr3t-Token-42"
    url = f"https://ci-user:{secret}@{forge}/octo/x.git"
    plain = f"http://ci-user:{secret}@{forge}/octo/x.git"
    ids = [api.submit(url), api.submit(plain, sha="a" * 40, ref="refs/heads/main")]
    jobs = [api.wait(i) for i in ids]
    assert [j["state"] for j in jobs] == ["error", "error"]
    # The runner did get the full URL: git offered the credentials to the forge.
    assert any(seen.startswith("Basic ") for seen in _Forge.seen), _Forge.seen
    shown = [
        api.http.get("/api/jobs").text,
        *(api.http.get(f"/api/jobs/{i}").text for i in ids),
        *(api.log(i) for i in ids),
        api.http.get("/api/jobs", params={"repo": url}).text,
    ]
    listed = subprocess.run(
        [sys.executable, "-m", "narwhal", "jobs", "--server", daemon.url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    daemon.stop()
    for text in [*shown, listed, "".join(daemon.stderr_lines)]:
        assert secret not in text and "ci-user" not in text
    assert f"https://***@{forge}/octo/x.git" in shown[0]
    assert f"http://***@{forge}/octo/x.git" in listed


def test_secret_value_flags_are_refused_with_the_replacement(
    capsys: pytest.CaptureFixture[str],
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "narwhal", "up", "--api-token", "x"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "--api-token-file PATH or NARWHAL_API_TOKEN" in done.stderr
    for argv, instead in (
        (
            ["up", "--github-secret", "s"],
            "--github-secret-file PATH or NARWHAL_GITHUB_SECRET",
        ),
        (["dispatcher", "--gitlab-token=t"], "--gitlab-token-file PATH or NARWHAL_GITLAB_TOKEN"),
        (["agent", "--gitea-secret", "s"], "--gitea-secret-file PATH or NARWHAL_GITEA_SECRET"),
        (["jobs", "--api-token", "t"], "--api-token-file PATH or NARWHAL_API_TOKEN"),
        (["tokens", "list", "--api-token", "t"], "--api-token-file PATH"),
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("narwhal: ") and err.count("\n") == 1 and instead in err, err


def test_no_secret_on_argv_nor_in_the_steps_environment(
    narwhal_up: Up, make_repo: MakeRepo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "github.token").write_text("ghp_from_a_file_123\n")
    monkeypatch.setenv("NARWHAL_GITHUB_SECRET", "webhook-secret-456")
    daemon, api = narwhal_up("--github-token-file", str(tmp_path / "github.token"))
    admin = (data_dir(daemon) / "admin.token").read_text().strip()
    cmdline = Path(f"/proc/{daemon.proc.pid}/cmdline").read_bytes()
    assert b"narwhal" in cmdline and b"up" in cmdline
    env_file = tmp_path / "step.env"
    repo = make_repo({"narwhal.yml": f"steps:\n  - name: env\n    command: env > {env_file}\n"})
    assert api.wait(api.submit(repo))["state"] == "success"
    step_env = env_file.read_text()
    for secret in ("ghp_from_a_file_123", "webhook-secret-456", API_TOKEN, admin):
        assert secret.encode() not in cmdline
        assert secret not in step_env, secret
    assert "NARWHAL_JOB_ID" in step_env  # the step's own variables are there


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
