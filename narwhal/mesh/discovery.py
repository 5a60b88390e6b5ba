"""LAN discovery over mDNS / DNS-SD (python-zeroconf): runners announce, dispatchers browse.

Every runner registers one instance of ``_narwhal._tcp.local.``: an SRV
record with the port it listens on, A records with its addresses, and the
TXT properties of ``narwhal.mesh.announcement``.

Discovery says *where* a runner is, never whether it is alive (heartbeats on
the mesh decide that) nor whether it is trusted (CurveZMQ keys do): anyone
on the LAN can announce anything, so every announcement is checked and a bad
one is logged (rate-limited) and ignored. That includes its addresses: only
those on the network of an interface the browser listens on are kept (so a
LAN announcement cannot point the dispatcher at 127.0.0.1 or at another
network); loopback counts only when the browser listens on loopback alone.

Registration skips probing (``cooperating_responders``): the instance name
holds the runner's address and port, which no other process can hold at the
same time, so probing would only delay the announcement by ~1.2 s. A clean
stop awaits the goodbye packets before the sockets close; a killed runner
leaves its records cached for a long time, which is why browsers never use
them for liveness. zeroconf's exceptions are translated here and nowhere else.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable, Mapping, Sequence

import ifaddr
import zeroconf
from zeroconf import IPVersion, ServiceInfo, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from narwhal.config import DiscoveryConfig
from narwhal.errors import DiscoveryError, ProtocolError
from narwhal.mesh.announcement import Announcement, parse_announcement
from narwhal.quietlog import QuietLog

log = logging.getLogger(__name__)

SERVICE_TYPE = "_narwhal._tcp.local."
Found = Callable[[Announcement], Awaitable[None]]
Gone = Callable[[str], Awaitable[None]]


# interfaces


def host_networks() -> dict[str, ipaddress.IPv4Network]:
    """This host's IPv4 addresses and the network each one is on."""
    networks = {}
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if ip.is_IPv4 and isinstance(ip.ip, str):
                networks[ip.ip] = ipaddress.IPv4Network(
                    f"{ip.ip}/{ip.network_prefix}", strict=False
                )
    return networks


def interface_address(name: str) -> str | None:
    """The first IPv4 address of the interface called ``name`` (e.g. eth0), if any."""
    for adapter in ifaddr.get_adapters():
        if adapter.nice_name == name or adapter.name == name:
            for ip in adapter.ips:
                if ip.is_IPv4 and isinstance(ip.ip, str):
                    return ip.ip
    return None


def interface_addresses(interfaces: Sequence[str] = ()) -> tuple[str, ...]:
    """The addresses mDNS uses: each of ``interfaces`` (checked), or every one of this host's."""
    have = host_networks()
    for address in interfaces:
        if address not in have:
            known = ", ".join(sorted(have)) or "none"
            raise DiscoveryError(f"no interface has the address {address} (this host has {known})")
    chosen = tuple(interfaces) or tuple(have)
    if not chosen:
        raise DiscoveryError("no IPv4 interface to use for mDNS")
    return chosen


def announced_addresses(listen_host: str, interfaces: Sequence[str] = ()) -> tuple[str, ...]:
    """Where a runner listening on ``listen_host`` is reachable, for its announcement.

    A runner bound to one address announces that address; one bound to every
    address (``0.0.0.0``) announces those of the mDNS interfaces, loopback
    only when there is nothing else.
    """
    if listen_host not in ("0.0.0.0", "*"):
        return (listen_host,)
    chosen = interface_addresses(interfaces)
    outside = tuple(a for a in chosen if not ipaddress.IPv4Address(a).is_loopback)
    return outside or chosen


async def _open(interfaces: Sequence[str]) -> AsyncZeroconf:
    chosen = interface_addresses(interfaces)
    try:
        zc = AsyncZeroconf(interfaces=list(chosen), ip_version=IPVersion.V4Only)
    except (zeroconf.Error, OSError, RuntimeError) as e:
        raise DiscoveryError(f"mDNS on {', '.join(chosen)}: {e}") from e
    try:
        await zc.zeroconf.async_wait_for_start()
    except (zeroconf.Error, OSError) as e:
        await zc.async_close()
        raise DiscoveryError(f"mDNS on {', '.join(chosen)} did not start: {e!r}") from e
    return zc


async def _settle(task: Awaitable[object] | None, *, cancel: bool = False) -> None:
    """Wait for a broadcast zeroconf started (or stop it) without raising."""
    if task is None:
        return
    future = asyncio.ensure_future(task)
    if cancel:
        future.cancel()
    await asyncio.wait([future])


# announcing


class Announcer:
    """Announces one runner until closed; ``aclose`` says goodbye before it returns."""

    def __init__(self, announcement: Announcement, *, interfaces: Sequence[str] = ()) -> None:
        announcement.txt()  # too long for mDNS: refuse now, not on the network
        self.announcement = announcement
        self._interfaces = tuple(interfaces)
        self._zc: AsyncZeroconf | None = None
        self._info: ServiceInfo | None = None
        #: The announcement broadcasts still being sent (zeroconf repeats them).
        self._sending: Awaitable[object] | None = None
        self._closed = False

    async def __aenter__(self) -> Announcer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        self._zc = await _open(self._interfaces)
        self._info = _service_info(self.announcement)
        try:
            self._sending = await self._zc.async_register_service(
                self._info, cooperating_responders=True
            )
        except zeroconf.Error as e:
            await self._zc.async_close()
            raise DiscoveryError(f"cannot announce {self._info.name}: {e!r}") from e
        log.info(
            "announcing runner %s as %r on %s",
            self.announcement.runner_id,
            self.announcement.instance,
            ", ".join(self._interfaces) or "every interface",
        )

    async def update(
        self, *, capacity: int | None = None, labels: Mapping[str, str] | None = None
    ) -> None:
        """Announce changed TXT properties (browsers see an update)."""
        if self._zc is None or self._closed:
            raise DiscoveryError("the announcer is not running")
        before = self.announcement
        announcement = dataclasses.replace(
            before,
            capacity=before.capacity if capacity is None else capacity,
            labels=before.labels if labels is None else dict(labels),
        )
        announcement.txt()
        info = _service_info(announcement)
        await _settle(self._sending, cancel=True)
        self._sending = await self._zc.async_update_service(info)
        self.announcement, self._info = announcement, info

    async def aclose(self) -> None:
        """Send the goodbye (and wait until it is out), then close the sockets."""
        if self._zc is None or self._closed:
            return
        self._closed = True
        await _settle(self._sending, cancel=True)
        try:
            if self._info is not None:
                await _settle(await self._zc.async_unregister_service(self._info))
        except zeroconf.Error as e:
            log.warning("runner %s: goodbye not sent: %r", self.announcement.runner_id, e)
        finally:
            await self._zc.async_close()


def _service_info(announcement: Announcement) -> ServiceInfo:
    host = f"narwhal-{announcement.addresses[0].replace('.', '-')}-{announcement.port}"
    return ServiceInfo(
        SERVICE_TYPE,
        f"{announcement.instance}.{SERVICE_TYPE}",
        port=announcement.port,
        properties=announcement.txt(),
        server=f"{host}.local.",
        addresses=[socket.inet_aton(a) for a in announcement.addresses],
    )


# browsing


class Browser:
    """Finds announced runners: ``on_found`` for each new or changed one, ``on_gone`` on goodbye.

    Both callbacks run on the event loop, one announcement at a time per
    instance; a newer event for an instance cancels the lookup of an older
    one, so a goodbye never races a late "found".
    """

    def __init__(self, config: DiscoveryConfig, *, on_found: Found, on_gone: Gone) -> None:
        self.config = config
        self._on_found = on_found
        self._on_gone = on_gone
        self._zc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._networks: list[ipaddress.IPv4Network] = []
        #: What each instance announced, by instance name.
        self._known: dict[str, Announcement] = {}
        #: The newest piece of work per instance name (a lookup or a goodbye).
        self._pending: dict[str, asyncio.Task[None]] = {}
        self._quiet = QuietLog(log)
        self._closed = False

    async def __aenter__(self) -> Browser:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def known(self) -> list[Announcement]:
        return list(self._known.values())

    async def start(self) -> None:
        self._zc = await _open(self.config.interfaces)
        networks = host_networks()
        chosen = interface_addresses(self.config.interfaces)
        self._networks = [networks[a] for a in chosen if a in networks]
        self._browser = AsyncServiceBrowser(
            self._zc.zeroconf, SERVICE_TYPE, handlers=[self._changed]
        )

    async def aclose(self) -> None:
        if self._zc is None or self._closed:
            return
        self._closed = True
        if self._browser is not None:
            await self._browser.async_cancel()
        pending = list(self._pending.values())
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        await self._zc.async_close()

    def _changed(
        self, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        """zeroconf's handler, called on the loop: never blocks, schedules the work."""
        if self._closed:
            return
        if state_change is ServiceStateChange.Removed:
            work = self._removed(name)
        elif name not in self._known and len(self._known) >= self.config.max_services:
            self._quiet.warning("too-many", "ignoring %r: %d runners known", name, len(self._known))
            return
        else:
            work = self._resolve(zeroconf, service_type, name)
        earlier = self._pending.pop(name, None)
        if earlier is not None:
            earlier.cancel()
        task = asyncio.create_task(work)
        self._pending[name] = task
        task.add_done_callback(lambda done: self._finished(name, done))

    def _finished(self, name: str, task: asyncio.Task[None]) -> None:
        if self._pending.get(name) is task:
            del self._pending[name]
        if not task.cancelled() and task.exception() is not None:
            log.error("discovery of %r failed", name, exc_info=task.exception())

    async def _resolve(self, zc: Zeroconf, service_type: str, name: str) -> None:
        info = AsyncServiceInfo(service_type, name)
        try:
            complete = await info.async_request(zc, self.config.request_timeout * 1000)
            if not complete:
                raise ProtocolError("no complete answer (SRV, TXT and an address)")
            announcement = parse_announcement(
                name, info.parsed_addresses(IPVersion.V4Only), info.port, info.properties
            )
        except (ProtocolError, zeroconf.Error, ValueError) as e:
            self._quiet.warning(name, "ignoring mDNS announcement %r: %s", name, e)
            return
        reachable = self._reachable(announcement.addresses)
        if not reachable:
            self._quiet.warning(
                f"net:{name}",
                "ignoring mDNS announcement %r: %s is on none of the networks browsed (%s)",
                name,
                ", ".join(announcement.addresses),
                ", ".join(str(n) for n in self._networks),
            )
            return
        announcement = dataclasses.replace(announcement, addresses=reachable)
        before = self._known.get(name)
        if before == announcement:
            return
        if before is not None and before.endpoint != announcement.endpoint:
            await self._on_gone(before.endpoint)
        self._known[name] = announcement
        await self._on_found(announcement)

    async def _removed(self, name: str) -> None:
        announcement = self._known.pop(name, None)
        if announcement is not None:
            await self._on_gone(announcement.endpoint)

    def _reachable(self, addresses: tuple[str, ...]) -> tuple[str, ...]:
        """The addresses on a network the browser listens on; loopback only from loopback.

        zeroconf does not say which interface an answer came in on, so the
        test is "one of the browsed networks"; a browser on loopback and a
        LAN together takes no loopback address (a LAN peer could name it).
        """
        only_loopback = all(n.network_address.is_loopback for n in self._networks)
        kept = []
        for address in addresses:
            ip = ipaddress.IPv4Address(address)
            if ip.is_loopback and not only_loopback:
                continue
            if any(ip in network for network in self._networks):
                kept.append(address)
        return tuple(kept)
