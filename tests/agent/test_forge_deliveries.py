"""Forge deliveries through a real ``narwhal up``: an annotated tag push is
built at its commit, a Gitea form delivery is accepted (and a tampered one
refused), with real git repositories and real jobs."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx

from tests.agent.test_webhook_tags import GITLAB_DATA
from tests.support.daemons import Client, Daemon
from tests.support.repos import Repo, git
from tests.support.webhooks import SECRET, push_payload

Up = Callable[..., tuple[Daemon, Client]]
MakeRepo = Callable[..., Repo]
PIPELINE = "steps:\n  - {name: show, command: git rev-parse HEAD}\n"


def _up(narwhal_up: Up, tmp_path: Path) -> tuple[Daemon, Client]:
    secret = tmp_path / "forge-secret"
    secret.write_text(SECRET + "\n")
    return narwhal_up("--gitea-secret-file", str(secret), "--gitlab-secret-file", str(secret))


def _jobs(api: Client) -> list[dict[str, Any]]:
    return list(api.http.get("/api/jobs").json()["jobs"])


def test_gitlab_annotated_tag_push_builds_the_tagged_commit(
    narwhal_up: Up, make_repo: MakeRepo, tmp_path: Path
) -> None:
    daemon, api = _up(narwhal_up, tmp_path)
    repo = make_repo({"narwhal.yml": PIPELINE})
    git(repo.path, "-c", "user.name=t", "-c", "user.email=t@e", "tag", "-a", "v1.0.0", "-m", "r")
    tag, commit = git(repo.path, "rev-parse", "v1.0.0"), git(repo.path, "rev-parse", "HEAD")
    payload = json.loads((GITLAB_DATA / "tag_push.json").read_text())
    payload.update(after=tag, checkout_sha=commit)
    payload["project"]["git_http_url"] = str(repo.path)
    answer = httpx.post(
        f"{daemon.url}/webhooks/gitlab",
        content=json.dumps(payload).encode(),
        headers={
            "content-type": "application/json",
            "x-gitlab-event": "Tag Push Hook",
            "x-gitlab-token": SECRET,
            "x-gitlab-event-uuid": "tag-e2e",
        },
    )
    assert answer.status_code == 200 and answer.json()["sha"] == commit, answer.text
    job = api.wait_for_sha(commit)
    assert (job["state"], job["event"], job["ref"]) == ("success", "tag", "refs/tags/v1.0.0"), job
    assert commit in api.log(job["id"])
    assert all(j["sha"] != tag for j in _jobs(api))


def test_gitea_form_delivery_is_queued_and_a_tampered_one_refused(
    narwhal_up: Up, make_repo: MakeRepo, tmp_path: Path
) -> None:
    daemon, api = _up(narwhal_up, tmp_path)
    repo = make_repo({"narwhal.yml": PIPELINE})
    sha = git(repo.path, "rev-parse", "HEAD")
    payload = json.dumps(push_payload(str(repo.path), sha))
    signature = hmac.new(SECRET.encode(), payload.encode(), hashlib.sha256).hexdigest()
    headers = {
        "content-type": "application/x-www-form-urlencoded",
        "x-gitea-event": "push",
        "x-gitea-delivery": "form-e2e",
        "x-gitea-signature": signature,
    }
    other = push_payload(str(repo.path), "b" * 40)
    tampered = urlencode({"payload": json.dumps(other)}).encode()
    refused = httpx.post(f"{daemon.url}/webhooks/gitea", content=tampered, headers=headers)
    assert refused.status_code == 401, refused.text
    body = urlencode({"payload": payload}).encode()
    answer = httpx.post(f"{daemon.url}/webhooks/gitea", content=body, headers=headers)
    assert answer.status_code == 200 and answer.json()["status"] == "queued", answer.text
    assert api.wait_for_sha(sha)["state"] == "success"
    assert [j["sha"] for j in _jobs(api)] == [sha]
