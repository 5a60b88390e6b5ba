"""``narwhal backup FILE`` and ``narwhal restore FILE``: the store, either backend.

Where the store is: ``--db URL`` (or ``NARWHAL_DB``), else the data dir's
SQLite file (``--data-dir``, ``NARWHAL_DATA_DIR``, the default data dir).
Progress goes to stderr, one line a step; errors are one line and exit 2
(``cli.main``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from narwhal.config import default_data_dir
from narwhal.dispatcher import backup
from narwhal.settings import env
from narwhal.storeurl import StoreUrl, parse_store_url


def _say(line: str) -> None:
    print(f"narwhal: {line}", file=sys.stderr)  # noqa: T201 - the CLI's own output


def _data_dir(args: argparse.Namespace) -> Path:
    return Path(args.data_dir or env("DATA_DIR") or str(default_data_dir())).expanduser()


def _store(args: argparse.Namespace) -> StoreUrl:
    text = None if args.data_dir else args.db or env("DB")
    if text:
        return parse_store_url(text)
    return StoreUrl.sqlite(_data_dir(args) / "narwhal.db")


def run_backup(args: argparse.Namespace) -> int:
    store = _store(args)
    file = Path(args.file).expanduser()
    if args.command == "backup":
        if store.kind == "postgresql":
            backup.backup_postgres(store, file, _say)
        else:
            backup.backup_sqlite(store.path or Path(), file, _say)
    elif store.kind == "postgresql":
        backup.restore_postgres(file, store, force=args.force, progress=_say)
    else:
        db = store.path or Path()
        data_dir = _data_dir(args) if args.data_dir or not args.db else db.parent
        backup.restore_sqlite(file, data_dir, db, force=args.force, progress=_say)
    _say(backup.NOT_IN_BACKUP)
    return 0
