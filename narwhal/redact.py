"""Credentials embedded in URLs, taken out of anything shown to people.

``https://user:token@host/x.git`` becomes ``https://***@host/x.git`` and
``amqp://guest:guest@mq/`` becomes ``amqp://***@mq/``: the whole user part
goes, because forges accept a token as the user name alone
(``https://TOKEN@github.com/...``). An ``ssh://`` user without a password
(``ssh://git@host/x``) and scp-like ``git@host:x`` stay: they name a login,
whose secret is a key file that never travels in the URL.

A leaf module: the dispatcher, the runner and the agent all use it, and none
of them imports another for it. It works on free text too (git's error
messages quote the URL they failed on), and as a logging filter, so no log
line of a daemon carries a URL's credentials whoever wrote it.
"""

from __future__ import annotations

import logging
import re

#: ``scheme://`` and the authority's user part, up to its last ``@`` (a raw
#: ``@`` inside a password must not leave the rest of the password behind).
_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)([^/?#\s]*)@")
_LOGIN_SCHEMES = frozenset({"ssh://", "git+ssh://", "ssh+git://"})


def _replace(match: re.Match[str]) -> str:
    scheme, userinfo = match.group(1), match.group(2)
    if scheme.lower() in _LOGIN_SCHEMES and ":" not in userinfo:
        return match.group(0)
    return f"{scheme}***@"


def redacted(text: str) -> str:
    """``text`` (a URL, or a message quoting URLs) without the URLs' credentials."""
    if "@" not in text:  # the common case, without the regex
        return text
    return _USERINFO.sub(_replace, text)


class RedactingFilter(logging.Filter):
    """Takes URL credentials out of every record a handler emits.

    On the handler rather than on loggers: a filter on a logger sees only
    records logged through that very logger, not its children's.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redacted(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True
