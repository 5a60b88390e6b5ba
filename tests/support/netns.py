"""A simulated LAN made of Linux network namespaces, for discovery tests and benchmarks.

Layout (every name carries this process's pid and a random token, so runs
in parallel never collide and leftovers of a killed run can be found)::

    host namespace (the test process)
      veth NWxxxxxx  100.x.y.1/30  ── point-to-point ──  api0 100.x.y.2/30 ┐
                                                                             │
    namespace "br": bridge br0                                               │
      ├── veth ── eth0 10.77.0.1/24   namespace "dispatcher" ────────────────┘
      ├── veth ── eth0 10.77.0.11/24  namespace "r1"
      └── ...

Each host namespace gets ``lo`` up, its veth up, and a 224.0.0.0/4 route on
the veth (python-zeroconf needs one). The point-to-point link is how the test
process reaches the dispatcher's REST API; it has multicast switched off on
the host side and no IPv6, so nothing on it ever reaches the host's own
multicast traffic. mDNS only ever flows on the bridge.

Needs root and ``ip`` (iproute2). ``close`` kills every process started in
the namespaces and deletes them; it runs in a fixture finaliser, so it runs
when the test fails too.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.daemons import Client, Daemon
from tests.support.keys import MeshKeys

#: The simulated LAN's subnet; it exists only inside the test's namespaces.
LAN = "10.77.0"
#: Point-to-point /30s for the API link are picked from here (host namespace).
P2P_POOL = ipaddress.ip_network("100.127.0.0/16")
PREFIX = "nwtest"


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def require_root_tools(*tools: str) -> None:
    """Fail (not skip) when the LAN cannot be built: these tests must run in CI."""
    if os.geteuid() != 0:
        raise AssertionError("the simulated LAN needs root (network namespaces)")
    for tool in ("ip", *tools):
        if shutil.which(tool) is None:
            raise AssertionError(f"{tool} is missing: run scripts/test (it installs it)")


@dataclass(frozen=True, slots=True)
class Host:
    """One machine on the simulated LAN: a namespace with one address on the bridge."""

    name: str
    netns: str
    address: str

    def argv(self, command: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *command]


class SimulatedLan:
    """Namespaces joined by a bridge; see the module docstring."""

    def __init__(self) -> None:
        remove_leftovers()
        self.tag = f"{PREFIX}-{os.getpid()}-{secrets.token_hex(3)}"
        self.hosts: dict[str, Host] = {}
        self.daemons: list[Daemon] = []
        self._namespaces: list[str] = []
        self._next = 1
        self.api_host: str | None = None
        self.api_peer: str | None = None
        try:
            self.bridge = self._namespace("br")
            ip("-n", self.bridge, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
            ip("-n", self.bridge, "link", "set", "br0", "up")
        except BaseException:
            self.close()
            raise

    def _namespace(self, name: str) -> str:
        netns = f"{self.tag}-{name}"
        ip("netns", "add", netns)
        self._namespaces.append(netns)
        ip("-n", netns, "link", "set", "lo", "up")
        return netns

    def add_host(self, name: str, number: int | None = None) -> Host:
        """A new namespace on the LAN, at 10.77.0.NUMBER (NUMBER defaults to the next one)."""
        number = number if number is not None else self._next
        self._next = max(self._next, number) + 1
        netns = self._namespace(name)
        port = f"p{len(self.hosts)}"
        ip(
            "-n",
            self.bridge,
            "link",
            "add",
            port,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            netns,
        )
        ip("-n", self.bridge, "link", "set", port, "master", "br0", "up")
        address = f"{LAN}.{number}"
        ip("-n", netns, "addr", "add", f"{address}/24", "dev", "eth0")
        ip("-n", netns, "link", "set", "eth0", "up")
        ip("-n", netns, "route", "add", "224.0.0.0/4", "dev", "eth0")
        host = Host(name=name, netns=netns, address=address)
        self.hosts[name] = host
        return host

    def link_to_test_process(self, host: Host) -> str:
        """A point-to-point link from this (host) namespace to ``host``; its far address."""
        local, far = _free_p2p()
        veth = f"NW{secrets.token_hex(3)}"
        ip("link", "add", veth, "type", "veth", "peer", "name", "api0", "netns", host.netns)
        # No multicast and no IPv6 on the host side: nothing from the host's
        # own stack (or an mDNS daemon of its own) ever goes out on it.
        with open(f"/proc/sys/net/ipv6/conf/{veth}/disable_ipv6", "w") as f:
            f.write("1")
        ip("link", "set", veth, "multicast", "off")
        ip("addr", "add", f"{local}/30", "dev", veth)
        ip("link", "set", veth, "up")
        ip("-n", host.netns, "addr", "add", f"{far}/30", "dev", "api0")
        ip("-n", host.netns, "link", "set", "api0", "up")
        self.api_host, self.api_peer = veth, far
        return far

    def start(self, host: Host, args: list[str], env: dict[str, str] | None = None) -> Daemon:
        """``narwhal ARGS`` inside ``host``'s namespace (``ip netns exec`` keeps the pid)."""
        daemon = Daemon(args, netns=host.netns, env=env)
        self.daemons.append(daemon)
        return daemon

    def kill(self, daemon: Daemon) -> None:
        """kill -9: no goodbye, no cleanup."""
        daemon.proc.kill()
        daemon.proc.wait(10)

    def run(self, host: Host, command: Sequence[str], timeout: float = 20) -> str:
        done = subprocess.run(
            host.argv(command), capture_output=True, text=True, timeout=timeout, check=False
        )
        return done.stdout + done.stderr

    def close(self) -> None:
        for daemon in self.daemons:
            with contextlib.suppress(OSError):
                os.kill(daemon.proc.pid, signal.SIGCONT)
            daemon.stop(timeout=10)
        if self.api_host is not None:
            # It would go with the namespace of its peer, but asynchronously.
            ip("link", "del", self.api_host, check=False)
        for netns in reversed(self._namespaces):
            _delete(netns)
        self._namespaces.clear()


def _delete(netns: str) -> None:
    """Kill whatever still runs in ``netns``, then delete it (its veths go with it)."""
    pids = ip("netns", "pids", netns, check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    ip("netns", "del", netns, check=False)


def remove_leftovers() -> None:
    """Delete test namespaces whose creating process is gone (a killed test run)."""
    listing = ip("netns", "list", check=False).stdout
    for netns in re.findall(rf"^({PREFIX}-(\d+)-\S+)", listing, re.MULTILINE):
        name, pid = netns
        if not os.path.exists(f"/proc/{pid}"):
            _delete(name)


def _free_p2p() -> tuple[str, str]:
    """A /30 in ``P2P_POOL`` that no route of this namespace touches yet."""
    routes = ip("-4", "route", "show", "table", "all", check=False).stdout
    taken = []
    found = re.findall(r"^(?:local |broadcast )?([0-9.]+(?:/\d+)?)", routes, re.MULTILINE)
    for word in found:
        with contextlib.suppress(ValueError):
            taken.append(ipaddress.ip_network(word, strict=False))
    subnets = list(P2P_POOL.subnets(new_prefix=30))
    for _ in range(100):
        net = random.choice(subnets)
        if not any(net.overlaps(other) for other in taken):
            first, second = list(net.hosts())
            return str(first), str(second)
    raise AssertionError(f"no free /30 in {P2P_POOL}")


#: Fast liveness for tests: a silent peer is dead after 5 x 0.2 s (5, not
#: 3: a busy CI machine must not make a live runner look dead).
HEARTBEAT_INTERVAL = 0.2
LIVENESS = 5
API_TOKEN = "lan-test-token"


class LanCluster:
    """A ``narwhal dispatcher`` and ``narwhal runner`` processes on a simulated LAN.

    Discovery is on (``--discovery mdns``): the dispatcher is given no runner
    endpoint and finds them all by mDNS on the bridge. Its API listens on the
    point-to-point link only, with a token, and mDNS stays off that link.
    """

    def __init__(
        self,
        root: Path,
        *,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
        liveness: int = LIVENESS,
    ) -> None:
        require_root_tools("dig")
        self.root = root
        self.mesh = ["--heartbeat-interval", str(heartbeat_interval), "--liveness", str(liveness)]
        self.lan = SimulatedLan()
        try:
            self.dispatcher_host = self.lan.add_host("dispatcher", 1)
        except BaseException:
            self.lan.close()
            raise
        self._next_runner = 11
        self.dispatcher: Daemon | None = None
        self.api: Client | None = None
        self.runners: dict[str, Daemon] = {}
        #: The mesh is authenticated: each runner id's key is trusted.
        self.keys = MeshKeys(root)

    def start_dispatcher(self, *extra: str) -> Client:
        far = self.lan.api_peer or self.lan.link_to_test_process(self.dispatcher_host)
        self.dispatcher = self.lan.start(
            self.dispatcher_host,
            [
                "dispatcher",
                "--discovery",
                "mdns",
                "--mdns-interface",
                self.dispatcher_host.address,
                "--http",
                f"{far}:0",
                "--data-dir",
                str(self.root / "data"),
                *self.mesh,
                *self.keys.dispatcher(),
                *extra,
            ],
            env={"NARWHAL_API_TOKEN": API_TOKEN},
        )
        self.api = Client(self.dispatcher.url, token=API_TOKEN)
        return self.api

    def host(self, name: str) -> Host:
        if name not in self.lan.hosts:
            self.lan.add_host(name, self._next_runner)
            self._next_runner += 1
        return self.lan.hosts[name]

    def start_runner(
        self,
        name: str,
        *,
        capacity: int,
        runner_id: str | None = None,
        listen: str | None = None,
        keys: list[str] | None = None,
    ) -> Daemon:
        """``narwhal runner`` on host ``name`` (created on first use), listening on 0.0.0.0:8471.

        Its key is trusted as its runner id, unless ``keys`` gives other key flags.
        """
        key_flags = keys if keys is not None else self.keys.runner(runner_id or name)
        daemon = self.lan.start(
            self.host(name),
            [
                "runner",
                "--discovery",
                "mdns",
                "--listen",
                listen or "tcp://0.0.0.0:8471",
                "--id",
                runner_id or name,
                "--capacity",
                str(capacity),
                "--executor",
                "local",
                "--work-dir",
                str(self.root / f"work-{name}"),
                "--cancel-grace",
                "1",
                *self.mesh,
                *key_flags,
            ],
        )
        self.runners[name] = daemon
        return daemon

    def listing(self) -> dict[str, Any]:
        assert self.api is not None
        return dict(self.api.http.get("/api/runners").json())

    def describe(self) -> str:
        """The runner listing and the dispatcher's last log lines, for a failed wait."""
        logs = "".join(self.dispatcher.stderr_lines[-30:]) if self.dispatcher else ""
        return f"{self.listing()}\n{logs}"

    def close(self) -> None:
        if self.api is not None:
            self.api.close()
        self.lan.close()
