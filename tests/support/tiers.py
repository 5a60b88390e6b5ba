"""Test tiers: every test is exactly one of ``unit``, ``integration`` or ``system``.

- ``unit``: in the test process, on fakes; no process, no SQLite file, no
  ZeroMQ, no network socket. The default of a local ``python3 -m pytest``.
- ``integration``: in the test process with real SQLite files, ZeroMQ
  sockets, loopback HTTP, and short-lived local processes (git, the steps
  of the local executor).
- ``system``: real daemons (``python -m narwhal``), the Docker engine,
  RabbitMQ, network namespaces.

The tier of each test is decided here and only here (``TIERS``, by module,
with a few single tests of a module placed apart), and marked at
collection. A test module this table does not know fails the collection,
so no test silently falls out of the tiers ``scripts/test`` runs.

The tiers are also checked while the tests run: an audit hook sees each
process started, each SQLite file opened, each ZeroMQ context and each
network connection, and a test that does more than its tier allows fails
and says which tier it belongs to. Without that check a "unit" test that
quietly starts a daemon would make the fast tier slow, and nobody would
notice until it was.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pytest

TIER_NAMES = ("unit", "integration", "system")
RANK = {name: rank for rank, name in enumerate(TIER_NAMES)}

#: Module (or ``module::test`` pattern) -> tier. The longest matching pattern wins.
TIERS: dict[str, str] = {
    # unit: pure code on values and fakes
    "tests/dispatcher/test_guard.py": "unit",
    "tests/backend/test_parts.py": "unit",
    "tests/dispatcher/test_placement.py": "unit",
    "tests/dispatcher/test_placement_props.py": "unit",
    "tests/dispatcher/test_order.py": "unit",
    "tests/dispatcher/test_health.py": "unit",
    "tests/dispatcher/test_signals.py": "unit",
    "tests/dispatcher/test_state_machine.py": "unit",
    "tests/dispatcher/test_feed_events.py": "unit",
    "tests/test_testing.py": "unit",
    "tests/test_metrics.py": "unit",
    "tests/dispatcher/test_metrics.py": "unit",
    "tests/test_metrics.py::test_promtool_*": "integration",
    "tests/dispatcher/test_metrics_placement.py": "unit",
    "tests/dispatcher/test_api_placement.py": "unit",
    "tests/dispatcher/test_metrics_placement.py::test_promtool_*": "integration",
    "tests/dispatcher/test_waiting.py": "unit",
    "tests/mesh/test_protocol.py": "unit",
    "tests/dispatcher/store/test_thinning.py": "unit",
    "tests/mesh/test_feed.py": "unit",
    "tests/mesh/test_feedcheck.py": "unit",
    "tests/mesh/test_subscriber_replica.py": "unit",
    "tests/dispatcher/test_feed_state.py": "unit",
    "tests/mesh/test_trust.py": "unit",
    "tests/runner/test_stream.py": "unit",
    "tests/runner/test_usage.py": "unit",
    "tests/runner/test_state.py": "unit",
    "tests/test_pipeline.py": "unit",
    "tests/test_pipeline_echo.py": "unit",
    "tests/test_redact.py": "unit",
    "tests/test_secret_rules.py": "unit",
    "tests/test_supervise.py": "unit",
    "tests/test_support.py": "unit",
    "tests/test_support.py::test_the_leak_check_names_a_child_process_*": "integration",
    "tests/agent/test_webhooks.py": "unit",
    "tests/backend/test_static.py": "unit",
    "tests/agent/test_webhooks.py::test_*import*": "integration",
    "tests/test_repos.py": "unit",
    "tests/test_repos.py::test_refs_git_accepts": "integration",
    "tests/test_cli_discovery.py": "unit",
    "tests/test_cli_discovery.py::test_default_interfaces_find_each_other_on_loopback": "system",
    "tests/test_runner_identity.py": "system",
    "tests/test_runner_identity.py::test_a_key_made_under_the_old_default_keeps_its_id": "unit",
    "tests/test_runner_identity.py::test_a_work_dir_copied_to_another_machine_gets_a_new_id": (
        "unit"
    ),
    # integration: in process, real SQLite, ZeroMQ, HTTP on loopback, git and step processes
    "tests/agent/test_webhook_tags.py": "integration",
    "tests/agent/test_agent_metrics.py": "integration",
    "tests/backend/test_app.py": "integration",
    "tests/backend/test_logs.py": "integration",
    "tests/backend/test_placement_views.py": "integration",
    "tests/dispatcher/test_discovered.py": "integration",
    "tests/dispatcher/test_records.py": "integration",
    "tests/dispatcher/test_usage.py": "integration",
    "tests/dispatcher/test_metrics_endpoint.py": "integration",
    "tests/dispatcher/test_status.py": "integration",
    "tests/dispatcher/store/*.py": "integration",
    "tests/dispatcher/store/test_contract.py::*[[]memory[]]": "unit",
    # PostgreSQL is a service, as RabbitMQ is.
    "tests/dispatcher/store/test_contract.py::*[[]postgresql[]]": "system",
    "tests/dispatcher/test_leadership.py": "system",
    "tests/dispatcher/test_ha.py": "system",
    "tests/dispatcher/test_notices.py": "unit",
    "tests/dispatcher/test_notices_pg.py": "system",
    "tests/dispatcher/test_standby.py": "unit",
    "tests/dispatcher/test_tokens.py": "integration",
    "tests/test_cli_repo_arg.py": "system",
    "tests/test_cli_packages.py": "system",
    "tests/dispatcher/test_store_refusal.py": "integration",
    "tests/dispatcher/test_vault.py": "integration",
    "tests/mesh/test_discovery.py": "integration",
    "tests/mesh/test_transport.py": "integration",
    "tests/mesh/test_zap.py": "integration",
    "tests/dispatcher/test_publisher.py": "integration",
    "tests/mesh/test_subscriber.py": "integration",
    "tests/mesh/test_pool.py": "integration",
    "tests/runner/test_checkout.py": "integration",
    "tests/runner/test_mirror_cache.py": "integration",
    "tests/runner/test_runner_state.py": "integration",
    # runs the tools (base64, xxd, openssl ...) whose output must be masked
    "tests/runner/test_masking.py": "integration",
    "tests/runner/test_executor.py": "integration",
    "tests/runner/test_job.py": "integration",
    "tests/runner/test_process.py": "integration",
    "tests/runner/test_probes.py": "integration",
    # system: real daemons, Docker, RabbitMQ, network namespaces
    "tests/agent/test_app.py": "system",
    # headless Chromium (Debian's) driving the dashboard of a real `narwhal up`
    "tests/backend/test_browser.py": "system",
    "tests/backend/test_cli_backend.py": "system",
    "tests/agent/test_cli_agent.py": "system",
    "tests/agent/test_e2e.py": "system",
    "tests/agent/test_forge_deliveries.py": "system",
    "tests/bench/*.py": "system",
    "tests/dispatcher/test_amqp.py": "system",
    "tests/dispatcher/test_amqp_quorum.py": "system",
    "tests/dispatcher/test_retention.py": "unit",
    "tests/dispatcher/store/test_postgres.py": "system",
    "tests/dispatcher/test_retention_api.py": "integration",
    "tests/dispatcher/test_chaos.py": "system",
    "tests/dispatcher/test_placement_real.py": "system",
    "tests/dispatcher/test_flow.py": "system",
    "tests/dispatcher/test_frames.py": "system",
    "tests/dispatcher/test_soak.py": "system",
    "tests/dispatcher/test_trust.py": "system",
    "tests/mesh/test_auth.py": "system",
    "tests/runner/test_docker.py": "system",
    "tests/runner/test_docker_usage.py": "system",
    "tests/runner/test_docker_hints.py": "system",
    "tests/runner/test_docker_state.py": "system",
    "tests/test_access.py": "system",
    "tests/test_cli.py": "system",
    "tests/test_cli_bytes.py": "system",
    "tests/test_cli_follow.py": "system",
    "tests/test_cli_placement.py": "integration",
    "tests/test_docs_examples.py": "system",
    "tests/test_lan.py": "system",
    "tests/test_lifecycle.py": "system",
    "tests/test_repo_attacks.py": "system",
    "tests/test_secrets.py": "system",
    "tests/test_up.py": "system",
    "tests/test_backup.py": "system",
    "tests/test_up_announce.py": "system",
    "tests/test_metrics_feed.py": "system",
}


#: Programs the standard library itself runs to find a shared library
#: (``ctypes.util.find_library``, used by ifaddr to list interfaces): part of
#: loading code, not something a test chose to start.
LIBRARY_HELPERS = frozenset({"ldconfig", "gcc", "cc", "ld", "objdump"})


def tier_of(nodeid: str) -> str | None:
    """The tier ``TIERS`` gives a test id (``path::name[param]``), or None."""
    path, _, rest = nodeid.partition("::")
    name = rest.partition("[")[0]
    best: tuple[int, str] | None = None
    for pattern, tier in TIERS.items():
        module, _, test = pattern.partition("::")
        # A pattern with a parameter (``*[[]postgresql[]]``) matches the test's
        # name with its parameters, any other the bare name.
        named = rest if "[" in test else name
        if fnmatch(path, module) and (not test or fnmatch(named, test)):
            if best is None or len(pattern) > best[0]:
                best = (len(pattern), tier)
    return best[1] if best else None


def pytest_configure(config: pytest.Config) -> None:
    for name in TIER_NAMES:
        config.addinivalue_line(
            "markers", f"{name}: a test of the {name} tier (tests/support/tiers.py)"
        )
    # A bare ``python3 -m pytest`` (no paths, no -m) runs the fast tier only;
    # scripts/test and CI pass ``-m "unit or integration or system"``.
    if not config.option.markexpr and config.args_source == pytest.Config.ArgsSource.TESTPATHS:
        config.option.markexpr = "unit"
    config.stash[_GUARD] = _Guard()
    sys.addaudithook(config.stash[_GUARD].audit)
    _announce_zmq_contexts()
    _announce_postgres_connections()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test with its tier; a test with none, or two, is an error."""
    unplaced = []
    for item in items:
        tier = tier_of(item.nodeid)
        if tier is None:
            unplaced.append(item.nodeid)
            continue
        item.add_marker(getattr(pytest.mark, tier))
        marked = {m.name for m in item.iter_markers() if m.name in TIER_NAMES}
        if marked != {tier}:
            raise pytest.UsageError(
                f"{item.nodeid} is marked {sorted(marked)}: its tier comes from"
                " tests/support/tiers.py only"
            )
    if unplaced:
        raise pytest.UsageError(
            "tests in no tier (add their module to TIERS in tests/support/tiers.py): "
            + ", ".join(unplaced)
        )


# the runtime check


@dataclass
class _Guard:
    """What the running test did that its tier does not allow."""

    tier: str | None = None
    seen: list[tuple[str, str]] = field(default_factory=list)

    def audit(self, event: str, args: tuple[Any, ...]) -> None:
        if self.tier is None or self.tier == "system":
            return
        needed = _needs(event, args)
        if needed is not None and RANK[needed[0]] > RANK[self.tier]:
            self.seen.append(needed)


def _needs(event: str, args: tuple[Any, ...]) -> tuple[str, str] | None:
    """The tier an audited operation needs, and what it was; None if any tier may do it."""
    if event == "subprocess.Popen":
        command = args[1] if args[1] is not None else args[0]
        argv = [str(command)] if isinstance(command, str | bytes) else [str(a) for a in command]
        text = " ".join(argv)
        if Path(argv[0]).name in LIBRARY_HELPERS:
            return None
        if "-m narwhal" in text or argv[0] in {"ip", "docker", "rabbitmqctl"}:
            return "system", f"started {text}"
        return "integration", f"started {text}"
    if event == "sqlite3.connect" and str(args[0]) != ":memory:":
        return "integration", f"opened the SQLite file {args[0]}"
    if event == "narwhal.tests.zmq_context":
        return "integration", "made a ZeroMQ context"
    if event == "narwhal.tests.postgres_connect":
        return "system", "connected to PostgreSQL"
    if event in {"socket.connect", "socket.bind"}:
        return _socket_needs(event, args[1])
    return None


def _socket_needs(event: str, address: Any) -> tuple[str, str] | None:
    if isinstance(address, tuple) and len(address) >= 2 and address[1] == 5672:
        return "system", f"connected to RabbitMQ at {address}"
    if isinstance(address, str | bytes) and b"docker.sock" in _bytes(address):
        return "system", "connected to the Docker engine"
    if isinstance(address, tuple):
        return "integration", f"used the network ({event} {address})"
    return None


def _bytes(value: str | bytes) -> bytes:
    return value.encode() if isinstance(value, str) else value


def _announce_zmq_contexts() -> None:
    """Raise an audit event for each ZeroMQ context (pyzmq raises none of its own).

    libzmq opens its sockets in C, out of sight of the socket audit events,
    so the context's constructor is where a test's use of ZeroMQ shows.
    """
    import zmq

    base = zmq.Context
    if getattr(base.__init__, "_announces", False):
        return
    original = base.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        sys.audit("narwhal.tests.zmq_context")
        original(self, *args, **kwargs)

    init._announces = True  # type: ignore[attr-defined]
    base.__init__ = init  # type: ignore[method-assign]


def _announce_postgres_connections() -> None:
    """Raise an audit event for each PostgreSQL connection: libpq connects in C,
    out of sight of the socket audit events, as libzmq does."""
    import psycopg

    for base in (psycopg.Connection, psycopg.AsyncConnection):
        if getattr(base.connect, "_announces", False):
            continue
        original = base.connect.__func__  # type: ignore[attr-defined]

        def connect(cls: Any, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
            sys.audit("narwhal.tests.postgres_connect")
            return _original(cls, *args, **kwargs)

        connect._announces = True  # type: ignore[attr-defined]
        base.connect = classmethod(connect)  # type: ignore[assignment,method-assign]


_GUARD = pytest.StashKey[_Guard]()


@pytest.fixture(autouse=True)
def tier_guard(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test that did what only a higher tier may (see the module docstring)."""
    guard = request.config.stash[_GUARD]
    tier = tier_of(request.node.nodeid)
    guard.tier, guard.seen = tier, []
    yield
    guard.tier = None
    if guard.seen:
        needed = max((tier for tier, _ in guard.seen), key=RANK.__getitem__)
        what = "; ".join(sorted({text for _, text in guard.seen}))[:1500]
        pytest.fail(
            f"this {tier} test {what}: it belongs in the {needed} tier"
            " (TIERS in tests/support/tiers.py)"
        )
