"""Client commands of the CLI: talk to a dispatcher's REST API.

Output for people goes to stdout (logs, tables) and progress to stderr, so
``narwhal logs 3 > build.log`` keeps only the log.

The token: ``--api-token-file``, ``NARWHAL_API_TOKEN`` or
``NARWHAL_API_TOKEN_FILE``; else, for a dispatcher on loopback, the admin
token it wrote to ``DATA-DIR/admin.token``, so local use needs no flag. A
remote dispatcher never gets that file's token unasked.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from narwhal.cli.show import job_lines, quarantine, runner_state
from narwhal.errors import ConfigError, NarwhalError
from narwhal.follow import Submission, combination, wait_started, waiting, write_stdout
from narwhal.localrepo import checked_out, repo_arg
from narwhal.secrets_client import run_secrets
from narwhal.settings import parse_labels, secret

#: States of a job a runner holds: a cancel asks the runner to stop it.
ACTIVE = frozenset({"assigned", "running"})


class ClientError(NarwhalError):
    """The dispatcher could not be reached or refused the request."""


class Api:
    """A thin JSON client for the dispatcher's API."""

    def __init__(self, server: str, token: str | None) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.server = server.rstrip("/")
        self._http = httpx.Client(base_url=self.server, headers=headers, timeout=30.0)

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as e:
            raise ClientError(f"cannot reach the dispatcher at {self.server}: {e}") from None
        if response.status_code >= 400:
            raise ClientError(f"{method} {path}: {_reason(response)}")
        return response.json()

    def close(self) -> None:
        self._http.close()

    def post(self, path: str) -> Any:
        """A POST without a body still says JSON (the API refuses anything else)."""
        return self.call("POST", path, json={})

    def raw(self, path: str) -> bytes:
        try:
            response = self._http.get(path)
        except httpx.HTTPError as e:
            raise ClientError(f"cannot reach the dispatcher at {self.server}: {e}") from None
        if response.status_code >= 400:
            raise ClientError(f"GET {path}: {_reason(response)}")
        return response.content

    def log_chunks(self, job_id: int) -> Iterator[bytes]:
        """A job's log as it is written, until the job has ended."""
        path = f"/api/jobs/{job_id}/logs"
        try:
            with self._http.stream("GET", path, params={"follow": "1"}, timeout=None) as response:
                if response.status_code >= 400:
                    response.read()
                    raise ClientError(f"GET {path}: {_reason(response)}")
                yield from response.iter_bytes()
        except httpx.HTTPError as e:
            raise ClientError(f"log stream from {self.server} broke: {e}") from None


def _reason(response: httpx.Response) -> str:
    try:
        reason = f"{response.status_code} {response.json()['error']}"
    except (ValueError, KeyError, TypeError):
        reason = f"{response.status_code} {response.reason_phrase}"
    if response.status_code == 401:
        reason += (
            " (give one with --api-token-file PATH or NARWHAL_API_TOKEN; on the dispatcher's"
            " machine, --data-dir DIR or NARWHAL_DATA_DIR names the data dir whose admin.token"
            " to use)"
        )
    return reason


def token_for(args: argparse.Namespace) -> str | None:
    """The token to send (module docstring); None: none found."""
    token = secret(args, "api-token")
    if token is not None:
        return token
    host = httpx.URL(args.server).host
    if host not in ("localhost", "::1") and not host.startswith("127."):
        return None
    try:
        return (Path(args.data_dir).expanduser() / "admin.token").read_text().strip() or None
    except (FileNotFoundError, PermissionError, NotADirectoryError):
        return None


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)  # noqa: T201 - CLI output


def _out(text: str) -> None:
    print(text, flush=True)  # noqa: T201 - CLI output


def submit(api: Api, args: argparse.Namespace) -> int:
    repo = repo_arg(args.repo)
    ref, sha = args.ref, args.sha
    if ref is None:  # what the local repository has checked out, else the remote's HEAD
        ref, head = checked_out(repo) or ("HEAD", None)
        sha = sha or head
    body = {"repo": repo, "ref": ref, "sha": sha, "event": args.event}
    if args.labels:
        body["labels"] = parse_labels(args.labels)
    if args.priority is not None:
        body["priority"] = args.priority
    job = api.call("POST", "/api/jobs", json=body)
    shown = f" ({ref.removeprefix('refs/heads/')} at {sha[:10]})" if sha else ""
    _progress(f"job {job['id']} submitted{shown}")
    if not args.follow:
        _out(str(job["id"]))
        return 0
    wait_started(api, job["id"], _progress)  # saying why it waits, so a wait is not silent
    return Submission(api, job["id"], progress=_progress).run()


def logs(api: Api, args: argparse.Namespace) -> int:
    if args.follow:
        return Submission(api, args.job, progress=_progress).run()
    write_stdout(api.raw(f"/api/jobs/{args.job}/logs"))
    return 0


def jobs(api: Api, args: argparse.Namespace) -> int:
    params: dict[str, Any] = {"limit": args.limit}
    if args.state:
        params["state"] = args.state
    if args.repo:
        params["repo"] = repo_arg(args.repo)
    listing = api.call("GET", "/api/jobs", params=params)
    _out(f"{'ID':>6}  {'STATE':<10} {'ATTEMPT':>7}  {'RUNNER':<16} {'SHA':<10} REPO")
    for job in listing["jobs"]:
        sha = (job["sha"] or "")[:8]
        shown = combination(job)  # which of a submission's matrix jobs this is
        _out(
            f"{job['id']:>6}  {job['state']:<10} {job['attempt']:>7}  "
            f"{job['runner_id'] or '-':<16} {sha:<10} {job['repo']} {job['ref']}"
            + (f" [{shown}]" if shown else "")
        )
        if job.get("pending"):
            _out(f"{'':>8}why: {waiting(job['pending'])}")
    return 0


def job(api: Api, args: argparse.Namespace) -> int:
    """One job: what it builds, where it stands, why it waits or where it went, its steps."""
    for line in job_lines(api.call("GET", f"/api/jobs/{args.job}")):
        _out(line)
    return 0


def runners(api: Api, args: argparse.Namespace) -> int:
    listing = api.call("GET", "/api/runners")
    _out(f"{'ID':<20} {'STATE':<11} {'FREE':>4}/{'CAP':<4} {'ENDPOINT':<28} {'SOURCE':<7} LABELS")
    for r in listing["runners"]:
        labels = ",".join(f"{k}={v}" for k, v in r["labels"].items())
        _out(
            f"{r['id'] or '?':<20} {r['state']:<11} {r['free']:>4}/{r['capacity']:<4} "
            f"{r['endpoint']:<28} {r.get('source', ''):<7} {labels}"
        )
        _out(f"{'':>4}{runner_state(r)}")
        if (held := quarantine(r)) is not None:
            _out(f"{'':>4}{held}")
    for refused in listing.get("refused", []):
        _out(f"refused {refused['endpoint']}: {refused['reason']}")
    return 0


def cancel(api: Api, args: argparse.Namespace) -> int:
    """Cancel a job and the matrix jobs it spawned; ``--all``: its whole submission."""
    job_id = args.job
    parent = api.call("GET", f"/api/jobs/{job_id}")["parent_id"]
    if args.all and parent is not None:
        job_id = parent
    answer = api.post(f"/api/jobs/{job_id}/cancel")
    for job in answer["jobs"]:
        shown = combination(job)
        label = f" [{shown}]" if shown else ""
        now = "cancelling (its runner is stopping it)" if job["state"] in ACTIVE else job["state"]
        _progress(f"job {job['id']}{label}: {now}")
    if parent is not None and not args.all:
        _progress(
            f"job {args.job} is one combination of job {parent}'s matrix; "
            f"'narwhal cancel {parent}' (or --all) cancels them all"
        )
    return 0


def resubmit(api: Api, args: argparse.Namespace) -> int:
    job = api.post(f"/api/jobs/{args.job}/resubmit")
    _out(str(job["id"]))
    return 0


def gc(api: Api, args: argparse.Namespace) -> int:
    """The dispatcher's retention policy, run now (``POST /api/gc``)."""
    done = api.call("POST", "/api/gc", json={"dry_run": bool(args.dry_run)})
    size = f"{done['bytes'] / (1 << 20):.1f} MiB"
    if done["dry_run"]:
        _out(f"{done['jobs']} jobs' logs would be deleted, {size} stored")
    else:
        _out(f"{done['jobs']} jobs' logs deleted, {size} freed")
    return 0


def tokens(api: Api, args: argparse.Namespace) -> int:
    if args.action == "create":
        made = api.call("POST", "/api/tokens", json={"name": args.name, "scope": args.scope})
        _progress(f"token {made['name']} ({made['scope']}); it is shown only this once:")
        _out(made["token"])
    elif args.action == "revoke":
        api.call("DELETE", f"/api/tokens/{args.name}")
        _progress(f"token {args.name} revoked")
    else:
        _out(f"{'NAME':<24} {'SCOPE':<6} {'CREATED':<20} LAST USED")
        for info in api.call("GET", "/api/tokens")["tokens"]:
            used = _when(info["last_used"]) if info["last_used"] else "never"
            _out(f"{info['name']:<24} {info['scope']:<6} {_when(info['created_at']):<20} {used}")
    return 0


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


COMMANDS = {
    "submit": submit,
    "logs": logs,
    "jobs": jobs,
    "job": job,
    "runners": runners,
    "cancel": cancel,
    "resubmit": resubmit,
    "secrets": run_secrets,
    "tokens": tokens,
    "gc": gc,
}


def run_client(args: argparse.Namespace) -> int:
    if not args.server.startswith(("http://", "https://")):
        raise ConfigError(f"--server: expected an http(s):// URL, got {args.server!r}")
    api = Api(args.server, token_for(args))
    try:
        return COMMANDS[args.command](api, args)
    finally:
        api.close()
