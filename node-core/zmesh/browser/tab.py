"""The tab's node (imported only under Pyodide) and ``open_mesh``, which ``web/meshvpn.js`` calls.

Its links are DataChannels (``browser.rtc``) or WebSockets (``browser.links``), chosen per link by
the same ``TransportDialer`` native nodes use. A tab that relays proves its PeerId only on its link
to its home relay; its own circuits go over client links on which it proves nothing, signalled (over
WebRTC) under a throwaway identity (docs/protocol.md §3). A tab that does not relay never proves it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypedDict

import js  # type: ignore[import-not-found]
from pyodide.ffi import to_js  # type: ignore[import-not-found]
from pyodide.http import pyfetch  # type: ignore[import-not-found]

from ..aio.consensus_refresh import keep_fresh
from ..aio.driver import NodeDriver
from ..aio.notices import RefetchOnNotice
from ..aio.rtc import RtcConnector, RtcOptions
from ..aio.tasks import OwnedTasks
from ..aio.transport import RTC_ADDRESS, TransportDialer, keep_signaling
from ..backoff import Backoff
from ..consensus_view import ConsensusView
from ..cover import DEFAULT_KEEPALIVE, PaddingPolicy
from ..descriptor import DEFAULT_LIFETIME, MAX_LIFETIME, Capabilities, Descriptor, sign_descriptor
from ..directory_view import DirectoryView, RelayUpdate
from ..errors import ConfigError, LinkClosed, ProtocolError, TransportError, ZmeshError
from ..guards import GuardManager
from ..identity import Identity, PeerId
from ..link import Link
from ..netaddr import LinkAddress, page_allows_private
from ..node import Node
from ..onionkeys import OnionKeyRing
from ..setuppad import SetupSpec
from ..signaling import SignalSession
from .links import BrowserChannelLink, BrowserTextSocket
from .onion import page_descriptors
from .rtc import BrowserRtcBackend
from .session import TabMesh, error_code, rtc_options
from .tab_consensus import tab_consensus
from .tls import TlsliteConnector
from .webcrypto import WebCryptoProvider

log = logging.getLogger(__name__)

HOME_ATTEMPTS = 4  # home relays tried per offer before the tab gives up (and its keeper retries later)


async def _fetch_relays(cursor: str | None) -> RelayUpdate:
    """The relay list from this page's own origin: whole without a cursor, else what changed since."""
    response = await pyfetch("/v1/relays" + (f"?since={cursor}" if cursor else ""))
    if response.status != 200:
        raise TransportError(f"the directory answered {response.status}")
    try:
        answer = await response.json()
    except ValueError as exc:
        raise ProtocolError("the directory's relay list is not JSON") from exc
    return RelayUpdate.from_answer(answer)


class BrowserNode:
    """The tab's node: identity, WebCrypto, a directory view from the signal server, a driver, and
    links over WebRTC (DataChannels, signalled through this page's origin) or WebSocket."""

    def __init__(self, identity: Identity, provider: WebCryptoProvider, onion_ring: OnionKeyRing, *,
                 allow_private: bool = False, relay: bool = True, descriptor_lifetime: int = DEFAULT_LIFETIME,
                 directory: ConsensusView | None = None) -> None:
        if not isinstance(descriptor_lifetime, int) or not 60 <= descriptor_lifetime <= MAX_LIFETIME:
            raise ConfigError(f"descriptorLifetime must be 60..{MAX_LIFETIME} seconds, got {descriptor_lifetime!r}")
        self.provider = provider
        self.descriptor_lifetime = descriptor_lifetime  # republished every third of it (``_keep_published``)
        self.onion_ring = onion_ring  # in memory only: a reloaded tab publishes fresh onion keys
        self.allow_private = allow_private  # dial non-public link addresses: see ``netaddr.page_allows_private``
        self.relay = relay  # accept circuits (over the home link) and answer WebRTC offers as this node
        # ``directory``: the authorities' consensus (``browser.tab_consensus``), else the signal server's list
        self.directory: DirectoryView | ConsensusView = directory or DirectoryView(_fetch_relays, provider)
        self.notices = RefetchOnNotice(  # every signaling session subscribes; a consensus is fetched when due
            self.directory.refresh if directory is None else self.directory.relays)
        self.dialer = TransportDialer(self.directory.find, websocket=self._dial_websocket, rtc=None,
                                      mode=lambda: "auto", rtc_names_node=relay)
        self.driver = NodeDriver(Node(identity, provider, time.monotonic, accept_circuits=relay, onion_ring=onion_ring),
                                 dialer=self.dialer)
        self.home: PeerId | None = None  # the relay this tab is reachable ``via``
        self._home_link: Any = None
        self._published = 0
        self._tasks = OwnedTasks("browser node")

    @classmethod
    async def start(cls, saved_identity: bytes | None = None, *, relay: bool = True,
                    descriptor_lifetime: int = DEFAULT_LIFETIME, provider: WebCryptoProvider | None = None,
                    directory: ConsensusView | None = None) -> BrowserNode:
        """A node with the tab's saved identity (kept in IndexedDB by meshvpn.js) or a new one,
        relaying for others if ``relay``. It dials non-public link addresses only if this page
        itself came from one."""
        provider = provider or WebCryptoProvider()
        identity = None
        if saved_identity:
            try:
                identity = await Identity.from_bytes(provider, saved_identity)
            except ConfigError:
                identity = None  # a corrupt saved key: start afresh rather than fail to join
        return cls(identity or await Identity.generate(provider), provider,
                   await OnionKeyRing.generate(provider, time.time),
                   allow_private=page_allows_private(js.location.hostname), relay=relay,
                   descriptor_lifetime=descriptor_lifetime, directory=directory)

    async def _dial_websocket(self, address: LinkAddress) -> Link:
        # The browser resolves names itself, so only literals and localhost names can be checked here.
        address.check(allow_private=self.allow_private)
        if address.pin is not None:
            # A browser checks certificates against its authorities only; a pin it cannot check.
            raise TransportError(f"{address.url} is pinned to a certificate a browser cannot check; "
                                 "this relay is reached over WebRTC")
        if address.scheme == "ws" and js.location.protocol == "https:":
            raise TransportError(f"a page served over HTTPS cannot open {address.url} (mixed content)")
        return await BrowserChannelLink.dial(address.url)


    async def start_webrtc(self, options: RtcOptions) -> None:
        """Open the signaling socket on this page's origin, to dial DataChannels and, if this tab
        relays, answer them. Only a session that answers offers signs in as this node; the tab's
        client links (its own circuits) are signalled under a throwaway identity, so the relays it
        links to for its own circuits cannot recognise it, nor from one visit to the next."""
        throwaway = await Identity.generate(self.provider)
        sessions = {"rtc": (self.driver.node.identity, True), "client_rtc": (throwaway, False)} if self.relay \
            else {"rtc": (throwaway, False)}
        for slot, (identity, accept) in sessions.items():
            async def open_connector(identity: Identity = identity, accept: bool = accept) -> RtcConnector:
                session = await self._open_session(identity)
                return RtcConnector(session, BrowserRtcBackend(), self._inbound, options, accept=accept)

            setattr(self.dialer, slot, await open_connector())
            self._tasks.spawn(keep_signaling(self.dialer, open_connector, slot))

    async def _inbound(self, link: Link, _signalled_by: PeerId) -> None:
        # Anonymous like any inbound link; a relay extending circuits to us proves itself over it.
        await self.driver.add_link(link, None, initiator=False)

    async def offer_relay(self) -> Descriptor:
        """Help the mesh, Snowflake-style: link to a home relay (authenticating, so circuits can be
        extended to this tab over that link) and publish a descriptor reachable ``via`` it and,
        when this tab answers WebRTC offers, directly over DataChannels. If the home link dies the
        tab offers itself again, through another relay when it can."""
        if not self.relay:
            raise ConfigError("this tab was started with relay: false; it proves its PeerId to no one")
        if self.dialer.rtc is None:  # the directory lists a tab only while it is signed in
            self._tasks.spawn(self._keep_signed_in())
        descriptor = await self._offer_once()
        self._tasks.spawn(self._keep_home())
        self._tasks.spawn(self._keep_published())
        return descriptor

    async def _keep_published(self) -> None:
        """Republish through the current home a third of the descriptor's lifetime after the last
        publish, as native relays do, so a tab open for hours stays listed; and at once after its
        onion keys rotate (on the ring's schedule). A failed publish is retried with backoff."""
        backoff = Backoff()
        while True:
            republish_at = self._published + self.descriptor_lifetime / 3
            await asyncio.sleep(max(0.0, min(republish_at, self.onion_ring.next_deadline()) - time.time()))
            rotated = time.time() >= self.onion_ring.next_deadline() and await self.onion_ring.handle_timer(
                self.provider)
            if self.home is None or not (rotated or time.time() >= republish_at):
                continue
            try:
                await self._publish({"via": (self.home.text,), **(RTC_ADDRESS if self.dialer.rtc else {})})
                backoff.opened()
            except (ZmeshError, OSError) as exc:  # the home keeper offers the tab again when it can
                log.warning("could not republish this tab's descriptor: %s", exc)
                backoff.closed()
                await asyncio.sleep(backoff.delay())

    async def _keep_signed_in(self) -> None:
        """Stay signed in to the signal server as this node (a tab that answers WebRTC offers
        already is): the directory lists a tab's descriptor only while its PeerId is. Messages
        that arrive are not for a tab without WebRTC and are dropped."""
        backoff = Backoff()
        while True:
            try:
                async with await self._open_session(self.driver.node.identity) as session:
                    backoff.opened()
                    while True:
                        await session.receive()
            except (ZmeshError, OSError) as exc:
                log.info("the signaling session closed (%s); signing in again", exc)
            backoff.closed()
            await asyncio.sleep(backoff.delay())

    async def _open_session(self, identity: Identity) -> SignalSession:
        scheme = "wss" if js.location.protocol == "https:" else "ws"
        channel = await BrowserTextSocket.open(f"{scheme}://{js.location.host}/v1/ws")
        return await SignalSession.open(channel, identity, self.provider, timeout=10.0, on_directory=self.notices)

    async def _keep_home(self) -> None:
        backoff = Backoff()
        while True:
            await self._home_link.wait_closed()
            backoff.closed()
            log.warning("the link to this tab's home relay closed; offering the tab again")
            while True:
                await asyncio.sleep(backoff.delay())
                try:
                    await self.directory.refresh()
                    await self._offer_once(avoid=self.home)
                except (ZmeshError, OSError) as exc:  # pyfetch raises OSError when the origin is unreachable
                    log.warning("could not offer this tab again yet: %s", exc)
                    continue
                backoff.opened()
                break

    async def _offer_once(self, avoid: PeerId | None = None) -> Descriptor:
        homes = [d for d in self.directory.live() if d.addresses.get("ws")]
        homes = [d for d in homes if d.peer_id != avoid] or homes
        if not homes:
            raise TransportError("no relay to offer this tab through")
        failures = []
        # A listed relay may have gone away before its descriptor expired: try others, in random order.
        for home in random.sample(homes, min(len(homes), HOME_ATTEMPTS)):
            try:
                link_id = await self.driver.connect(home.peer_id, authenticated=True)
            except (TransportError, LinkClosed) as exc:
                failures.append(str(exc))
                continue
            self.home, self._home_link = home.peer_id, self.driver.links().get(link_id)
            return await self._publish({"via": (home.peer_id.text,), **(RTC_ADDRESS if self.dialer.rtc else {})})
        raise TransportError("no relay to offer this tab through would link: " + "; ".join(failures))

    async def _publish(self, addresses: dict[str, tuple[str, ...]]) -> Descriptor:
        # strictly newer than the last one, or the directory keeps that one (a replay loses)
        self._published = max(int(time.time()), self._published + 1)
        descriptor = await sign_descriptor(self.provider, self.driver.node.identity, now=self._published,
                                           lifetime=self.descriptor_lifetime,
                                           addresses=addresses, capabilities=Capabilities(relay=True),
                                           onion=self.onion_ring.current.public)
        response = await pyfetch("/v1/descriptors", method="POST", body=to_js(descriptor.raw),
                                 headers={"Content-Type": "application/octet-stream"})
        if response.status not in (201, 202):  # 202: stored, listed once the tab is signed in
            raise TransportError(f"the directory refused this tab's descriptor ({response.status})")
        return descriptor

    async def close(self) -> None:
        """Leave the mesh: stop the background tasks (signaling supervisors, sign-in, home keeper)
        first so none reopens what follows, then close the WebRTC connectors with their signaling
        sessions, and the driver with every link."""
        await self._tasks.close()
        await self.notices.close()
        for connector in (self.dialer.rtc, self.dialer.client_rtc):
            if connector is not None:
                await connector.close()
        self.dialer.rtc = self.dialer.client_rtc = None
        await self.driver.close()


class ErrorInfo(TypedDict):
    """A ``ZmeshError`` as the page's ``MeshError`` carries it (see ``web/meshvpn.d.ts``)."""

    type: str  # the class: "StreamError", "CircuitError", "ConfigError", ...
    message: str
    code: str  # the reason's name ("CONNECT_REFUSED", "DESTROYED", ...), else the class's ("CONFIG_ERROR")


def error_info(exc: ZmeshError) -> ErrorInfo:
    """The error as data: its reason travels as the enum member's name, never parsed from a message."""
    return {"type": type(exc).__name__, "message": str(exc), "code": error_code(exc)}


async def settle(method: Callable[..., Awaitable[Any]], *args: Any) -> tuple[Any, ErrorInfo | None]:
    """Run one call for ``web/meshvpn.js``: ``(result, None)``, or ``(None, error_info)`` when it
    raises a ``ZmeshError``, so JS gets the reason as data rather than a traceback's last line."""
    try:
        return await method(*args), None
    except ZmeshError as exc:
        return None, error_info(exc)


def tab_guards(saved: bytes | None, save: Callable[[Any], Any] | None) -> GuardManager:
    """The tab's entry guards: from the state ``web/meshvpn.js`` keeps in IndexedDB beside the
    identity, handed back to ``save`` (a JS function) on every change. Unlike the native client, a
    corrupt saved state is replaced by a fresh sample, as a corrupt saved identity is: a page has
    no one to ask to move a file away, and refusing would lock the tab out until its site data is cleared."""
    on_change = None if save is None else (lambda state: save(to_js(state)))
    rng = random.SystemRandom()
    if saved:
        try:
            return GuardManager.from_bytes(saved, what="the tab's saved guard state", clock=time.time, rng=rng,
                                           on_change=on_change)
        except ConfigError as exc:
            log.warning("%s; starting with a fresh guard sample", exc)
    return GuardManager(clock=time.time, rng=rng, on_change=on_change)


async def open_mesh(options: Any) -> TabMesh:
    """Called by ``web/meshvpn.js``: start the tab's node and return it connected, with its
    ``MeshVPN``, as a ``TabMesh`` (``zmesh.browser.session``) that tells ``events`` what happens."""
    from ..aio.api import MeshVPN

    settings = options.to_py() if hasattr(options, "to_py") else dict(options)
    destination = settings.pop("destination", None)
    saved = settings.pop("saved_identity", None)
    saved_guards, save_guards = settings.pop("saved_guards", None), settings.pop("save_guards", None)
    relay = settings.pop("relay", True)
    lifetime = settings.pop("descriptor_lifetime", DEFAULT_LIFETIME)
    events = settings.pop("events", None)
    ice = {key: settings.pop(key) for key in ("ice_servers", "webrtc_timeout", "ice_policy") if key in settings}
    tls = TlsliteConnector(settings.pop("extra_cas", ()))  # https://: TLS in the tab (zmesh.browser.tls)
    padding = PaddingPolicy.of(DEFAULT_KEEPALIVE, settings.pop("cover", "off"))  # MeshVPN option `cover`
    provider, consensus = WebCryptoProvider(), None
    authorities = settings.pop("authorities", None)  # MeshVPN option `authorities`: relays only from their consensus
    cached, save_consensus = settings.pop("saved_consensus", None), settings.pop("save_consensus", None)
    if authorities is not None:
        consensus = await tab_consensus(authorities, provider, bytes(cached) if cached is not None else None,
                                        save_consensus)
    node = await BrowserNode.start(bytes(saved) if saved is not None else None, relay=relay,
                                   descriptor_lifetime=lifetime, provider=provider, directory=consensus)
    # A tab joining again after disconnect(): its new descriptor must be newer than the one it left
    node._published = int(settings.pop("published_after", 0))
    node.driver.node.padding_policy = padding
    node.driver.node.setup_padding = SetupSpec()  # as a native client's default (zmesh.setuppad)
    guards = tab_guards(bytes(saved_guards) if saved_guards is not None else None, save_guards)
    if consensus is not None:
        guards.eligible = consensus.is_guard
    vpn = MeshVPN(node.driver, node.directory.live, refresh=node.directory.refresh if consensus is None
                  else consensus.relays, guards=guards, tls=tls,
                  descriptors=page_descriptors(node.provider), **settings)
    rtc = rtc_options(ice, vpn.options.enable_fec)
    tab = TabMesh(node, vpn, rtc, events)
    tab.destination = destination
    node.dialer.mode = lambda: vpn.options.transport
    if consensus is None:
        await node.directory.refresh()
    else:  # refused, not relays from elsewhere: a MeshError CONSENSUS_REFUSED naming the missing signatures
        try:
            await consensus.relays()
        except BaseException:
            await node.close()
            raise
        node._tasks.spawn(keep_fresh(consensus))
    if vpn.options.transport != "websocket":
        try:
            await node.start_webrtc(rtc)
        except (TransportError, ProtocolError) as exc:
            if vpn.options.transport == "webrtc":
                raise
            log.warning("no WebRTC in this tab (links use WebSocket): %s", exc)
    if relay:
        await node.offer_relay()
    try:
        await vpn.connect(destination)
    except BaseException:
        await tab.disconnect()  # no circuit: leave nothing relaying or signalling behind
        raise
    return tab
