"""Forge webhook parsing and signatures, on payloads recorded from GitHub."""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
import sys
from typing import Any
from urllib.parse import urlencode

import pytest

from narwhal.agent.webhooks import (
    GITEA,
    GITHUB,
    GITLAB,
    Ignored,
    Pong,
    WebhookError,
    read_webhook,
)
from narwhal.events import CommitEvent, EventError, decode, encode
from tests.support.webhooks import SECRET, github_request, recorded, sign

SHA = "6113728f27ae82c7b1a177c8d03f9e96e0adf246"


def _github(event: str, name_or_payload: str | dict[str, Any], **kw: Any) -> Any:
    payload = recorded(name_or_payload) if isinstance(name_or_payload, str) else name_or_payload
    body, headers = github_request(event, payload, **kw)
    return read_webhook(GITHUB, {k.lower(): v for k, v in headers.items()}, body, SECRET)


def test_push_to_new_branch_is_a_commit_event() -> None:
    event = _github("push", "push_with-new-branch.payload.json", delivery="d-1")
    assert event == CommitEvent(
        id="github:d-1",
        forge="github",
        delivery="d-1",
        repo="https://github.com/Codertocat/Hello-World.git",
        full_name="Codertocat/Hello-World",
        ref="refs/heads/master",
        sha=SHA,
        event="push",
    )


def test_tag_deletion_is_ignored_with_reason() -> None:
    outcome = _github("push", "push_payload.json")
    assert outcome == Ignored("push deletes refs/tags/simple-tag")


def test_tag_push_is_a_tag_event() -> None:
    payload = recorded("push_payload.json")
    head = recorded("push_with-new-branch.payload.json")["head_commit"]
    payload.update(deleted=False, after=SHA, created=True, head_commit=head)
    event = _github("push", payload)
    assert isinstance(event, CommitEvent)
    assert (event.event, event.ref, event.sha) == ("tag", "refs/tags/simple-tag", SHA)


def test_pull_request_opened_builds_head_from_head_repo() -> None:
    payload = recorded("pull_request_opened.payload.json")
    payload["pull_request"]["head"]["repo"]["clone_url"] = "https://github.com/fork/hello.git"
    event = _github("pull_request", payload)
    assert isinstance(event, CommitEvent)
    assert event.event == "pull_request"
    assert event.sha == payload["pull_request"]["head"]["sha"]
    assert event.repo == "https://github.com/fork/hello.git"
    assert event.full_name == "Codertocat/Hello-World"  # statuses go to the base
    assert event.ref == "refs/heads/changes"
    assert event.fork_of == "https://github.com/Codertocat/Hello-World.git"


def test_pull_request_from_the_same_repository_is_no_fork() -> None:
    event = _github("pull_request", "pull_request_opened.payload.json")
    assert isinstance(event, CommitEvent) and event.fork_of is None
    assert decode(encode(event)) == event


@pytest.mark.parametrize(
    ("field", "value"),
    [("full_name", "attacker/Hello-World"), ("id", 1), ("clone_url", "/srv/other"), ("id", None)],
)
def test_pull_request_whose_head_differs_in_anything_is_a_fork(field: str, value: Any) -> None:
    payload = recorded("pull_request_opened.payload.json")
    payload["pull_request"]["head"]["repo"][field] = value
    event = _github("pull_request", payload)
    assert isinstance(event, CommitEvent)
    assert event.fork_of == "https://github.com/Codertocat/Hello-World.git"
    assert decode(encode(event)).fork_of == event.fork_of


def test_version_1_events_decode_and_their_pull_requests_count_as_forks() -> None:
    push = _github("push", "push_with-new-branch.payload.json")
    pull = _github("pull_request", "pull_request_opened.payload.json")
    assert isinstance(push, CommitEvent) and isinstance(pull, CommitEvent)
    for event, fork_of in ((push, None), (pull, pull.repo)):
        old = {k: v for k, v in json.loads(encode(event)).items() if k != "fork_of"}
        decoded = decode(json.dumps({**old, "v": 1}).encode())
        assert decoded.fork_of == fork_of and decoded.sha == event.sha


@pytest.mark.parametrize("action", ["synchronize", "reopened"])
def test_pull_request_new_commits_are_built(action: str) -> None:
    payload = recorded("pull_request_opened.payload.json")
    payload["action"] = action
    assert isinstance(_github("pull_request", payload), CommitEvent)


def test_pull_request_labeled_is_ignored() -> None:
    outcome = _github("pull_request", "pull_request_labeled.payload.json")
    assert outcome == Ignored("pull_request labeled: no new commit to build")


def test_ping_is_a_pong() -> None:
    assert _github("ping", "ping_payload.json") == Pong()


def test_other_events_are_ignored_with_reason() -> None:
    outcome = _github("issues", {"action": "opened"})
    assert isinstance(outcome, Ignored) and "'issues' is not built" in outcome.reason


def test_wrong_or_missing_signature_is_401() -> None:
    body, headers = github_request("push", recorded("push_with-new-branch.payload.json"))
    lower = {k.lower(): v for k, v in headers.items()}
    with pytest.raises(WebhookError) as wrong:
        read_webhook(GITHUB, lower, body, "another secret")
    assert wrong.value.status == 401
    del lower["x-hub-signature-256"]
    with pytest.raises(WebhookError, match="missing X-Hub-Signature-256") as missing:
        read_webhook(GITHUB, lower, body, SECRET)
    assert missing.value.status == 401
    lower["x-hub-signature-256"] = sign(body)
    with pytest.raises(WebhookError) as tampered:
        read_webhook(GITHUB, lower, body + b" ", SECRET)
    assert tampered.value.status == 401


def _signed(headers: dict[str, str], body: bytes) -> dict[str, str]:
    return {**headers, "x-hub-signature-256": sign(body)}


def test_content_type_and_json_errors_are_4xx() -> None:
    base = {"x-github-event": "push", "x-github-delivery": "d"}
    cases = [
        (b"{}", "text/plain", 415),
        (b"{not json", "application/json", 400),
        (b"[1, 2]", "application/json", 400),
        (b"[" * 100_000 + b"]" * 100_000, "application/json", 400),
        (b'{"ref": "refs/heads/x"}', "application/json", 400),
    ]
    for body, content_type, status in cases:
        headers = _signed({**base, "content-type": content_type}, body)
        with pytest.raises(WebhookError) as error:
            read_webhook(GITHUB, headers, body, SECRET)
        assert error.value.status == status, (body[:20], str(error.value))


def test_invalid_fields_are_400_with_the_field() -> None:
    payload = recorded("push_with-new-branch.payload.json")
    payload["after"] = "not-a-sha"
    with pytest.raises(WebhookError, match="sha") as error:
        _github("push", payload)
    assert error.value.status == 400
    payload = recorded("push_with-new-branch.payload.json")
    payload["repository"]["clone_url"] = "--upload-pack=evil"
    with pytest.raises(WebhookError, match="repo"):
        _github("push", payload)


def test_form_encoded_github_payload() -> None:
    payload = json.dumps(recorded("push_with-new-branch.payload.json"))
    body = urlencode({"payload": payload}).encode()
    headers = _signed(
        {
            "content-type": "application/x-www-form-urlencoded",
            "x-github-event": "push",
            "x-github-delivery": "form-1",
        },
        body,
    )
    event = read_webhook(GITHUB, headers, body, SECRET)
    assert isinstance(event, CommitEvent) and event.sha == SHA


def test_gitea_push_and_pull_request_synchronized() -> None:
    push = recorded("push_with-new-branch.payload.json")
    body = json.dumps(push).encode()
    headers = {
        "content-type": "application/json",
        "x-gitea-event": "push",
        "x-gitea-delivery": "g-1",
        "x-gitea-signature": hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest(),
    }
    event = read_webhook(GITEA, headers, body, SECRET)
    assert isinstance(event, CommitEvent)
    assert (event.forge, event.id, event.sha) == ("gitea", "gitea:g-1", SHA)
    pr = recorded("pull_request_opened.payload.json")
    pr["action"] = "synchronized"
    body = json.dumps(pr).encode()
    headers["x-gitea-event"] = "pull_request"
    headers["x-gitea-signature"] = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert isinstance(read_webhook(GITEA, headers, body, SECRET), CommitEvent)
    headers["x-gitea-signature"] = "0" * 64
    with pytest.raises(WebhookError) as error:
        read_webhook(GITEA, headers, body, SECRET)
    assert error.value.status == 401


def _gitlab_push(after: str = SHA, ref: str = "refs/heads/main") -> dict[str, Any]:
    return {
        "object_kind": "push" if ref.startswith("refs/heads/") else "tag_push",
        "ref": ref,
        "before": "0" * 40,
        "after": after,
        "project": {
            "path_with_namespace": "group/sub/project",
            "git_http_url": "https://gitlab.example/group/sub/project.git",
        },
    }


def _gitlab(payload: dict[str, Any], token: str = SECRET, event: str = "Push Hook") -> Any:
    body = json.dumps(payload).encode()
    headers = {
        "content-type": "application/json",
        "x-gitlab-event": event,
        "x-gitlab-token": token,
        "x-gitlab-event-uuid": "u-1",
    }
    return read_webhook(GITLAB, headers, body, SECRET)


def test_gitlab_push_tag_and_token() -> None:
    event = _gitlab(_gitlab_push())
    assert isinstance(event, CommitEvent)
    assert (event.full_name, event.event, event.id) == ("group/sub/project", "push", "gitlab:u-1")
    tag_push = {**_gitlab_push(ref="refs/tags/v1"), "checkout_sha": SHA}
    tag = _gitlab(tag_push, event="Tag Push Hook")
    assert isinstance(tag, CommitEvent) and tag.event == "tag"
    assert isinstance(_gitlab(_gitlab_push(after="0" * 40)), Ignored)
    with pytest.raises(WebhookError) as error:
        _gitlab(_gitlab_push(), token="guess")
    assert error.value.status == 401


def test_gitlab_merge_request() -> None:
    attrs = {
        "action": "update",
        "source_branch": "feature",
        "last_commit": {"id": SHA},
        "source": {
            "path_with_namespace": "fork/project",
            "git_http_url": "https://gitlab.example/fork/project.git",
        },
    }
    payload = {"object_kind": "merge_request", "object_attributes": attrs}
    assert _gitlab(payload, event="Merge Request Hook") == Ignored(
        "merge request update without new commits"
    )
    attrs["oldrev"] = "1" * 40
    event = _gitlab(payload, event="Merge Request Hook")
    assert isinstance(event, CommitEvent)
    assert (event.event, event.ref, event.full_name) == (
        "pull_request",
        "refs/heads/feature",
        "fork/project",
    )
    # No target project in the payload: a fork (of itself, as nothing else is known).
    assert event.fork_of == "https://gitlab.example/fork/project.git"
    attrs.update(
        source_project_id=7,
        target_project_id=9,
        target={"git_http_url": "https://gitlab.example/group/project.git"},
    )
    fork = _gitlab(payload, event="Merge Request Hook")
    assert isinstance(fork, CommitEvent)
    assert fork.fork_of == "https://gitlab.example/group/project.git"
    attrs.update(target_project_id=7, target={"git_http_url": attrs["source"]["git_http_url"]})
    same = _gitlab(payload, event="Merge Request Hook")
    assert isinstance(same, CommitEvent) and same.fork_of is None


def test_event_wire_format_round_trip_and_errors() -> None:
    event = _github("push", "push_with-new-branch.payload.json", delivery="d-2")
    assert decode(encode(event)) == event
    good = json.loads(encode(event))
    bad_cases = [
        b"\xff",
        b"[]",
        json.dumps({**good, "v": 3}).encode(),
        json.dumps({**good, "v": True}).encode(),
        json.dumps({**good, "fork_of": 5}).encode(),
        json.dumps({**good, "fork_of": "https://github.com/o/r.git"}).encode(),  # a push
        json.dumps({**good, "sha": 5}).encode(),
        json.dumps({**good, "event": "deploy"}).encode(),
        json.dumps({**good, "ref": "refs/heads/../x"}).encode(),
        json.dumps({**good, "repo": "-oProxyCommand=x"}).encode(),
        json.dumps({k: v for k, v in good.items() if k != "full_name"}).encode(),
        b" " * 20_000,
    ]
    for data in bad_cases:
        with pytest.raises(EventError):
            decode(data)


def test_the_agent_never_imports_the_dispatcher() -> None:
    code = (
        "import sys, narwhal.agent.server, narwhal.agent.webhooks;"
        "bad = sorted(m for m in sys.modules if m.startswith('narwhal.dispatcher'));"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=60)
