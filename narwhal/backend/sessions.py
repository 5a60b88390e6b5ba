"""Signed-in browsers: a random session id in a cookie, the API token in memory.

A browser signs in with an API token of the dispatcher (``POST /session``);
the backend checks it against the dispatcher's API, keeps it here, and
gives the browser only a session id: 32 random bytes in an ``HttpOnly;
SameSite=Strict`` cookie, so neither the page's scripts nor another site's
requests ever carry the token. Sessions live in this process's memory (a
restart signs everyone out; the page signs in again from its stored link)
and are bounded: at most ``limit`` of them (the least recently used goes
first), each ending ``idle`` seconds after its last use and ``lifetime``
seconds after sign-in. Ids are kept by their SHA-256 digest, so a lookup
compares digests, never the secret itself.

A token revoked on the dispatcher must not stay good here: a session is
checked again (``due``) when it is used ``recheck`` seconds after its last
check, and the backend drops it when the dispatcher says 401.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

COOKIE = "narwhal_session"
#: Most sessions held at once.
LIMIT = 10_000
#: A session unused this long (seconds) ends: a week.
IDLE = 7 * 86400.0
#: Every session ends this long (seconds) after sign-in: 30 days.
LIFETIME = 30 * 86400.0
#: Seconds between two checks of a session's token with the dispatcher.
RECHECK = 60.0


@dataclass(slots=True, kw_only=True)
class Session:
    """One signed-in browser (or several tabs of it)."""

    key: str = field(repr=False)
    token: str = field(repr=False)
    created: float
    used: float
    checked: float


def _key(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


class Sessions:
    """Session id -> token, bounded and expiring (module docstring)."""

    def __init__(
        self,
        *,
        limit: int = LIMIT,
        idle: float = IDLE,
        lifetime: float = LIFETIME,
        recheck: float = RECHECK,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.idle = idle
        self.lifetime = lifetime
        self.recheck = recheck
        self._clock = clock
        self._by_key: OrderedDict[str, Session] = OrderedDict()

    def __len__(self) -> int:
        return len(self._by_key)

    def create(self, token: str) -> tuple[str, Session]:
        """A new session for a checked token: its id (the cookie's value) and itself."""
        now = self._clock()
        session_id = secrets.token_urlsafe(32)
        session = Session(key=_key(session_id), token=token, created=now, used=now, checked=now)
        self._by_key[session.key] = session
        while len(self._by_key) > self.limit:
            self._by_key.popitem(last=False)
        return session_id, session

    def get(self, session_id: str | None) -> Session | None:
        """The live session of a cookie's value (and mark it used), or None."""
        if not session_id or len(session_id) > 100:
            return None
        key = _key(session_id)
        session = self._by_key.get(key)
        if session is None:
            return None
        now = self._clock()
        if now - session.used > self.idle or now - session.created > self.lifetime:
            del self._by_key[key]
            return None
        session.used = now
        self._by_key.move_to_end(key)
        return session

    def due(self, session: Session) -> bool:
        """Whether the session's token should be checked with the dispatcher again."""
        return self._clock() - session.checked > self.recheck

    def checked(self, session: Session) -> None:
        session.checked = self._clock()

    def drop(self, session: Session) -> None:
        self._by_key.pop(session.key, None)

    def alive(self, session: Session) -> bool:
        """Still held (not signed out, expired or evicted); does not count as a use."""
        return self._by_key.get(session.key) is session

    def max_age(self) -> int:
        """The cookie's Max-Age: the browser forgets it when the session must have ended."""
        return int(self.lifetime)
