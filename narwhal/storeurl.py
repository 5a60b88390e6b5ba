"""Which store a dispatcher uses: ``--db sqlite:///PATH`` or ``--db postgresql://...``.

Parsed where the flag enters (``settings``), so a mistyped URL is one line
and exit 2 before anything starts. The default is the data dir's SQLite
file. A PostgreSQL URL is handed to libpq as it is (``postgresql://`` or
``postgres://``: host, port, user, database, ``?sslmode=`` and the rest);
its password, if any, never appears in a log line or error (``shown``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from narwhal.errors import ConfigError
from narwhal.redact import redacted

Kind = Literal["sqlite", "postgresql"]


@dataclass(frozen=True, slots=True)
class StoreUrl:
    kind: Kind
    #: SQLite: the file. PostgreSQL: None.
    path: Path | None = None
    #: PostgreSQL: the URL for libpq. SQLite: None.
    dsn: str | None = None

    @property
    def shown(self) -> str:
        """The URL for logs and errors: a password replaced with ``***``."""
        if self.kind == "sqlite":
            return f"sqlite:///{self.path}".replace("////", "///")
        return redacted(self.dsn or "")

    @staticmethod
    def sqlite(path: Path) -> StoreUrl:
        return StoreUrl("sqlite", path=path)


def parse_store_url(text: str) -> StoreUrl:
    """``sqlite:///abs/path``, ``sqlite:relative/path`` or ``postgresql://...``.

    ``ConfigError`` for anything else.
    """
    scheme = text.split(":", 1)[0].lower() if ":" in text else ""
    if scheme == "sqlite":
        rest = text[len("sqlite:") :]
        if rest.startswith("//"):
            rest = rest[2:]
            if rest and not rest.startswith("/"):
                raise ConfigError(
                    f"--db {text!r}: a SQLite URL names a file, sqlite:///ABSOLUTE/PATH"
                    " or sqlite:RELATIVE/PATH, not a host"
                )
        if not rest or rest.endswith("/"):
            raise ConfigError(f"--db {text!r}: no SQLite file named")
        return StoreUrl.sqlite(Path(rest))
    if scheme in ("postgresql", "postgres"):
        parts = urlsplit(text)
        if parts.path.count("/") > 1:
            raise ConfigError(f"--db {redacted(text)!r}: a database name has no '/'")
        return StoreUrl("postgresql", dsn=text)
    raise ConfigError(
        f"--db {redacted(text)!r}: not a store URL (sqlite:///PATH or postgresql://HOST/DATABASE)"
    )
