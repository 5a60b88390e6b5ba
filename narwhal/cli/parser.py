"""``narwhal``'s argument parser: its commands and their flags (``flags`` has the shared ones)."""

from __future__ import annotations

import argparse

from narwhal import __version__
from narwhal.cli.flags import (
    address_of,
    amqp_flags,
    backend_flags,
    client_flags,
    dashboard_flag,
    discovery_flags,
    dispatcher_flags,
    docker_flags,
    local_repos_flag,
    mesh_flags,
    runner_flags,
    runner_key_flags,
    secret_flags,
)
from narwhal.config import EXECUTORS, AgentConfig, RunnerConfig
from narwhal.settings import default_of, env


def _secrets_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    secrets = sub.add_parser("secrets", help="a repository's secrets (docs/secrets.md)")
    actions = secrets.add_subparsers(dest="secrets_command", required=True, metavar="ACTION")
    repo = "clone URL or local path of the repository ('.' too)"
    for name, text in (
        ("set", "set NAME to the value on stdin"),
        ("list", "list the names (never the values)"),
        ("delete", "delete NAME"),
        ("forks", "whether pull requests from forks get the secrets (default off)"),
    ):
        action = actions.add_parser(name, help=text)
        action.add_argument("repo", help=repo)
        if name in ("set", "delete"):
            action.add_argument("name", help="secret name, like API_TOKEN")
        if name == "forks":
            action.add_argument("policy", help="on or off")
        client_flags(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="narwhal", description="A small, fast, self-hosted CI.")
    parser.add_argument("--version", action="version", version=f"narwhal {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser("up", help="dispatcher + one local runner + REST API in one process")
    dispatcher_flags(up)
    discovery_flags(up, default="none", what="also use runners announced on the LAN")
    runner_flags(up, listen=False)
    secret_flags(up, "secret", "webhook secret; serves /webhooks/FORGE")
    local_repos_flag(up, default="on")
    dashboard_flag(up)

    dispatcher = sub.add_parser("dispatcher", help="run the dispatcher and its REST API")
    dispatcher_flags(dispatcher)
    discovery_flags(dispatcher, default="mdns", what="connect to runners announced on the LAN")
    dispatcher.add_argument(
        "--runner",
        action="append",
        metavar="URL",
        help="runner endpoint tcp://HOST:PORT (repeatable)",
    )
    local_repos_flag(dispatcher, default="off")

    agent = sub.add_parser("agent", help="receive forge webhooks, queue commits on RabbitMQ")
    agent.add_argument(
        "--http",
        default=env("AGENT_HTTP", address_of(AgentConfig)),
        help="webhook address HOST:PORT; port 0 picks a free one (NARWHAL_AGENT_HTTP)",
    )
    amqp_flags(agent)
    secret_flags(agent, "secret", "webhook secret; serves /webhooks/FORGE")

    runner = sub.add_parser("runner", help="run a runner that the dispatcher connects to")
    runner_flags(runner)
    mesh_flags(runner)
    runner_key_flags(runner)
    discovery_flags(runner, default="mdns", what="announce this runner on the LAN")
    local_repos_flag(runner, default="off")

    backend_flags(sub.add_parser("backend", help="serve the dashboard of a dispatcher"))

    _keys_parser(sub)

    submit = sub.add_parser("submit", help="submit a job for a repository")
    submit.add_argument("repo", help="clone URL or local path")
    submit.add_argument(
        "--ref",
        help="ref to build, e.g. refs/heads/main (default: a local path's checked-out "
        "branch and commit; a URL's HEAD)",
    )
    submit.add_argument("--sha", help="exact commit (default: the tip of --ref)")
    submit.add_argument("--event", default="push", help="event name seen by 'when' filters")
    submit.add_argument("--labels", help="k=v,k=v a runner must offer to take the job")
    submit.add_argument(
        "--priority",
        type=int,
        help="higher runs first, from -1000 to 1000 (default: narwhal.yml's priority, else 0)",
    )
    submit.add_argument(
        "-f", "--follow", action="store_true", help="stream the logs of all its jobs until done"
    )
    client_flags(submit)

    logs = sub.add_parser("logs", help="print a job's log")
    logs.add_argument("job", type=int)
    logs.add_argument(
        "-f", "--follow", action="store_true", help="stream it and its matrix jobs until all end"
    )
    client_flags(logs)

    jobs = sub.add_parser("jobs", help="list jobs")
    jobs.add_argument("--state", action="append", help="only jobs in this state (repeatable)")
    jobs.add_argument("--repo", help="only jobs of this repository")
    jobs.add_argument("--limit", type=int, default=20)
    client_flags(jobs)

    one = sub.add_parser("job", help="show a job: why it waits, where it went, its steps")
    one.add_argument("job", type=int)
    client_flags(one)

    for name, text in (
        ("cancel", "cancel a job and the matrix jobs it spawned"),
        ("resubmit", "run a job's commit again"),
    ):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("job", type=int)
        if name == "cancel":
            cmd.add_argument(
                "--all", action="store_true", help="a matrix job: cancel its whole submission"
            )
        client_flags(cmd)

    runners = sub.add_parser("runners", help="list the runners the dispatcher knows")
    client_flags(runners)
    gc = sub.add_parser("gc", help="delete ended jobs' logs past the retention policy (admin)")
    gc.add_argument("--dry-run", action="store_true", help="only say what would be deleted")
    client_flags(gc)
    _secrets_parser(sub)
    _tokens_parser(sub.add_parser("tokens", help="create, list and revoke API tokens (admin)"))

    exe = sub.add_parser("exec", help="run a directory's narwhal.yml here, without a dispatcher")
    exe.add_argument("directory", nargs="?", default=".")
    exe.add_argument(
        "--branch", help="branch seen by 'when' filters (default: the checked-out one)"
    )
    exe.add_argument("--event", default="push", help="event seen by 'when' filters")
    exe.add_argument(
        "--executor",
        default="local",
        choices=EXECUTORS,
        help="local (default) runs the steps here; docker runs each in a container",
    )
    exe.add_argument("--cancel-grace", default=default_of(RunnerConfig, "cancel_grace"))
    docker_flags(exe)
    _backup_parsers(sub)
    return parser


def _backup_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``narwhal backup FILE`` and ``narwhal restore FILE`` (docs/backup.md)."""
    backup = sub.add_parser("backup", help="copy the job store to FILE, online (docs/backup.md)")
    restore = sub.add_parser("restore", help="put a backup FILE in place as the job store")
    restore.add_argument("--force", action="store_true", help="replace an existing store")
    for p in (backup, restore):
        p.add_argument("file", metavar="FILE")
        where = p.add_mutually_exclusive_group()
        where.add_argument("--data-dir", help="the dispatcher's data dir (NARWHAL_DATA_DIR)")
        where.add_argument("--db", help="the store URL, postgresql://... (NARWHAL_DB)")


def _tokens_parser(tokens: argparse.ArgumentParser) -> None:
    actions = tokens.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="create a token; it is printed once")
    create.add_argument("--name", required=True)
    create.add_argument("--scope", required=True, choices=["read", "write", "admin"])
    revoke = actions.add_parser("revoke", help="revoke a token: it stops working at once")
    revoke.add_argument("name")
    listing = actions.add_parser("list", help="names, scopes, when created and last used")
    for cmd in (create, revoke, listing):
        client_flags(cmd)


def _keys_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``narwhal keys ...`` on the CLI's subcommands."""
    keys = sub.add_parser("keys", help="CurveZMQ keys of the mesh: generate, trust, revoke, list")
    actions = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    gen = actions.add_parser("generate", help="write a key pair NAME.key and NAME.key_secret")
    gen.add_argument("--dir", default=".", help="where to write it (default: here)")
    gen.add_argument("--name", default=None, help="file name without suffix (default: hostname)")
    add = actions.add_parser("trust", help="let the runner holding FILE's key in, as --id")
    add.add_argument("file", metavar="FILE", help="the runner's public key file (NAME.key)")
    add.add_argument(
        "--id", help="the one runner id this key may use (a subscriber's: a name, default NAME)"
    )
    add.add_argument("--labels", help="k=v,k=v pinned for it: replace what the runner claims")
    _subscriber_flag(add, "FILE is a backend's key: let it read the metrics feed")
    _where(add)
    rm = actions.add_parser("revoke", help="drop runner ID's key; its link closes within seconds")
    rm.add_argument("runner_id", metavar="ID")
    _subscriber_flag(rm, "ID is a subscriber's name (narwhal keys list shows them)")
    _where(rm)
    _where(actions.add_parser("list", help="the dispatcher's key, trusted runners and subscribers"))


def _subscriber_flag(p: argparse.ArgumentParser, text: str) -> None:
    p.add_argument("--subscriber", action="store_true", help=text)


def _where(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("--keys-dir", help="the dispatcher's keys directory (NARWHAL_KEYS_DIR)")
    group.add_argument("--data-dir", help="the dispatcher's data directory (keys in DIR/keys)")
