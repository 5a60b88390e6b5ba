"""Forge webhooks: signature checks and payload parsing into commit events.

Pure functions over (headers, raw body): no I/O, so every forge's rules are
tested on recorded payloads. This is one of the parts that work well: keep
the forges' rules here, pure, and the I/O (HTTP, AMQP) in the modules that
call them. ``read_webhook`` is the whole path: verify the
signature over what the forge signs first (GitHub: the raw body; Gitea: the
JSON, which a form delivery carries in its ``payload`` field), then the
content type, then the JSON, then the event. A tag push is built at the
tagged commit, never at an annotated tag's object (its ``after``).

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
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from narwhal.agent.wire import (
    FORM,
    Headers,
    WebhookError,
    decode_payload,
    form_payload,
    media_type,
    verify_gitea,
    verify_github,
    verify_gitlab,
)
from narwhal.events import CommitEvent, EventError
from narwhal.forges import ForgeName

__all__ = ["READERS", "Forge", "Ignored", "Pong", "WebhookError", "read_webhook"]

_ZERO_SHA = re.compile(r"0{40}(0{24})?")
_DELIVERY = re.compile(r"[\x21-\x7e]{1,200}")
_GITHUB_PR_ACTIONS = frozenset({"opened", "synchronize", "reopened"})
_GITEA_PR_ACTIONS = _GITHUB_PR_ACTIONS | {"synchronized"}
_GITLAB_MR_ACTIONS = frozenset({"open", "reopen", "update"})


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

    name: ForgeName
    event_header: str
    delivery_headers: tuple[str, ...]
    verify: Callable[[Headers, bytes, str], None]
    parse: Callable[[str, str, dict[str, Any]], Outcome]
    #: GitHub and Gitea can send ``application/x-www-form-urlencoded`` (payload=...).
    form: bool
    #: The signature of a form delivery covers its decoded ``payload`` field
    #: (Gitea), not the form body (GitHub).
    signs_form_payload: bool = False


def read_webhook(forge: Forge, headers: Headers, body: bytes, secret: str) -> Outcome:
    """Verify, decode and interpret one webhook; raise ``WebhookError`` if refused."""
    forge.verify(headers, _signed_bytes(forge, headers, body), secret)
    name = headers.get(forge.event_header, "").strip()
    if not name and forge.name != "gitlab":
        raise WebhookError(f"missing {forge.event_header} header")
    payload = decode_payload(body, headers.get("content-type", ""), form=forge.form)
    delivery = delivery_id(forge, headers, body)
    try:
        return forge.parse(name, delivery, payload)
    except EventError as e:
        raise WebhookError(f"{forge.name} {name or 'event'}: {e}") from None


# body and headers


def _signed_bytes(forge: Forge, headers: Headers, body: bytes) -> bytes:
    """What the forge's signature covers: the body, or a Gitea form's payload field."""
    if forge.signs_form_payload and media_type(headers.get("content-type", "")) == FORM:
        return form_payload(body)
    return body


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
    sha = after if kind == "push" else _commit_id(payload, "head_commit.id")
    if sha is None:
        return _no_commit(ref, "head_commit.id")
    return _event(
        forge,
        delivery,
        repo=_get(payload, "repository.clone_url"),
        full_name=_get(payload, "repository.full_name"),
        ref=ref,
        sha=sha,
        event=kind,
    )


def _commit_id(payload: dict[str, Any], path: str) -> str | None:
    """The commit a tag push names: GitHub and Gitea ``head_commit.id``, GitLab ``checkout_sha``."""
    value: Any = payload
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value if isinstance(value, str) and value and not _ZERO_SHA.fullmatch(value) else None


def _no_commit(ref: str, path: str) -> Ignored:
    return Ignored(
        f"push of {ref} has no {path}: the tagged commit is unknown (after may be a tag object)"
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
    sha = after if kind == "push" else _commit_id(payload, "checkout_sha")
    if sha is None:
        return _no_commit(ref, "checkout_sha")
    return _event(
        "gitlab",
        delivery,
        repo=_get(payload, "project.git_http_url"),
        full_name=_get(payload, "project.path_with_namespace"),
        ref=ref,
        sha=sha,
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
    signs_form_payload=True,
)
GITLAB = Forge(
    name="gitlab",
    event_header="x-gitlab-event",
    delivery_headers=("X-Gitlab-Event-UUID", "Idempotency-Key"),
    verify=verify_gitlab,
    parse=parse_gitlab,
    form=False,
)
#: The reader of each forge in ``narwhal.forges.FORGES``, in its order.
READERS: dict[ForgeName, Forge] = {forge.name: forge for forge in (GITHUB, GITEA, GITLAB)}
