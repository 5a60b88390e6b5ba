"""Back up and restore a dispatcher's store: SQLite online, PostgreSQL with pg_dump.

SQLite: the copy is made with SQLite's online backup API from a read
connection of our own, so it is safe while a dispatcher runs and writes
(WAL readers never block the writer). It is written beside the target,
checked (``integrity_check``, a readable ``schema_version``) and renamed
into place, mode 0600: it holds token digests and sealed secrets. A
restore takes the data dir's lock (no dispatcher may hold it), checks the
file is a Narwhal store this code can open, keeps an overwritten store as
``narwhal.db.before-restore`` and removes stale ``-wal``/``-shm`` files.

PostgreSQL: ``pg_dump --format=custom --no-owner`` of the database (only
the schema named by ``options=-c search_path=...`` if the URL sets one) and
``pg_restore --no-owner --exit-on-error``. The URL goes to libpq with
``-d``, never as separate arguments that would show a password in ``ps``.

Not in a backup: the data dir's keys (``keys/``, ``secrets.key`` that seals
the secrets, ``admin.token``). ``NOT_IN_BACKUP`` says so for the CLI.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from narwhal.dispatcher.datadir import hold
from narwhal.dispatcher.store.migrations import LATEST
from narwhal.errors import StoreError
from narwhal.storeurl import StoreUrl

#: Said once by ``narwhal backup`` and ``restore``.
NOT_IN_BACKUP = (
    "not in the backup: the data dir's keys/, secrets.key (it seals the secrets)"
    " and admin.token; keep copies of them apart"
)
#: Pages copied per step of the SQLite backup (4 KiB pages: 16 MiB a step).
PAGES = 4096
#: Narwhal's tables: a PostgreSQL target holding one already is refused without --force.
_MARK_TABLE = "schema_version"

Progress = Callable[[str], None]


def backup_sqlite(db: Path, target: Path, progress: Progress) -> None:
    """Copy the store ``db`` to ``target`` online: temp file, check, rename, 0600."""
    if not db.is_file():
        raise StoreError(f"no job store at {db}")
    temp = target.with_name(f".{target.name}.partial")
    temp.unlink(missing_ok=True)
    os.close(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    try:
        _copy(db, temp, progress)
        version = check_store(temp)
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    progress(f"backed up {db} (schema version {version}) to {target}")


def _copy(db: Path, temp: Path, progress: Progress) -> None:
    def step(status: int, remaining: int, total: int) -> None:
        progress(f"copied {total - remaining} of {total} pages")

    try:
        source = sqlite3.connect(_read_only(db), uri=True, timeout=30)
        try:
            dest = sqlite3.connect(temp)
            try:
                source.backup(dest, pages=PAGES, progress=step)
                # A copy is a plain file: no WAL beside it to lose.
                dest.execute("PRAGMA journal_mode=DELETE")
            finally:
                dest.close()
        finally:
            source.close()
    except sqlite3.Error as e:
        raise StoreError(f"cannot back up {db}: {e}") from None


def _read_only(path: Path) -> str:
    return path.resolve().as_uri() + "?mode=ro"


def check_store(path: Path) -> int:
    """The schema version of the Narwhal store ``path``; StoreError when it is not one."""
    try:
        db = sqlite3.connect(_read_only(path), uri=True)
    except sqlite3.Error as e:
        raise StoreError(f"{path}: cannot open: {e}") from None
    try:
        return _checked(db, path)
    except sqlite3.DatabaseError as e:
        raise StoreError(f"{path} is not a Narwhal store ({e})") from None
    finally:
        db.close()


def _checked(db: sqlite3.Connection, path: Path) -> int:
    result = db.execute("PRAGMA integrity_check").fetchone()
    if result is None or result[0] != "ok":
        raise StoreError(f"{path} fails SQLite's integrity check: {result}")
    row = db.execute("SELECT version FROM schema_version").fetchone()
    if row is None:
        raise StoreError(f"{path} is not a Narwhal store (schema_version is empty)")
    version = int(row[0])
    if version > LATEST:
        raise StoreError(
            f"{path} has schema version {version}, newer than this narwhal knows ({LATEST}):"
            " restore it with a newer narwhal"
        )
    return version


def restore_sqlite(
    source: Path, data_dir: Path, db: Path, *, force: bool, progress: Progress
) -> None:
    """Put the backup ``source`` in place as ``db``, holding ``data_dir``'s lock."""
    if not source.is_file():
        raise StoreError(f"no backup file {source}")
    version = check_store(source)
    with hold(data_dir):
        if db.exists() and not force:
            raise StoreError(f"{db} exists: restore with --force to replace it")
        temp = db.with_name(f".{db.name}.restoring")
        shutil.copyfile(source, temp)
        os.chmod(temp, 0o600)
        if db.exists():
            os.replace(db, db.with_name(db.name + ".before-restore"))
            progress(f"kept the old store as {db.name}.before-restore")
        for suffix in ("-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(db.with_name(db.name + suffix))
        os.replace(temp, db)
    progress(f"restored {source} (schema version {version}) to {db}")


def search_path(url: StoreUrl) -> str | None:
    """The schema ``options=-c search_path=NAME`` in the URL names, if any."""
    for option in parse_qs(urlsplit(url.dsn or "").query).get("options", []):
        found = re.search(r"search_path\s*=\s*([^\s,]+)", unquote(option))
        if found:
            return found.group(1).strip('"')
    return None


def backup_postgres(url: StoreUrl, target: Path, progress: Progress) -> None:
    """``pg_dump`` of the store (its schema when the URL names one) to ``target``, 0600."""
    temp = target.with_name(f".{target.name}.partial")
    temp.unlink(missing_ok=True)
    os.close(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    command = [_tool("pg_dump"), "--format=custom", "--no-owner", f"--file={temp}"]
    schema = search_path(url)
    if schema:
        command.append(f"--schema={schema}")
    try:
        _run([*command, "-d", url.dsn or ""], url)
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    where = f"schema {schema}" if schema else "the database"
    progress(f"backed up {where} of {url.shown} to {target}")


def restore_postgres(source: Path, url: StoreUrl, *, force: bool, progress: Progress) -> None:
    """``pg_restore`` ``source`` into the store; one with Narwhal tables only with ``force``."""
    if not source.is_file():
        raise StoreError(f"no backup file {source}")
    command = [_tool("pg_restore"), "--no-owner", "--exit-on-error"]
    schema = search_path(url)
    if schema:
        # Its objects only, not its CREATE SCHEMA: the target schema exists.
        command.append(f"--schema={schema}")
    if _has_store(url):
        if not force:
            raise StoreError(f"{url.shown} already holds a Narwhal store: restore with --force")
        command += ["--clean", "--if-exists"]
    _run([*command, "-d", url.dsn or "", str(source)], url)
    progress(f"restored {source} into {url.shown}")


def _has_store(url: StoreUrl) -> bool:
    """Whether the URL's schema (or any on the search path) holds ``schema_version``."""
    query = f"SELECT count(*) FROM pg_tables WHERE tablename = '{_MARK_TABLE}'"
    schema = search_path(url)
    query += f" AND schemaname = '{schema}'" if schema else " AND schemaname = current_schema()"
    out = _run([_tool("psql"), "-XAtq", "-d", url.dsn or "", "-c", query], url)
    return out.strip() not in ("", "0")


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise StoreError(f"{name} not found: install the postgresql-client package")
    return found


def _run(command: list[str], url: StoreUrl) -> str:
    """Run a PostgreSQL client tool; its error as one line, the password kept out."""
    env = {**os.environ, "PGCONNECT_TIMEOUT": os.environ.get("PGCONNECT_TIMEOUT", "10")}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        detail = lines[0] if lines else f"exit {done.returncode}"
        name = os.path.basename(command[0])
        raise StoreError(f"{name} failed on {url.shown}: {_hide(detail, url)}")
    return done.stdout


def _hide(text: str, url: StoreUrl) -> str:
    password = urlsplit(url.dsn or "").password
    return text.replace(unquote(password), "***") if password else text
