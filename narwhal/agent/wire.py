"""Webhook requests on the wire: signature checks and body decoding.

Each forge signs differently: GitHub an HMAC of the raw body, Gitea/Forgejo
an HMAC of the JSON payload (which is the body, except in a form delivery,
where the payload is the form's ``payload`` field), GitLab not at all (it
sends the secret itself).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs

from narwhal.errors import NarwhalError

Headers = Mapping[str, str]
FORM = "application/x-www-form-urlencoded"


class WebhookError(NarwhalError):
    """A webhook request is refused; ``status`` is the HTTP answer (4xx)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


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
    """``X-Gitea-Signature: <hex HMAC-SHA256 of the JSON payload>`` (the body, for JSON)."""
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


_FORM = "application/x-www-form-urlencoded"


def _media(content_type: str) -> str:
    return content_type.partition(";")[0].strip().lower()


def media_type(content_type: str) -> str:
    return content_type.partition(";")[0].strip().lower()


def decode_payload(body: bytes, content_type: str, *, form: bool) -> dict[str, Any]:
    media = media_type(content_type)
    if media == FORM and form:
        raw = form_payload(body)
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


def form_payload(body: bytes) -> bytes:
    try:
        fields = parse_qs(body.decode(), strict_parsing=True, max_num_fields=20)
    except (ValueError, UnicodeDecodeError) as e:
        raise WebhookError(f"form body cannot be parsed: {str(e)[:200]}") from None
    values = fields.get("payload")
    if not values:
        raise WebhookError("form body has no payload field")
    return values[0].encode()
