"""mDNS announcing and browsing with real python-zeroconf on loopback (127.0.0.1 only).

Every runner id here carries a random token and the browsers' callbacks only
record those, so a test run elsewhere on this machine cannot confuse these.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import zmq
from zeroconf import IPVersion, ServiceInfo
from zeroconf.asyncio import AsyncZeroconf

from narwhal import __version__
from narwhal.config import DiscoveryConfig
from narwhal.errors import DiscoveryError, ProtocolError
from narwhal.mesh.announcement import Announcement, parse_announcement
from narwhal.mesh.discovery import (
    SERVICE_TYPE,
    Announcer,
    Browser,
    announced_addresses,
    interface_addresses,
)
from narwhal.mesh.protocol import PROTOCOL_VERSION

LOOPBACK = ("127.0.0.1",)
WAIT = 5.0


def run(coro: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(coro(), 30))


class Seen:
    """What a browser reported about runners whose id starts with ``token``."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.found: asyncio.Queue[Announcement] = asyncio.Queue()
        self.gone: asyncio.Queue[str] = asyncio.Queue()
        self.endpoints: set[str] = set()

    async def on_found(self, announcement: Announcement) -> None:
        if announcement.runner_id.startswith(self.token):
            self.endpoints.add(announcement.endpoint)
            await self.found.put(announcement)

    async def on_gone(self, endpoint: str) -> None:
        if endpoint in self.endpoints:
            await self.gone.put(endpoint)

    async def next_found(self) -> Announcement:
        return await asyncio.wait_for(self.found.get(), WAIT)

    async def next_gone(self) -> str:
        return await asyncio.wait_for(self.gone.get(), WAIT)


@asynccontextmanager
async def browsing(token: str) -> AsyncIterator[Seen]:
    seen = Seen(token)
    config = DiscoveryConfig(enabled=True, interfaces=LOOPBACK, request_timeout=2.0)
    async with Browser(config, on_found=seen.on_found, on_gone=seen.on_gone):
        yield seen


def runner(token: str, suffix: str = "", **fields: Any) -> Announcement:
    values: dict[str, Any] = {
        "runner_id": f"{token}{suffix}",
        "addresses": LOOPBACK,
        "port": 40000 + secrets.randbelow(20000),
        "capacity": 3,
        "labels": {"os": "linux", "arch": "amd64"},
    }
    return Announcement(**{**values, **fields})


def test_announced_runner_is_found_with_its_properties_then_says_goodbye() -> None:
    token = f"t{secrets.token_hex(4)}"

    async def main() -> None:
        async with browsing(token) as seen:
            announcement = runner(token)
            async with Announcer(announcement, interfaces=LOOPBACK):
                found = await seen.next_found()
                assert found.runner_id == token
                assert found.endpoint == f"tcp://127.0.0.1:{announcement.port}"
                assert found.capacity == 3
                assert found.labels == {"os": "linux", "arch": "amd64"}
                assert found.protocol == PROTOCOL_VERSION
                assert found.version == __version__
                assert found.key is None
                assert found.name == f"{announcement.instance}.{SERVICE_TYPE}"
            assert await seen.next_gone() == found.endpoint

    run(main)


def test_a_browser_started_later_finds_runners_already_announced() -> None:
    token = f"t{secrets.token_hex(4)}"

    async def main() -> None:
        announcements = [runner(token, f"-{n}") for n in range(3)]
        async with Announcer(announcements[0], interfaces=LOOPBACK):
            async with Announcer(announcements[1], interfaces=LOOPBACK):
                async with Announcer(announcements[2], interfaces=LOOPBACK):
                    async with browsing(token) as seen:
                        found = {(await seen.next_found()).runner_id for _ in range(3)}
        assert found == {a.runner_id for a in announcements}

    run(main)


def test_an_update_is_announced_again() -> None:
    token = f"t{secrets.token_hex(4)}"

    async def main() -> None:
        async with browsing(token) as seen:
            async with Announcer(runner(token), interfaces=LOOPBACK) as announcer:
                assert (await seen.next_found()).capacity == 3
                await announcer.update(capacity=7)
                updated = await seen.next_found()
                assert updated.capacity == 7
                assert updated.labels == {"os": "linux", "arch": "amd64"}
                await announcer.update(labels={"gpu": "yes"})
                assert (await seen.next_found()).labels == {"gpu": "yes"}
            await seen.next_gone()
            assert seen.found.empty()

    run(main)


HOSTILE: list[dict[bytes, bytes | None]] = [
    {b"capacity": b"2", b"protocol": b"1", b"version": b"x"},  # no id
    {b"id": b"\xff\xfe", b"capacity": b"2", b"protocol": b"1", b"version": b"x"},
    {b"id": b"{token}-a", b"capacity": b"lots", b"protocol": b"1", b"version": b"x"},
    {b"id": b"{token}-b", b"capacity": b"0", b"protocol": b"1", b"version": b"x"},
    {b"id": b"{token}-c", b"capacity": b"99999999", b"protocol": b"1", b"version": b"x"},
    {b"id": b"{token}-d", b"capacity": b"\xd9\xa3", b"protocol": b"1", b"version": b"x"},
    {b"id": b"{token}-e", b"capacity": b"2", b"protocol": b"1", b"version": b"x", b"labels": b"=,"},
    {b"id": b"{token}-f\n", b"capacity": b"2", b"protocol": b"1", b"version": b"x"},
    {b"id": b"{token}-g", b"capacity": b"2", b"protocol": b"-1", b"version": b"x"},
    {b"id": b"{token}-h", b"capacity": b"2", b"protocol": b"1", b"version": None},
]


def test_hostile_announcements_are_logged_and_ignored(caplog: pytest.LogCaptureFixture) -> None:
    token = f"t{secrets.token_hex(4)}"
    caplog.set_level(logging.WARNING, logger="narwhal.mesh.discovery")

    async def main() -> None:
        async with browsing(token) as seen:
            zc = AsyncZeroconf(interfaces=list(LOOPBACK), ip_version=IPVersion.V4Only)
            try:
                for n, txt in enumerate(HOSTILE):
                    properties = {
                        k: v.replace(b"{token}", token.encode()) if v else v for k, v in txt.items()
                    }
                    info = _raw_info(f"{token}-hostile-{n}", 41000 + n, properties)
                    await zc.async_register_service(info, cooperating_responders=True)
                # Port 0 and an unspecified address: well-formed TXT, nowhere to connect.
                good_txt = Announcement(
                    runner_id=f"{token}-z", addresses=LOOPBACK, port=1, capacity=1
                )
                txt = {k.encode(): v.encode() for k, v in good_txt.txt().items()}
                await zc.async_register_service(
                    _raw_info(f"{token}-port0", 0, txt), cooperating_responders=True
                )
                await zc.async_register_service(
                    _raw_info(f"{token}-nowhere", 41999, txt, address="0.0.0.0"),
                    cooperating_responders=True,
                )
                # The browser survives all of that and still finds a good runner.
                async with Announcer(runner(token, "-good"), interfaces=LOOPBACK):
                    assert (await seen.next_found()).runner_id == f"{token}-good"
                await asyncio.sleep(0.2)
                assert seen.found.empty()
            finally:
                await zc.async_close()

    run(main)
    ignored = [
        r.getMessage() for r in caplog.records if "ignoring mDNS announcement" in r.getMessage()
    ]
    mentioned = " ".join(ignored)
    for n in range(len(HOSTILE)):
        assert f"{token}-hostile-{n}" in mentioned, ignored
    assert f"{token}-port0" in mentioned and f"{token}-nowhere" in mentioned
    assert "capacity" in mentioned and "not UTF-8" in mentioned and "TXT id missing" in mentioned


def _raw_info(
    instance: str, port: int, properties: dict[bytes, bytes | None], address: str = "127.0.0.1"
) -> ServiceInfo:
    return ServiceInfo(
        SERVICE_TYPE,
        f"{instance}.{SERVICE_TYPE}",
        port=port,
        properties=properties,
        server=f"{instance}.local.",
        addresses=[socket.inet_aton(address)],
    )


def test_parse_announcement_checks_every_field() -> None:
    txt = {b"id": b"r1", b"capacity": b"4", b"protocol": b"1", b"version": b"0.1.0"}
    ok = parse_announcement("n", ["10.0.0.5", "127.0.0.1"], 8471, {**txt, b"labels": b"a=1,b="})
    assert ok.endpoint == "tcp://10.0.0.5:8471"
    assert ok.labels == {"a": "1", "b": ""}
    assert ok.key is None
    key = zmq.curve_keypair()[0]
    assert parse_announcement("n", ["10.0.0.5"], 1, {**txt, b"curve": key}).key == key.decode()
    with pytest.raises(ProtocolError, match="TXT curve"):
        parse_announcement("n", ["10.0.0.5"], 1, {**txt, b"curve": b"ab12"})
    bad: list[tuple[list[str], int | None, dict[bytes, bytes | None]]] = [
        ([], 8471, txt),
        (["0.0.0.0", "224.0.0.251", "255.255.255.255"], 8471, txt),
        (["10.0.0.5"], None, txt),
        (["10.0.0.5"], 70000, txt),
        (["10.0.0.5"], 8471, {**txt, b"capacity": b"4.5"}),
        (["10.0.0.5"], 8471, {**txt, b"id": b"x" * 200}),
        (["10.0.0.5"], 8471, {**txt, b"labels": b"novalue"}),
        (["10.0.0.5"], 8471, {**txt, b"labels": b",".join(b"k%d=v" % i for i in range(65))}),
    ]
    for addresses, port, properties in bad:
        with pytest.raises(ProtocolError):
            parse_announcement("n", addresses, port, properties)


def test_instance_names_are_one_dns_label_that_holds_the_endpoint() -> None:
    long = Announcement(
        runner_id="build.example.com " + "x" * 80, addresses=("10.1.2.3",), port=8471, capacity=1
    )
    assert long.instance.endswith("@10-1-2-3:8471")
    assert (
        len(long.instance.encode()) <= 63 and "." not in long.instance and " " not in long.instance
    )
    with pytest.raises(DiscoveryError, match="labels"):
        Announcer(
            Announcement(
                runner_id="r", addresses=LOOPBACK, port=1, capacity=1, labels={"k": "v" * 300}
            )
        )


def test_interfaces_are_checked_and_wildcard_listeners_announce_real_addresses() -> None:
    assert interface_addresses(LOOPBACK) == LOOPBACK
    assert "127.0.0.1" in interface_addresses()
    with pytest.raises(DiscoveryError, match="198.51.100.254"):
        interface_addresses(("198.51.100.254",))
    assert announced_addresses("127.0.0.1", LOOPBACK) == LOOPBACK
    assert announced_addresses("0.0.0.0", LOOPBACK) == LOOPBACK
    everywhere = announced_addresses("0.0.0.0")
    assert everywhere and ("127.0.0.1" not in everywhere or everywhere == LOOPBACK)


def test_announcer_on_an_address_this_host_lacks_fails_clearly() -> None:
    async def main() -> None:
        with pytest.raises(DiscoveryError, match="no interface has the address"):
            await Announcer(runner("x"), interfaces=("198.51.100.254",)).start()

    run(main)


def test_an_address_on_no_browsed_network_is_ignored(caplog: pytest.LogCaptureFixture) -> None:
    """A LAN peer cannot point the dispatcher at another network (browsing loopback here)."""
    token = f"n{secrets.token_hex(4)}"
    caplog.set_level(logging.WARNING, logger="narwhal.mesh.discovery")

    async def main() -> None:
        async with browsing(token) as seen:
            zc = AsyncZeroconf(interfaces=list(LOOPBACK), ip_version=IPVersion.V4Only)
            try:
                txt = {
                    k.encode(): v.encode()
                    for k, v in runner(token, "-far", addresses=("10.1.2.3",)).txt().items()
                }
                info = _raw_info(f"{token}-far", 41500, txt, address="10.1.2.3")
                await zc.async_register_service(info, cooperating_responders=True)
                async with Announcer(runner(token, "-near"), interfaces=LOOPBACK):
                    assert (await seen.next_found()).runner_id == f"{token}-near"
                await asyncio.sleep(0.3)
                assert seen.found.empty()
            finally:
                await zc.async_close()

    run(main)
    ignored = [r.getMessage() for r in caplog.records if f"{token}-far" in r.getMessage()]
    assert ignored and "10.1.2.3 is on none of the networks browsed (127.0.0.0/8)" in ignored[0]
