"""Signed webhook deliveries built from recorded GitHub payloads."""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import uuid
from pathlib import Path
from typing import Any

#: Recorded GitHub payloads (octokit/webhooks, MIT: see the LICENSE file
#: beside them), kept in the repository so the tests need nothing outside it.
TESTDATA = Path(__file__).resolve().parents[1] / "agent" / "testdata" / "github"
SECRET = "It's a Secret to Everybody"


def recorded(name: str) -> dict[str, Any]:
    """A recorded GitHub payload from tests/agent/testdata (octokit/webhooks, MIT)."""
    data = json.loads((TESTDATA / name).read_text())
    assert isinstance(data, dict)
    return data


def push_payload(repo: str, sha: str, ref: str = "refs/heads/main") -> dict[str, Any]:
    """The recorded push to a new branch, pointed at a local repository and commit."""
    payload = copy.deepcopy(recorded("push_with-new-branch.payload.json"))
    payload.update(ref=ref, after=sha)
    payload["repository"]["clone_url"] = repo
    payload["head_commit"]["id"] = sha
    return payload


def pr_payload(repo: str, sha: str, branch: str = "main", action: str = "opened") -> dict[str, Any]:
    """The recorded pull_request opened, pointed at a local repository and commit."""
    payload = copy.deepcopy(recorded("pull_request_opened.payload.json"))
    payload["action"] = action
    head = payload["pull_request"]["head"]
    head.update(sha=sha, ref=branch)
    head["repo"]["clone_url"] = repo
    return payload


def sign(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def github_request(
    event: str, payload: dict[str, Any] | bytes, *, delivery: str | None = None
) -> tuple[bytes, dict[str, str]]:
    """Body and headers of a signed GitHub webhook delivery."""
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    headers = {
        "Content-Type": "application/json",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
        "X-Hub-Signature-256": sign(body),
        "User-Agent": "GitHub-Hookshot/test",
    }
    return body, headers
