"""Who is looking: a signed-in browser, a ``--public-read`` viewer, or nobody.

A viewer reads history with a token: a signed-in browser's own, else (in
``--public-read`` mode) the backend's read token. Changes (cancel,
resubmit) are only ever made with a signed-in browser's token.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import HTTPConnection

from narwhal.backend.sessions import COOKIE, Session, Sessions
from narwhal.backend.upstream import ApiError, Upstream

#: What ``POST /session`` asks the dispatcher to learn whether a token may read.
CHECK_PATH = "/api/runners"


@dataclass(frozen=True, slots=True)
class Viewer:
    """The token reads are made with (None: none), and the session, if signed in."""

    token: str | None
    session: Session | None


class Access:
    """Sessions, and whether reads are open to all."""

    def __init__(
        self,
        sessions: Sessions,
        upstream: Upstream,
        *,
        public_read: bool,
        api_token: str | None,
    ) -> None:
        self.sessions = sessions
        self.upstream = upstream
        self.public_read = public_read
        self.api_token = api_token

    async def viewer(self, connection: HTTPConnection) -> Viewer | None:
        """Who sent this request or opened this websocket; None: nobody may see."""
        session = await self.session(connection)
        if session is not None:
            return Viewer(token=session.token, session=session)
        if self.public_read:
            return Viewer(token=self.api_token, session=None)
        return None

    async def session(self, connection: HTTPConnection) -> Session | None:
        """The request's live session; its token checked again when that is due."""
        session = self.sessions.get(connection.cookies.get(COOKIE))
        if (
            session is not None
            and self.sessions.due(session)
            and not await self.still_good(session)
        ):
            return None
        return session

    async def still_good(self, session: Session) -> bool:
        """Ask the dispatcher about a session's token; drop the session if it is refused.

        A dispatcher that cannot be asked (restarting, say) signs nobody out.
        """
        try:
            await self.upstream.get(CHECK_PATH, session.token)
        except ApiError as e:
            if e.status in (401, 403):
                self.sessions.drop(session)
                return False
            return True
        self.sessions.checked(session)
        return True

    async def sign_in(self, token: str) -> str:
        """A new session's id for a token the dispatcher accepts; ApiError if it refuses."""
        await self.upstream.get(CHECK_PATH, token)
        session_id, _ = self.sessions.create(token)
        return session_id
