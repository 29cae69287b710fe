"""``zmesh relay``: a native relay (and optionally an exit) on WebRTC and WebSocket links.

It accepts WebSocket links on ``/v1/link`` and WebRTC offers through the signal server, dials
the relays clients EXTEND to (``transport.kind``: WebRTC first, WebSocket as fallback),
publishes its signed descriptor to the signal server and refreshes it before it expires.
It rotates its onion keys every ``relay.onion_key_lifetime`` (``zmesh.onionkeys``, saved in its data
dir) and republishes at once, answering for the replaced keys for ``relay.onion_key_grace`` more.
As an exit it resolves and checks every target against its ``ExitPolicy`` *at the exit* before
connecting, directly or through its ``exit.upstream`` HTTP CONNECT proxy (a ``proxy`` exit).
On stop it DESTROYs its circuits and lets the descriptor expire.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from zmesh.aio.driver import IncomingStream, NodeDriver
from zmesh.aio.multipath_link import MultipathExit
from zmesh.consensus_view import ConsensusView
from zmesh.descriptor import DEFAULT_LIFETIME, Capabilities, Descriptor, sign_descriptor
from zmesh.directory_view import DirectoryView
from zmesh.errors import ConfigError, ZmeshError
from zmesh.identity import PeerId
from zmesh.limits import PeerTiers
from zmesh.link import Link
from zmesh.native.crypto import NativeCryptoProvider
from zmesh.node import Node, NodeLimits
from zmesh.onionkeys import OnionKeyRing
from zmesh_signal.app import http_error
from zmesh_signal.client import SignalClient

from . import wslink
from .address_slots import AddressSlots
from .authority_client import AuthorityClient, open_consensus_view
from .config import padding_policy, split_host_port
from .exit_policy import ExitPolicy, end_reason_for, open_exit_connection
from .keys import (
    load_or_create_descriptor_mldsa_key,
    load_or_create_identity,
    load_or_create_onion_ring,
    save_onion_ring,
)
from .linkaddress import load_tls, published_address
from .metrics import EXIT_COUNTER
from .splice import splice
from .transports import NativeTransports
from .upstream import Upstream

log = logging.getLogger(__name__)


class Relay:
    """One relay process. ``start`` returns once it listens and is published."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.provider = NativeCryptoProvider()
        self.exit_policy = ExitPolicy.from_rules(config["security.exit_allow"], policy=config["exit.policy"]
                                                 ) if config["relay.exit"] else None
        self.upstream = Upstream.parse(config["exit.upstream"]) if config["exit.upstream"] else None
        if self.upstream is not None and self.exit_policy is None:
            raise ConfigError("exit.upstream (--exit-upstream) is set but this relay is no exit; add --exit")
        self.tls = load_tls(config["relay.tls_cert"], config["relay.tls_key"])
        self.signal = SignalClient(config["signaling.url"])
        self.directory: DirectoryView | ConsensusView = DirectoryView(self.signal.relay_updates, self.provider)
        self.authorities = AuthorityClient(config["directory.authorities"]) if config["directory.authorities"] else None
        self._mldsa_seed: bytes | None = None
        self.driver: NodeDriver | None = None
        self.transports: NativeTransports | None = None
        self.link_url = ""
        self.descriptor: Descriptor | None = None
        self.onion_ring: OnionKeyRing | None = None
        self._runner: web.AppRunner | None = None
        self._refresh: asyncio.Task | None = None
        self._handlers: set[asyncio.Task] = set()
        self._address_slots = AddressSlots(config["relay.max_links_per_address"])

    @property
    def peer_id(self) -> PeerId:
        assert self.driver is not None
        return self.driver.node.identity.peer_id

    async def start(self) -> None:
        data_dir = self.config["relay.data_dir"]
        identity = await load_or_create_identity(self.provider, data_dir)
        if self.authorities is not None:  # relays to extend to come from the consensus only
            self.directory = await open_consensus_view(self.config, self.authorities, self.provider, data_dir)
            # authorities list only hybrid-signed descriptors (docs/directory.md)
            self._mldsa_seed = await load_or_create_descriptor_mldsa_key(self.provider, data_dir)
        self.onion_ring = ring = await load_or_create_onion_ring(
            self.provider, data_dir, time.time, lifetime=self.config["relay.onion_key_lifetime"],
            grace=self.config["relay.onion_key_grace"])
        await self._tend_onion_keys()  # a ring saved long ago rotates before it is published
        node = Node(identity, self.provider, time.monotonic, onion_ring=ring, limits=NodeLimits(
            build_timeout=self.config["core.build_timeout"], cc_max_window=self.config["core.cc_max_window"],
            max_links=self.config["relay.max_links"],
            max_circuits=self.config["relay.max_circuits"], handshake_rate=self.config["relay.handshake_rate"],
            peer_tiers=PeerTiers.parse(self.config["relay.max_peers"]),
            padding_max_rate=self.config["anonymity.padding_max_rate"],
            padding_max_percent=self.config["anonymity.padding_max_percent"]))
        node.padding_policy = padding_policy(self.config)
        self.transports = NativeTransports(self.config, self.signal, self.directory, identity, self.provider,
                                           on_inbound=self._accept_rtc_link)
        self.driver = NodeDriver(node, dialer=self.transports.dialer,
                                 stream_handler=self._exit if self.exit_policy else None)
        driver = self.driver
        if self.exit_policy:  # multipath legs (docs/protocol.md "Multipath") reach _exit as one stream
            driver.stream_handler = MultipathExit(driver).wrap(self._exit)

        async def size_peer_table(relays: list[Descriptor]) -> None:
            await driver.set_network_size(len(relays))
        self.directory.on_refresh = size_peer_table
        await self.transports.start()
        app = web.Application(middlewares=[_json_errors])
        app.on_response_prepare.append(wslink.hide_server)
        app.router.add_get(self.config["relay.ws_path"], self._accept_link)
        app.router.add_get("/healthz", self._health)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        host, port = split_host_port(self.config["relay.listen"])
        site = web.TCPSite(self._runner, host, port, ssl_context=self.tls.context if self.tls else None)
        await site.start()
        bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.link_url = str(published_address(host, bound, advertise=self.config["relay.advertise"], tls=self.tls,
                                              path=self.config["relay.ws_path"]))
        await self._publish()
        if self.authorities is None:  # an authority answers a publication only after testing the relay
            await self._await_listed(self.config["relay.listing_wait"])
        self._refresh = asyncio.get_running_loop().create_task(self._refresh_loop())
        log.info("relay %s listening on %s%s", identity.peer_id.short(), self.link_url,
                 "" if not self.exit_policy else " (exit)" if not self.upstream else f" (exit through {self.upstream})")
        if self.exit_policy is not None and not self.exit_policy.summary_ports():
            log.warning("exit.policy accepts no port for every address (*): no client will choose this exit")

    async def _publish(self) -> None:
        assert self.driver is not None and self.transports is not None and self.onion_ring is not None
        caps = Capabilities(relay=True, exit=self.exit_policy is not None,
                            country=self.config["relay.country"] or None,
                            bandwidth=self.config["relay.bandwidth"],
                            exit_kind="direct" if self.upstream is None else "proxy")
        # strictly newer than the last one (the directory refuses a replay), even within a second
        now = max(int(time.time()), self.descriptor.published + 1 if self.descriptor else 0)
        self.descriptor = await sign_descriptor(
            self.provider, self.driver.node.identity, now=now,
            addresses={"ws": (self.link_url,), **self.transports.addresses()}, capabilities=caps,
            exit_ports=self.exit_policy.summary_ports() if self.exit_policy else (),
            onion=self.onion_ring.current.public, family=self.config["relay.family"], mldsa65_seed=self._mldsa_seed)
        if self.authorities is None:
            await self.signal.publish(self.descriptor.raw)
            return
        accepted = await self.authorities.publish(self.descriptor.raw)
        log.info("%d of %d authorities listed this relay", accepted, len(self.authorities.authorities))
        try:  # the signal server still carries WebRTC signaling for this relay
            await self.signal.publish(self.descriptor.raw)
        except ZmeshError as exc:
            log.debug("not published to the signal server: %s", exc)

    async def _await_listed(self, timeout: float) -> None:
        """Wait (up to ``timeout`` s) until the signal server lists this relay: it probes the link
        address first, so a relay is not announced as ready before clients can find it."""
        deadline = time.monotonic() + timeout
        delay = 0.02
        while True:
            try:
                if await self.directory.find(self.peer_id) is not None:
                    return
            except ZmeshError as exc:
                log.debug("directory not reachable yet: %s", exc)
            if time.monotonic() + delay > deadline:
                log.warning("the signal server has not listed this relay yet (it may not reach %s)", self.link_url)
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def _tend_onion_keys(self) -> bool:
        """Rotate the onion keys if due and forget retired ones past their grace, on disk too.
        Returns whether they rotated."""
        assert self.onion_ring is not None
        rotated = await self.onion_ring.handle_timer(self.provider)
        try:
            save_onion_ring(self.onion_ring, self.config["relay.data_dir"])
        except ConfigError as exc:  # keep serving: a restart would then start from the older state
            log.error("%s", exc)
        if rotated:
            log.info("rotated the onion keys")
        return rotated

    async def _refresh_loop(self) -> None:
        """Republish every third of the descriptor lifetime, and at once after the onion keys rotate."""
        assert self.onion_ring is not None
        publish_at = time.time() + DEFAULT_LIFETIME / 3
        while True:
            await asyncio.sleep(max(0.0, min(publish_at, self.onion_ring.next_deadline()) - time.time()))
            if time.time() >= self.onion_ring.next_deadline() and await self._tend_onion_keys():
                publish_at = time.time()
            if time.time() < publish_at:
                continue
            publish_at = time.time() + DEFAULT_LIFETIME / 3
            try:
                await self._publish()
            except ZmeshError as exc:  # the signal server may be restarting: try again next round
                log.warning("could not refresh the descriptor: %s", exc)

    async def _accept_link(self, request: web.Request) -> web.StreamResponse:
        assert self.driver is not None
        address = request.remote or ""
        if not self._address_slots.take(address):
            self.driver.node.metrics["links_refused_per_address"] += 1
            return web.json_response({"error": "too many links from this address"}, status=503)
        try:
            ws, link = await wslink.accept(request)
            await self.driver.add_link(link, None, initiator=False)
            await link.wait_closed()
        finally:
            self._address_slots.give_back(address)
        return ws

    async def _accept_rtc_link(self, link: Link, _signalled_by: PeerId) -> None:
        # Anonymous like any inbound link: the dialer's signaling PeerId need not be its node's, and
        # a relay that wants circuits extended to it proves itself with link authentication.
        assert self.driver is not None
        await self.driver.add_link(link, None, initiator=False)

    async def _health(self, request: web.Request) -> web.Response:
        """Status only: counters that move with traffic would tell anyone polling this public port
        which relay carries a target's circuit. They are on the private /metrics (zmesh_relay.metrics)."""
        return web.json_response({"status": "ok"})

    async def _exit(self, request: IncomingStream) -> None:
        assert self.exit_policy is not None
        try:
            reader, writer = await open_exit_connection(self.exit_policy, request.host, request.port,
                                                        upstream=self.upstream)
        except ZmeshError as exc:
            log.debug("exit refused a stream: %s", exc)
            reason = end_reason_for(exc)
            self._count_exit(reason.name.lower())
            await request.reject(reason)
            return
        self._count_exit("connected")
        stream = await request.accept()
        await splice(stream, reader, writer, end_on_tcp_eof=True)

    def _count_exit(self, result: str) -> None:
        assert self.driver is not None
        self.driver.node.metrics[EXIT_COUNTER + result] += 1

    async def stop(self) -> None:
        """DESTROY every circuit, give the links a moment to carry that, then close everything."""
        if self._refresh is not None:
            self._refresh.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresh
        if self.driver is not None:
            node = self.driver.node
            for circuit in node.circuits():
                await self.driver.destroy_circuit(circuit)
            deadline = time.monotonic() + 2.0
            while node.links_with_output() and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            await self.driver.close()
        if self.transports is not None:
            await self.transports.close()
        if self._runner is not None:
            await self._runner.cleanup()
        await self.signal.close()
        if self.authorities is not None:
            await self.authorities.close()


@web.middleware
async def _json_errors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                       ) -> web.StreamResponse:
    """A relay's HTTP errors in the signal server's JSON shape, not aiohttp's text pages."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return http_error(exc)
