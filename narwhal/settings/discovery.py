"""mDNS discovery flags (docs/discovery.md): the interfaces each daemon announces or browses on."""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import logging

from narwhal.config import (
    DiscoveryConfig,
)
from narwhal.errors import ConfigError
from narwhal.settings.values import env, loopback

log = logging.getLogger("narwhal")


def _mdns_interfaces(args: argparse.Namespace) -> tuple[str, ...]:
    given = args.mdns_interface or (env("MDNS_INTERFACE") or "").split(",")
    interfaces = []
    for text in filter(None, (item.strip() for item in given)):
        try:
            interfaces.append(str(ipaddress.IPv4Address(text)))
        except ValueError:
            raise ConfigError(f"--mdns-interface: expected an IPv4 address, got {text!r}") from None
    return tuple(interfaces)


def _discovery_on(args: argparse.Namespace) -> bool:
    if args.discovery not in ("mdns", "none"):
        raise ConfigError(f"--discovery: expected mdns or none, got {args.discovery!r}")
    return bool(args.discovery == "mdns")


def dispatcher_discovery(args: argparse.Namespace, http_host: str) -> DiscoveryConfig:
    """Browse on loopback when the API is loopback-only, else on every interface."""
    if not _discovery_on(args):
        return DiscoveryConfig()
    default = ("127.0.0.1",) if loopback(http_host) else ()
    return DiscoveryConfig(enabled=True, interfaces=_mdns_interfaces(args) or default)


def runner_discovery(args: argparse.Namespace, listen: str) -> DiscoveryConfig:
    """Announce on the interface of the ``--listen`` address (every one for 0.0.0.0)."""
    if not _discovery_on(args):
        return DiscoveryConfig()
    scheme, _, rest = listen.partition("://")
    if scheme != "tcp":
        log.warning("not announcing on mDNS: --listen %s is not a tcp:// address", listen)
        return DiscoveryConfig()
    interfaces = _mdns_interfaces(args)
    host = rest.rpartition(":")[0]
    if host.startswith("["):
        log.warning("not announcing on mDNS: it is IPv4 only, and --listen %s is IPv6", listen)
        return DiscoveryConfig()
    if not interfaces and host not in ("0.0.0.0", "*"):
        interfaces = ("127.0.0.1",) if loopback(host) else (_interface_of(host),)
    return DiscoveryConfig(enabled=True, interfaces=interfaces)


def _interface_of(host: str) -> str:
    """The IPv4 address of a ``--listen`` host: an address, or an interface name like eth0."""
    with contextlib.suppress(ValueError):
        return str(ipaddress.IPv4Address(host))
    from narwhal.mesh.discovery import interface_address

    found = interface_address(host)
    if found is None:
        raise ConfigError(
            f"--listen {host}: cannot tell which interface to announce on; set --mdns-interface IP"
        )
    return found
