"""Forge webhooks: signature checks and payload parsing into commit events.

Pure functions over (headers, raw body): no I/O, so every forge's rules are
tested on recorded payloads. ``read_webhook`` is the whole path: verify the
signature over the raw body first (nothing of an unsigned body is looked
at), then the content type, then the JSON, then the event.

What is built (everything else is answered "ignored" with the reason):

- GitHub: ``push`` of a branch or tag (not a deletion), ``pull_request``
  opened/synchronize/reopened (the head commit, cloned from the head
  repository; ``fork_of`` set when that is not the base repository), ``ping``.
- Gitea/Forgejo: the same events and payload shape (``synchronized``).
- GitLab: Push Hook, Tag Push Hook, Merge Request Hook open/reopen and
  update with new commits (``fork_of`` set when the source project is not the
  target project).

A pull request counts as coming from a fork unless the payload shows that
head and base are one repository (same id, name and clone URL): what cannot
be told apart is a fork, so it never gets the base repository's secrets by
accident.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from narwhal.agent.events import CommitEvent, EventError
from narwhal.errors import NarwhalError

_ZERO_SHA = re.compile(r"0{40}(0{24})?")
_DELIVERY = re.compile(r"[\x21-\x7e]{1,200}")
_GITHUB_PR_ACTIONS = frozenset({"opened", "synchronize", "reopened"})
_GITEA_PR_ACTIONS = _GITHUB_PR_ACTIONS | {"synchronized"}
_GITLAB_MR_ACTIONS = frozenset({"open", "reopen", "update"})

Headers = Mapping[str, str]


class WebhookError(NarwhalError):
    """A webhook request is refused; ``status`` is the HTTP answer (4xx)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class Ignored:
    """A valid webhook that builds nothing (a deletion, a label change, ...)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Pong:
    """A forge checking that the hook works."""


Outcome = CommitEvent | Ignored | Pong


@dataclass(frozen=True, slots=True, kw_only=True)
class Forge:
    """How one forge signs, names and shapes its webhooks."""

    name: str
    event_header: str
    delivery_headers: tuple[str, ...]
    verify: Callable[[Headers, bytes, str], None]
    parse: Callable[[str, str, dict[str, Any]], Outcome]
    #: GitHub and Gitea can send ``application/x-www-form-urlencoded`` (payload=...).
    form: bool


def read_webhook(forge: Forge, headers: Headers, body: bytes, secret: str) -> Outcome:
    """Verify, decode and interpret one webhook; raise ``WebhookError`` if refused."""
    forge.verify(headers, body, secret)
    name = headers.get(forge.event_header, "").strip()
    if not name and forge.name != "gitlab":
        raise WebhookError(f"missing {forge.event_header} header")
    payload = decode_payload(body, headers.get("content-type", ""), form=forge.form)
    delivery = delivery_id(forge, headers, body)
    try:
        return forge.parse(name, delivery, payload)
    except EventError as e:
        raise WebhookError(f"{forge.name} {name or 'event'}: {e}") from None


# signatures


def _hmac_hex(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _signature(headers: Headers, name: str) -> bytes:
    given = headers.get(name.lower(), "").strip()
    if not given:
        raise WebhookError(f"missing {name} header", 401)
    return given.lower().encode("utf-8", "replace")


def verify_github(headers: Headers, body: bytes, secret: str) -> None:
    """``X-Hub-Signature-256: sha256=<HMAC-SHA256 of the raw body>``."""
    given = _signature(headers, "X-Hub-Signature-256")
    if not hmac.compare_digest(given, f"sha256={_hmac_hex(secret, body)}".encode()):
        raise WebhookError("X-Hub-Signature-256 does not match the body", 401)


def verify_gitea(headers: Headers, body: bytes, secret: str) -> None:
    """``X-Gitea-Signature: <hex HMAC-SHA256 of the raw body>``."""
    given = _signature(headers, "X-Gitea-Signature")
    if not hmac.compare_digest(given, _hmac_hex(secret, body).encode()):
        raise WebhookError("X-Gitea-Signature does not match the body", 401)


def verify_gitlab(headers: Headers, body: bytes, secret: str) -> None:
    """``X-Gitlab-Token: <the secret itself>`` (GitLab does not sign bodies)."""
    given = headers.get("x-gitlab-token", "")
    if not given:
        raise WebhookError("missing X-Gitlab-Token header", 401)
    if not hmac.compare_digest(given.encode("utf-8", "replace"), secret.encode()):
        raise WebhookError("X-Gitlab-Token is wrong", 401)


# body and headers


def decode_payload(body: bytes, content_type: str, *, form: bool) -> dict[str, Any]:
    media = content_type.partition(";")[0].strip().lower()
    if media == "application/x-www-form-urlencoded" and form:
        raw = _form_payload(body)
    elif media == "application/json":
        raw = body
    else:
        raise WebhookError(f"Content-Type {media or '(none)'}: expected application/json", 415)
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise WebhookError(f"body is not valid JSON: {str(e)[:200]}") from None
    if not isinstance(data, dict):
        raise WebhookError("body must be a JSON object")
    return data


def _form_payload(body: bytes) -> bytes:
    try:
        fields = parse_qs(body.decode(), strict_parsing=True, max_num_fields=20)
    except (ValueError, UnicodeDecodeError) as e:
        raise WebhookError(f"form body cannot be parsed: {str(e)[:200]}") from None
    values = fields.get("payload")
    if not values:
        raise WebhookError("form body has no payload field")
    return values[0].encode()


def delivery_id(forge: Forge, headers: Headers, body: bytes) -> str:
    """The forge's delivery id, or a digest of the body when it sends none."""
    for name in forge.delivery_headers:
        value = headers.get(name.lower(), "").strip()
        if value:
            if not _DELIVERY.fullmatch(value):
                raise WebhookError(f"{name}: expected 1-200 printable characters")
            return value
    return "sha256-" + hashlib.sha256(body).hexdigest()[:40]


# payload fields


def _get(payload: dict[str, Any], path: str, kind: type = str) -> Any:
    node: Any = payload
    for part in path.split("."):
        if not isinstance(node, dict) or node.get(part) is None:
            raise WebhookError(f"payload has no {path}")
        node = node[part]
    if not isinstance(node, kind) or (kind is str and not node):
        raise WebhookError(f"payload {path}: expected a {'string' if kind is str else kind}")
    return node


def _ref_kind(ref: str) -> str | None:
    if ref.startswith("refs/heads/"):
        return "push"
    if ref.startswith("refs/tags/"):
        return "tag"
    return None


def _event(forge: str, delivery: str, **fields: Any) -> CommitEvent:
    return CommitEvent(id=f"{forge}:{delivery}", forge=forge, delivery=delivery, **fields)


# GitHub and Gitea


def _push(forge: str, delivery: str, payload: dict[str, Any]) -> Outcome:
    ref = _get(payload, "ref")
    after = _get(payload, "after")
    if payload.get("deleted") is True or _ZERO_SHA.fullmatch(after):
        return Ignored(f"push deletes {ref}")
    kind = _ref_kind(ref)
    if kind is None:
        return Ignored(f"push to {ref}: only branches and tags are built")
    return _event(
        forge,
        delivery,
        repo=_get(payload, "repository.clone_url"),
        full_name=_get(payload, "repository.full_name"),
        ref=ref,
        sha=after,
        event=kind,
    )


def _pull_request(
    forge: str, delivery: str, payload: dict[str, Any], actions: frozenset[str]
) -> Outcome:
    action = _get(payload, "action")
    if action not in actions:
        return Ignored(f"pull_request {action}: no new commit to build")
    head = _get(payload, "pull_request.head", dict)
    if head.get("repo") is None:
        return Ignored("pull_request: the head repository no longer exists")
    base = _get(payload, "repository", dict)
    same = _same_repo(head["repo"], base, ("id", "full_name", "clone_url"))
    return _event(
        forge,
        delivery,
        repo=_get(payload, "pull_request.head.repo.clone_url"),
        # Statuses go to the base repository, where the pull request is shown.
        full_name=_get(payload, "repository.full_name"),
        ref="refs/heads/" + _get(payload, "pull_request.head.ref"),
        sha=_get(payload, "pull_request.head.sha"),
        event="pull_request",
        fork_of=None if same else _get(payload, "repository.clone_url"),
    )


def _same_repo(head: Any, base: Any, fields: tuple[str, ...]) -> bool:
    """Both sides present and equal in every field (a missing one: not the same)."""
    if not isinstance(head, dict) or not isinstance(base, dict):
        return False
    return all(head.get(f) is not None and head.get(f) == base.get(f) for f in fields)


def parse_github(name: str, delivery: str, payload: dict[str, Any]) -> Outcome:
    if name == "ping":
        return Pong()
    if name == "push":
        return _push("github", delivery, payload)
    if name == "pull_request":
        return _pull_request("github", delivery, payload, _GITHUB_PR_ACTIONS)
    return Ignored(f"event {name!r} is not built (only push, pull_request and ping)")


def parse_gitea(name: str, delivery: str, payload: dict[str, Any]) -> Outcome:
    if name == "push":
        return _push("gitea", delivery, payload)
    if name == "pull_request":
        return _pull_request("gitea", delivery, payload, _GITEA_PR_ACTIONS)
    return Ignored(f"event {name!r} is not built (only push and pull_request)")


# GitLab


def _gitlab_push(delivery: str, payload: dict[str, Any]) -> Outcome:
    ref = _get(payload, "ref")
    after = _get(payload, "after")
    if _ZERO_SHA.fullmatch(after):
        return Ignored(f"push deletes {ref}")
    kind = _ref_kind(ref)
    if kind is None:
        return Ignored(f"push to {ref}: only branches and tags are built")
    return _event(
        "gitlab",
        delivery,
        repo=_get(payload, "project.git_http_url"),
        full_name=_get(payload, "project.path_with_namespace"),
        ref=ref,
        sha=after,
        event=kind,
    )


def _gitlab_merge_request(delivery: str, payload: dict[str, Any]) -> Outcome:
    attrs = _get(payload, "object_attributes", dict)
    action = _get(payload, "object_attributes.action")
    if action not in _GITLAB_MR_ACTIONS:
        return Ignored(f"merge request {action}: no new commit to build")
    if action == "update" and not attrs.get("oldrev"):
        return Ignored("merge request update without new commits")
    source_url = _get(payload, "object_attributes.source.git_http_url")
    target = attrs.get("target")
    target_url = target.get("git_http_url") if isinstance(target, dict) else None
    same = _same_repo(
        {"id": attrs.get("source_project_id"), "url": source_url},
        {"id": attrs.get("target_project_id"), "url": target_url},
        ("id", "url"),
    )
    return _event(
        "gitlab",
        delivery,
        repo=source_url,
        # GitLab shows a merge request's pipelines from its source project.
        full_name=_get(payload, "object_attributes.source.path_with_namespace"),
        ref="refs/heads/" + _get(payload, "object_attributes.source_branch"),
        sha=_get(payload, "object_attributes.last_commit.id"),
        event="pull_request",
        fork_of=None if same else _gitlab_target(payload, target_url, source_url),
    )


def _gitlab_target(payload: dict[str, Any], target_url: Any, source_url: str) -> str:
    """The target project's clone URL (the hook's project), else the source's own."""
    project = payload.get("project")
    hooked = project.get("git_http_url") if isinstance(project, dict) else None
    for url in (target_url, hooked):
        if isinstance(url, str) and url:
            return url
    return source_url


def parse_gitlab(name: str, delivery: str, payload: dict[str, Any]) -> Outcome:
    kind = payload.get("object_kind")
    if kind in ("push", "tag_push"):
        return _gitlab_push(delivery, payload)
    if kind == "merge_request":
        return _gitlab_merge_request(delivery, payload)
    shown = name or str(kind)[:80]
    return Ignored(f"event {shown!r} is not built (only push, tag push and merge request)")


GITHUB = Forge(
    name="github",
    event_header="x-github-event",
    delivery_headers=("X-GitHub-Delivery",),
    verify=verify_github,
    parse=parse_github,
    form=True,
)
GITEA = Forge(
    name="gitea",
    event_header="x-gitea-event",
    delivery_headers=("X-Gitea-Delivery",),
    verify=verify_gitea,
    parse=parse_gitea,
    form=True,
)
GITLAB = Forge(
    name="gitlab",
    event_header="x-gitlab-event",
    delivery_headers=("X-Gitlab-Event-UUID", "Idempotency-Key"),
    verify=verify_gitlab,
    parse=parse_gitlab,
    form=False,
)
FORGES = {forge.name: forge for forge in (GITHUB, GITEA, GITLAB)}
