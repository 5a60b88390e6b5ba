"""The ``narwhal`` command: daemons (up, dispatcher, runner, agent, backend) and client commands.

Flags are defined in ``parser`` and ``flags`` and turned into config objects
by ``narwhal.settings``; the daemons are put together by ``narwhal.daemons``.
This package configures logging and handles exit codes: 0 success, 1 a job
or pipeline did not succeed (a narwhal.yml that does not load too, for
``exec`` as for ``submit -f``), 2 a usage, config or connection error, 141
stdout closed early (``| head``). Each command's modules are imported only
when it runs.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from narwhal.cli.parser import build_parser
from narwhal.cli.pipes import SIGPIPE_STATUS, drop_stdout
from narwhal.errors import ConfigError, NarwhalError, PipelineError
from narwhal.redact import RedactingFilter, redacted

__all__ = ["SIGPIPE_STATUS", "build_parser", "entrypoint", "main"]


#: Arguments that name files: the operating system takes any bytes there.
_PATH_ARGS = frozenset({"directory", "data_dir", "work_dir"})


def _check_text(args: argparse.Namespace) -> None:
    """Refuse arguments (and NARWHAL_* values) with bytes that are not UTF-8.

    Python hands them over as lone surrogates, which JSON, ZeroMQ and the
    network cannot carry; better one line now than a traceback later.
    """
    for dest, value in vars(args).items():
        if dest in _PATH_ARGS or dest.endswith("_file"):
            continue
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str) and not item.isascii():
                try:
                    item.encode()
                except UnicodeEncodeError:
                    name = dest.replace("_", "-")
                    raise ConfigError(f"{name}: not valid UTF-8: {item!r}") from None


def _command(args: argparse.Namespace, *, daemon: bool) -> int:
    if daemon:
        from narwhal.cli.daemon import run_daemon

        return run_daemon(args)
    if args.command == "exec":
        from narwhal.cli.execute import run_exec

        return run_exec(args)
    if args.command in ("backup", "restore"):
        from narwhal.cli.backup import run_backup

        return run_backup(args)
    if args.command == "keys":
        from narwhal.keycommands import run_keys

        return run_keys(args)
    from narwhal.client import run_client

    return run_client(args)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except ConfigError as e:  # a refused secret flag
        print(f"narwhal: {e}", file=sys.stderr)  # noqa: T201 - the CLI's own output
        return 2
    daemon = args.command in ("up", "dispatcher", "runner", "agent", "backend")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO if daemon else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactingFilter())
    if not args.verbose:
        # Narwhal logs every broker failure itself, rate-limited; aiormq would
        # add a line (or a traceback) for each reconnect attempt.
        logging.getLogger("aiormq").setLevel(logging.CRITICAL)
    try:
        _check_text(args)
        return _command(args, daemon=daemon)
    except BrokenPipeError:  # stdout's reader went away (| head): quietly, as CLIs do
        drop_stdout()
        return SIGPIPE_STATUS
    except PipelineError as e:  # narwhal.yml: the build did not succeed, as in a job
        print(f"narwhal: {e}", file=sys.stderr)  # noqa: T201 - the CLI's own output
        return 1
    except (NarwhalError, OSError) as e:
        print(f"narwhal: {redacted(str(e))}", file=sys.stderr)  # noqa: T201 - the CLI's own output
        return 2
    except KeyboardInterrupt:
        return 130


def entrypoint() -> None:
    """Console script entry: ``narwhal``."""
    sys.exit(main())
