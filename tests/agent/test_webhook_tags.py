"""Tag pushes name the tagged commit, and Gitea's form deliveries verify.

An annotated tag is an object of its own: a tag push's ``after`` is that
object, not a commit. The payloads are the recorded (GitHub) or documented
(GitLab) ones, pointed at a real repository with a real annotated tag, so
the test can ask git what each id is.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from narwhal.agent.webhooks import GITEA, GITHUB, GITLAB, Ignored, WebhookError, read_webhook
from tests.support.webhooks import SECRET, github_request, recorded

GITLAB_DATA = Path(__file__).resolve().parent / "testdata" / "gitlab"


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True
    )
    return done.stdout.strip()


@pytest.fixture
def tagged(tmp_path: Path) -> tuple[str, str]:
    """(tag object id, commit id) of a real annotated tag ``v1.0.0``."""
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "a").write_text("a\n")
    _git(repo, "add", "a")
    who = ["-c", "user.name=t", "-c", "user.email=t@example.com"]
    _git(repo, *who, "commit", "-qm", "one")
    _git(repo, *who, "tag", "-a", "v1.0.0", "-m", "release")
    tag, commit = _git(repo, "rev-parse", "v1.0.0"), _git(repo, "rev-parse", "v1.0.0^{commit}")
    assert _git(repo, "cat-file", "-t", tag) == "tag" and tag != commit
    return tag, commit


def _github_tag_push(tag: str, commit: str | None) -> dict[str, Any]:
    """GitHub's recorded tag push (a deletion there) made the creation of an annotated tag."""
    payload = recorded("push_payload.json")
    payload.update(created=True, deleted=False, after=tag)
    if commit is not None:
        head = copy.deepcopy(recorded("push_with-new-branch.payload.json")["head_commit"])
        payload["head_commit"] = {**head, "id": commit}
    return payload


def _gitea_headers(signed: bytes, content_type: str) -> dict[str, str]:
    return {
        "content-type": content_type,
        "x-gitea-event": "push",
        "x-gitea-delivery": "g-tag",
        "x-gitea-signature": hmac.new(SECRET.encode(), signed, hashlib.sha256).hexdigest(),
    }


def test_github_annotated_tag_push_is_built_at_the_commit(tagged: tuple[str, str]) -> None:
    tag, commit = tagged
    body, headers = github_request("push", _github_tag_push(tag, commit))
    event = read_webhook(GITHUB, {k.lower(): v for k, v in headers.items()}, body, SECRET)
    assert (getattr(event, "event", None), getattr(event, "sha", None)) == ("tag", commit)


def test_gitea_annotated_tag_push_is_built_at_the_commit(tagged: tuple[str, str]) -> None:
    tag, commit = tagged
    body = json.dumps(_github_tag_push(tag, commit)).encode()
    event = read_webhook(GITEA, _gitea_headers(body, "application/json"), body, SECRET)
    assert getattr(event, "sha", None) == commit


def test_tag_push_without_a_commit_id_is_ignored_saying_so(tagged: tuple[str, str]) -> None:
    tag, _ = tagged
    body, headers = github_request("push", _github_tag_push(tag, None))
    outcome = read_webhook(GITHUB, {k.lower(): v for k, v in headers.items()}, body, SECRET)
    assert isinstance(outcome, Ignored)
    assert "has no head_commit.id" in outcome.reason and "tag object" in outcome.reason


def _gitlab(payload: dict[str, Any]) -> Any:
    headers = {
        "content-type": "application/json",
        "x-gitlab-event": "Tag Push Hook",
        "x-gitlab-token": SECRET,
        "x-gitlab-event-uuid": "tag-1",
    }
    return read_webhook(GITLAB, headers, json.dumps(payload).encode(), SECRET)


def test_gitlab_annotated_tag_push_is_built_at_checkout_sha(tagged: tuple[str, str]) -> None:
    tag, commit = tagged
    payload = json.loads((GITLAB_DATA / "tag_push.json").read_text())
    payload.update(after=tag, checkout_sha=commit)
    event = _gitlab(payload)
    assert (event.event, event.ref, event.sha) == ("tag", "refs/tags/v1.0.0", commit)
    assert event.full_name == "jsmith/example"
    payload["checkout_sha"] = None
    outcome = _gitlab(payload)
    assert isinstance(outcome, Ignored) and "has no checkout_sha" in outcome.reason


def test_gitea_form_delivery_is_verified_over_its_payload() -> None:
    payload = json.dumps(recorded("push_with-new-branch.payload.json"))
    body = urlencode({"payload": payload}).encode()
    # What Gitea does: sign the JSON payload, send it as the form's field.
    headers = _gitea_headers(payload.encode(), "application/x-www-form-urlencoded")
    event = read_webhook(GITEA, headers, body, SECRET)
    assert getattr(event, "sha", None) == recorded("push_with-new-branch.payload.json")["after"]
    tampered = urlencode({"payload": payload.replace("Codertocat", "Attacker")}).encode()
    with pytest.raises(WebhookError) as error:
        read_webhook(GITEA, headers, tampered, SECRET)
    assert error.value.status == 401
    # A signature over the form body is not what Gitea sends: refused too.
    over_form = _gitea_headers(body, "application/x-www-form-urlencoded")
    with pytest.raises(WebhookError) as error:
        read_webhook(GITEA, over_form, body, SECRET)
    assert error.value.status == 401


def test_github_form_delivery_is_still_verified_over_the_body() -> None:
    payload = json.dumps(recorded("push_with-new-branch.payload.json"))
    body = urlencode({"payload": payload}).encode()
    signature = "sha256=" + hmac.new(SECRET.encode(), payload.encode(), hashlib.sha256).hexdigest()
    headers = {
        "content-type": "application/x-www-form-urlencoded",
        "x-github-event": "push",
        "x-github-delivery": "f",
        "x-hub-signature-256": signature,
    }
    with pytest.raises(WebhookError) as error:
        read_webhook(GITHUB, headers, body, SECRET)
    assert error.value.status == 401
