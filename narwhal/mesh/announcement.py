"""What a runner announces on mDNS (the TXT record), and how an announcement is checked.

A runner's announcement is an SRV record (its port), A records (its IPv4
addresses) and TXT properties::

    id=RUNNER_ID capacity=N labels=k=v,k=v protocol=5 version=0.1.0 [curve=Z85_PUBLIC_KEY]

Announcements come from anyone on the LAN, so ``parse_announcement`` checks
every value with explicit limits and raises ``ProtocolError`` for anything
else. The zeroconf side (announcing, browsing) is ``narwhal.mesh.discovery``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from narwhal import __version__
from narwhal.errors import ConfigError, DiscoveryError, ProtocolError
from narwhal.mesh.keys import check_key
from narwhal.mesh.protocol import PROTOCOL_VERSION

#: Longest ``key=value`` string a TXT record holds (RFC 6763 section 6.1).
MAX_TXT_ITEM = 255
#: Longest DNS label (the instance name is one).
MAX_LABEL = 63
MAX_ID = 128
MAX_LABELS = 64
MAX_CAPACITY = 10_000
_UNSAFE = re.compile(r"[.\\\s\x00-\x1f\x7f]")
_BROADCAST = ipaddress.IPv4Address("255.255.255.255")


@dataclass(frozen=True, slots=True, kw_only=True)
class Announcement:
    """What one runner announces: where it listens and what it offers."""

    runner_id: str
    #: IPv4 addresses it listens on; a browser puts the one it prefers first.
    addresses: tuple[str, ...]
    port: int
    capacity: int
    labels: dict[str, str] = field(default_factory=dict)
    protocol: int = PROTOCOL_VERSION
    version: str = __version__
    #: The runner's CurveZMQ public key (z85, 40 characters); None: --insecure.
    key: str | None = None
    #: The mDNS instance name it was found under ("" when not from the network).
    name: str = ""

    @property
    def endpoint(self) -> str:
        return f"tcp://{self.addresses[0]}:{self.port}"

    @property
    def instance(self) -> str:
        """The instance name: ``RUNNER_ID@ADDRESS:PORT``, one DNS label, no dots."""
        where = f"@{self.addresses[0].replace('.', '-')}:{self.port}"
        room = MAX_LABEL - len(where)
        runner = _UNSAFE.sub("-", self.runner_id).encode()[:room].decode("utf-8", "ignore")
        return runner + where

    def txt(self) -> dict[str, str]:
        """The TXT properties; raises DiscoveryError when one is too long for mDNS."""
        properties = {
            "id": self.runner_id,
            "capacity": str(self.capacity),
            "labels": ",".join(f"{k}={v}" for k, v in self.labels.items()),
            "protocol": str(self.protocol),
            "version": self.version,
        }
        if self.key is not None:
            properties["curve"] = self.key
        for name, value in properties.items():
            if len(f"{name}={value}".encode()) > MAX_TXT_ITEM:
                raise DiscoveryError(f"cannot announce {name}: longer than {MAX_TXT_ITEM} bytes")
        return properties


def parse_announcement(
    name: str, addresses: Sequence[str], port: int | None, properties: Mapping[bytes, bytes | None]
) -> Announcement:
    """Check what the network says about one instance; raise ProtocolError if it is bad."""
    usable = tuple(a for a in addresses if _usable(a))
    if not usable:
        raise ProtocolError(f"no usable IPv4 address in {list(addresses)[:4]}")
    if port is None or not 0 < port < 65536:
        raise ProtocolError(f"bad port {port!r}")
    key = _text(properties, "curve", MAX_TXT_ITEM, required=False)
    if key is not None:
        try:
            check_key(key, "TXT curve")
        except ConfigError as e:
            raise ProtocolError(str(e)) from None
    return Announcement(
        name=name,
        runner_id=_text(properties, "id", MAX_ID) or "",
        addresses=usable,
        port=port,
        capacity=_number(properties, "capacity", 1, MAX_CAPACITY),
        labels=_labels(_text(properties, "labels", MAX_TXT_ITEM, required=False) or ""),
        protocol=_number(properties, "protocol", 0, 1_000_000),
        version=_text(properties, "version", 64) or "",
        key=key,
    )


def _text(
    properties: Mapping[bytes, bytes | None], key: str, limit: int, *, required: bool = True
) -> str | None:
    raw = properties.get(key.encode())
    if raw is None or raw == b"":
        if required:
            raise ProtocolError(f"TXT {key} missing")
        return None
    try:
        value = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(f"TXT {key}: not UTF-8") from None
    if len(value) > limit or not value.isprintable():
        raise ProtocolError(f"TXT {key}: {value[:40]!r} is not a valid value")
    return value


def _number(properties: Mapping[bytes, bytes | None], key: str, low: int, high: int) -> int:
    value = _text(properties, key, 7) or ""
    if not re.fullmatch(r"[0-9]{1,7}", value) or not low <= int(value) <= high:
        raise ProtocolError(f"TXT {key}: expected a number from {low} to {high}, got {value!r}")
    return int(value)


def _labels(text: str) -> dict[str, str]:
    labels = {}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ProtocolError(f"TXT labels: {item[:40]!r} is not key=value")
        labels[key] = value
    if len(labels) > MAX_LABELS:
        raise ProtocolError(f"TXT labels: more than {MAX_LABELS}")
    return labels


def _usable(address: str) -> bool:
    try:
        ip = ipaddress.IPv4Address(address)
    except ValueError:
        return False
    return not (ip.is_unspecified or ip.is_multicast or ip == _BROADCAST)
