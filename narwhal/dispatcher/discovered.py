"""Runners found by mDNS: connect to each one, drop those that say goodbye.

The browser (``narwhal.mesh.discovery``) reports announcements; this keeps
the pool in line with them. mDNS only ever says where a runner is:

- a new announcement is a connection (``RunnerPool.connect(source=MDNS)``,
  idempotent per endpoint, so a repeated or updated announcement never
  connects twice); the runner is schedulable once its READY arrives, with
  the capacity the READY states;
- a goodbye drops the link and requeues whatever it held (``forget``);
- liveness is the pool's heartbeats, never mDNS: a killed runner's records
  stay cached for a long time and its link keeps reconnecting.

Every heartbeat interval, ``reconcile`` settles what one pass cannot: a
runner that restarted on another port is announced twice (the old records
linger), so once its id is ready at the new endpoint and the old endpoint
has stayed silent for the dead interval, the old one is dropped (one runner,
not two; the wait lets a second runner claiming the id answer and be
refused instead); and an endpoint refused because its runner id was held by
another link gets another chance once no ready link holds that id (the
holder died or left).

With CurveZMQ, an announcement is worth a connection only if its ``curve=``
key is in the allow-list under the announced id; the others are listed
refused with the reason (the ``narwhal keys trust`` command to run) and
looked at again when the allow-list changes, never retried on their own.
The announced key is a filter, not a proof: the handshake decides.
"""

from __future__ import annotations

import asyncio
import logging
import time

from narwhal.config import DiscoveryConfig
from narwhal.dispatcher.mesh import LinkState, Peer, Source
from narwhal.dispatcher.pool import RunnerPool
from narwhal.errors import NarwhalError
from narwhal.mesh.announcement import Announcement
from narwhal.mesh.discovery import Browser
from narwhal.mesh.protocol import PROTOCOL_VERSION
from narwhal.quietlog import QuietLog
from narwhal.supervise import supervise

log = logging.getLogger(__name__)


class DiscoveredRunners:
    """Keeps the pool connected to the runners mDNS announces (an async context manager)."""

    def __init__(self, config: DiscoveryConfig, pool: RunnerPool) -> None:
        self._pool = pool
        self._browser = Browser(config, on_found=self._found, on_gone=self._gone)
        #: What the LAN announces now, by endpoint (goodbyes remove entries).
        self._announced: dict[str, Announcement] = {}
        #: Endpoints not ready while their runner id is ready elsewhere, and
        #: since when: dropped once that lasts longer than the dead interval
        #: (a live runner would have answered; a duplicate would be refused).
        self._silent: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None
        self._quiet = QuietLog(log)
        auth = pool.auth
        self._generation = auth.trust.generation if auth is not None else 0

    async def __aenter__(self) -> DiscoveredRunners:
        await self._browser.start()
        self._task = asyncio.create_task(
            supervise("discovery reconcile loop", self._reconcile_loop)
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])  # never swallows our own cancellation
            self._task = None
        await self._browser.aclose()

    async def _found(self, runner: Announcement) -> None:
        if runner.protocol != PROTOCOL_VERSION:
            self._quiet.warning(
                runner.endpoint,
                "runner %r at %s speaks protocol %d, this dispatcher %d: not connecting",
                runner.runner_id,
                runner.endpoint,
                runner.protocol,
                PROTOCOL_VERSION,
            )
            return
        known = self._announced.get(runner.endpoint)
        self._announced[runner.endpoint] = runner
        if known is not None and (known.runner_id, known.key) == (runner.runner_id, runner.key):
            if known.capacity != runner.capacity:
                log.info("runner %s announces %d slot(s)", runner.runner_id, runner.capacity)
            return
        self._connect(runner)

    def _connect(self, runner: Announcement) -> None:
        refusal = self._pool.auth.announced(runner.runner_id, runner.key) if self._pool.auth else ""
        if refusal:
            self._pool.refuse(runner.endpoint, refusal, Source.MDNS)
            return
        try:
            link = self._pool.connect(runner.endpoint, source=Source.MDNS)
        except NarwhalError as e:  # an endpoint the pool refuses outright
            self._quiet.warning(runner.endpoint, "runner at %s: %s", runner.endpoint, e)
            return
        if link is not None:
            log.info(
                "discovered runner %s at %s (%d slot(s) announced)",
                runner.runner_id,
                runner.endpoint,
                runner.capacity,
            )

    async def _gone(self, endpoint: str) -> None:
        runner = self._announced.pop(endpoint, None)
        name = runner.runner_id if runner is not None else "?"
        log.info("runner %s at %s said goodbye", name, endpoint)
        await self._pool.forget(endpoint, f"runner {name} at {endpoint} said goodbye")

    async def _reconcile_loop(self) -> None:
        while True:
            await asyncio.sleep(self._pool.config.heartbeat_interval)
            await self.reconcile(time.monotonic())

    def _trust_changed(self) -> None:
        """After the allow-list changed (the pool forgot its key refusals): look again."""
        auth = self._pool.auth
        if auth is None or auth.trust.generation == self._generation:
            return
        self._generation = auth.trust.generation
        connected = {peer.endpoint for peer in self._pool.peers()}
        for endpoint, runner in self._announced.items():
            if endpoint not in connected and endpoint not in self._pool.refused:
                self._connect(runner)

    async def reconcile(self, now: float) -> None:
        """Drop stale endpoints of runners ready elsewhere; retry refused ones that are free."""
        self._trust_changed()
        links: dict[str, Peer] = {peer.endpoint: peer for peer in self._pool.peers()}
        ready = {link.runner_id: link for link in links.values() if link.state == LinkState.READY}
        silent, self._silent = self._silent, {}
        for endpoint, runner in list(self._announced.items()):
            holder = ready.get(runner.runner_id)
            link = links.get(endpoint)
            if endpoint in self._pool.key_refused:
                continue  # until the allow-list changes
            if holder is None:
                if self._pool.retry(endpoint):
                    log.info(
                        "runner id %s is free again: connecting to %s", runner.runner_id, endpoint
                    )
                    self._connect(runner)
                elif link is None:
                    self._connect(runner)
            elif holder.endpoint != endpoint and link is not None and link.state != LinkState.READY:
                since = silent.get(endpoint, now)
                if now - since <= self._pool.config.dead_after:
                    self._silent[endpoint] = since
                    continue
                await self._pool.forget(
                    endpoint, f"runner {runner.runner_id} is now at {holder.endpoint}"
                )
