"""``MeshVPN``: the application API, the Python twin of ``web/meshvpn.js``.

    vpn = MeshVPN(driver, directory, hops=3)
    await vpn.connect()                          # a circuit to an exit
    stream = await vpn.open_stream("example.org", 80)
    await vpn.connect(destination=peer_id)       # a circuit whose last hop is that node
    await vpn.send(b"hello"); reply = await vpn.receive()
    stream = await vpn.open_stream("<base32>.mesh", 80)   # an onion service (needs ``descriptors``)
    address = await vpn.host(service_keys)       # this node as an onion service: messages to it ...
    await vpn.connect(destination=address)       # ... and from another node, by ``.mesh`` address

An exit circuit takes new streams for ``CircuitPolicy.max_dirtiness`` seconds (10 min) after its
first, then ``open_stream`` moves on to a fresh one, as ``zmesh client`` does (``docs/control.md``).

Messages to a destination travel on a stream to the destination's message service (empty host,
port ``MESSAGE_PORT``), each framed as a 4-byte big-endian length and the bytes. ``send_split`` sends
one as k-of-n shares over disjoint circuits to its share service instead (``zmesh.aio.split``). The node wiring
(links, directory) is supplied by the caller: memory links in tests, real transports natively and
in the browser.
"""

from __future__ import annotations

import asyncio
import inspect
import struct
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import fields
from typing import Any

from ..cells import EndReason
from ..circuit_plan import CircuitPolicy
from ..descriptor import Descriptor
from ..errors import ConfigError, InvalidState, ProtocolError, ZmeshError
from ..guards import GuardManager
from ..identity import PeerId
from ..onion.address import is_mesh_name
from ..onion.introduce import ServiceKeys
from ..path import PathSelector, listens
from .building import BuildPolicy, build_around_failures
from .driver import IncomingStream, MeshStream, NodeDriver
from .healing import CircuitKeeper
from .http import HttpResponse, http_get, parse_url
from .multipath import MultipathStream
from .multipath_link import LegPartners
from .onion import DescriptorDirectory, OnionClient, OnionLimits, OnionService
from .onion.common import StreamHandler
from .options import PATH_OPTIONS, MeshOptions
from .split import SHARE_PORT, ShareService, send_split
from .tasks import OwnedTasks
from .tls import TlsConnector, open_tls
from .transport import count_by_transport

MESSAGE_PORT = 1
MAX_MESSAGE_SIZE = 1 << 20
_LENGTH = struct.Struct(">I")
EVENTS = ("message", "connect", "disconnect", "error")
class MeshVPN:
    """Connect to the mesh, open streams through exits, exchange messages with other nodes.
    With ``guards``, circuits enter at its entry guards unless an ``entry`` is chosen or the
    destination is reached through its relay (that relay is then the path's fixed second-to-last hop)."""

    def __init__(self, driver: NodeDriver, directory: Callable[[], Iterable[Descriptor]], *,
                 refresh: Callable[[], Awaitable[object]] | None = None,
                 selector: PathSelector | None = None, build_policy: BuildPolicy | None = None,
                 guards: GuardManager | None = None, circuit_policy: CircuitPolicy | None = None,
                 descriptors: DescriptorDirectory | None = None,
                 clock: Callable[[], float] = time.monotonic, inbox_size: int = 256,
                 tls: TlsConnector | None = None, **options: Any) -> None:
        """``directory()`` lists the relays; ``refresh()``, if given, refetches that list (once, after
        a build failed: see ``zmesh.aio.building``). ``descriptors``: where onion-service descriptors
        are looked up, for ``.mesh`` names (``zmesh.aio.onion``). ``tls`` makes the client sessions of
        ``https://`` fetches (``zmesh.aio.tls``); without it only ``http://`` can be fetched."""
        self.driver = driver
        self.circuit_policy = circuit_policy or CircuitPolicy()  # its max_dirtiness; no pool here
        self._clock = clock
        self.directory = directory
        self.refresh = refresh
        self.selector = selector or PathSelector()
        self.guards = guards
        self.build_policy = build_policy or BuildPolicy()
        self.tls = tls
        self.options = MeshOptions().updated(**options)
        self._handlers: dict[str, list[Callable[[Any], Any]]] = {name: [] for name in EVENTS}
        self._inbox: asyncio.Queue[bytes] = asyncio.Queue(inbox_size)
        self._circuit: int | None = None
        self._path: list[PeerId] = []  # the current circuit's hops, kept for when it dies
        self._destination: PeerId | str | None = None
        self.keeper = CircuitKeeper(driver, lambda: self._circuit, lambda: self._path, self._reestablish,
                                    self._emit, clock=clock)
        # awaited with (old, new) options by apply_config before the circuit is rebuilt: the tab adapts its links
        self.on_config: Callable[[MeshOptions, MeshOptions], Awaitable[None]] | None = None
        self._dirty_since: float | None = None  # the current circuit's first stream (circuit_policy)
        self._retiring: set[int] = set()  # replaced circuits, closed once their streams have ended
        self._message_stream: MeshStream | None = None
        self._streams: list[MeshStream | MultipathStream] = []
        self._retired_in = self._retired_out = 0  # bytes of streams no longer open
        self._readers = OwnedTasks("MeshVPN message readers")
        self._descriptors, self._service = descriptors, None
        self._onion = None if descriptors is None else OnionClient(driver, self._relays, descriptors,
                                                                   selector=self.selector, guards=guards,
                                                                   clock=clock)
        self.shares = ShareService(self._deliver)  # split messages sent to this node (zmesh.aio.split)
        driver.stream_handler = self._serve_messages_then(driver.stream_handler)
        self._partners = LegPartners(driver, self._choose_leg, self.selector, build_policy=self.build_policy,
                                     first_hop=guards.first_hop if guards is not None else None)

    @property
    def peer_id(self) -> PeerId:
        return self.driver.node.identity.peer_id

    @property
    def connected(self) -> bool:
        return self._circuit is not None and self._circuit in self.driver.node.circuits()

    @property
    def state(self) -> str:
        """"connected", "reconnecting" (the circuit died and is being rebuilt) or "disconnected"."""
        return "reconnecting" if self.keeper.healing else "connected" if self.connected else "disconnected"

    def on(self, event: str, callback: Callable[[Any], Any]) -> None:
        if event not in EVENTS:
            raise ConfigError(f"unknown event {event!r}; use one of {EVENTS}")
        self._handlers[event].append(callback)

    async def connect(self, destination: PeerId | str | None = None, **options: Any) -> None:
        """Build a circuit (to an exit, or ending at ``destination``) and become connected. On a
        connected MeshVPN with the same destination this does nothing but apply ``options`` (as
        ``apply_config``); while a lost circuit is being rebuilt it waits for the rebuild."""
        if options:
            await self.apply_config(**options)
        if self.keeper.healing:
            await self.keeper.ready()
        if self.connected and destination == self._destination:
            return
        if self._circuit is not None:
            await self.disconnect()
        await self._establish(destination)

    async def _establish(self, destination: PeerId | str | None) -> None:
        """Build and install a circuit, then emit ``connect`` (``error`` and raise if none could be built).
        A circuit it replaces is closed once its streams have ended."""
        self.keeper.installing()
        try:
            message_stream = None
            if isinstance(destination, str) and is_mesh_name(destination):
                circuit, path, message_stream = await self._connect_onion(destination)
            else:
                circuit, path = await self._build(destination)
                if destination is not None:
                    message_stream = await self.driver.open_stream(circuit, "", MESSAGE_PORT)
            if message_stream is not None:
                self._readers.spawn(self._read_messages(message_stream))
        except ZmeshError as exc:
            await self._emit("error", exc)
            raise
        if self._circuit is not None and self._circuit in self.driver.node.circuits():
            self._retiring.add(self._circuit)
        self._circuit, self._path, self._destination = circuit, [p.peer_id for p in path], destination
        self._message_stream = message_stream
        await self._close_retired()
        await self._emit("connect", {"circuit": circuit, "path": [p.peer_id.text for p in path]})

    async def _reestablish(self) -> None:
        await self._establish(self._destination)

    async def _connect_onion(self, address: str) -> tuple[int, list[Descriptor], MeshStream]:
        """The message stream to an onion service, over a rendezvous circuit: neither end learns
        where the other is, and the path reported is only this side's three relays."""
        stream = await self._onion_client().open_stream(address, MESSAGE_PORT)
        circuit = stream.circuit
        ids = next((c["path"] for c in self.driver.node.onion_circuits() if c["id"] == str(circuit)), [])
        relays = {r.peer_id.text: r for r in self.directory()}
        return circuit, [relays[i] for i in ids if i in relays], stream

    async def host(self, keys: ServiceKeys, *, on_stream: StreamHandler | None = None,
                   limits: OnionLimits | None = None) -> str:
        """Host an onion service with ``keys`` on this node and return its ``.mesh`` address. Message
        streams to it arrive as messages (``receive``, ``on('message')``), whoever sent them; a
        stream to any other port goes to ``on_stream``, or is refused (``SERVICE_PORT``)."""
        if self._descriptors is None:
            raise ConfigError("this MeshVPN has no onion descriptor directory: hosting needs one")
        if self._service is not None:
            raise InvalidState("this MeshVPN already hosts an onion service")

        async def refuse(request: IncomingStream) -> None:
            await request.reject(EndReason.SERVICE_PORT)

        self._service = OnionService(self.driver, keys, self._relays, self._descriptors,
                                     self._serve_messages_then(on_stream or refuse),
                                     selector=self.selector, guards=self.guards, limits=limits, clock=self._clock)
        return await self._service.start()

    def _onion_client(self) -> OnionClient:
        if self._onion is None:
            raise ConfigError("this MeshVPN has no onion descriptor directory: .mesh names need one")
        return self._onion

    async def _build(self, destination: PeerId | str | None) -> tuple[int, list[Descriptor]]:
        relays, target, entry = self._listing(destination)
        guards = self.guards if entry is None and (target is None or listens(target)) else None

        async def choose(avoid: frozenset[PeerId], refetch: bool) -> list[Descriptor]:
            nonlocal relays, target, entry
            if refetch and self.refresh is not None:
                await self.refresh()
                relays, target, entry = self._listing(destination)
            path = {"hops": self.options.hops, "country": self.options.country, "exit_kind": self.options.exit,
                    "destination": target, "exclude": avoid | {self.peer_id} | self.keeper.healer.avoid,
                    "exclude_countries": self.options.exclude_countries}
            if guards is not None:
                return guards.select(self.selector, relays, **path)
            return self.selector.select(relays, entry=entry, **path)

        pinned = {hop.peer_id for hop in (target, entry) if hop is not None}
        built = await build_around_failures(self.driver, choose, self.selector, policy=self.build_policy,
                                            pinned=pinned, first_hop=None if guards is None else guards.first_hop)
        self._dirty_since = None
        return built

    async def disconnect(self) -> None:
        """Destroy the circuits and stop rebuilding; emits ``disconnect`` if a circuit was in use."""
        circuit, self._circuit, self._message_stream = self._circuit, None, None
        await self.keeper.cancel()
        retiring, self._retiring = self._retiring, set()
        for old in retiring:
            await self.driver.destroy_circuit(old)
        if circuit is not None:
            await self.driver.destroy_circuit(circuit)
            await self._partners.forget(circuit)
            await self._emit("disconnect", {"circuit": circuit, "reason": "REQUESTED", "failed_hop": None,
                                            "rebuilding": False})

    async def open_stream(self, host: str, port: int, *, multipath: bool | None = None) -> MeshStream | MultipathStream:
        """A TCP-like stream to ``host:port``, resolved and connected by the exit; with ``multipath``
        (default: the ``multipath`` option) split over the circuit and a second one to the same exit
        (``zmesh.aio.multipath``; a plain stream if no such second path exists). An exit circuit
        that has carried streams for ``circuit_policy.max_dirtiness`` seconds is replaced first (the
        old one is closed once its streams have ended), so what a user does over hours is not
        linkable at one exit. A ``*.mesh`` host is an onion service: reached by rendezvous, never
        through an exit (and without ``connect()``)."""
        if is_mesh_name(host):
            stream = await self._onion_client().open_stream(host, port)
            self._streams.append(stream)
            return stream
        circuit = await self._ready_circuit()
        if self._message_stream is None and self.circuit_policy.past_dirtiness(self._dirty_since, self._clock()):
            self._circuit, path = await self._build(None)
            self._path = [p.peer_id for p in path]
            self._retiring.add(circuit)
            circuit = self._circuit
        if self._dirty_since is None:
            self._dirty_since = self._clock()
        if self.options.multipath if multipath is None else multipath:
            stream = await self._partners.open(circuit, self.driver.node.circuit_path(circuit), host, port)
        else:
            stream = await self.driver.open_stream(circuit, host, port)
        self._streams.append(stream)
        await self._close_retired()
        return stream

    async def fetch(self, url: str) -> HttpResponse:
        """GET an ``http://`` or ``https://`` URL through the circuit's exit; the response has
        ``status``, ``headers`` and ``body``. For ``https://`` TLS runs here, end to end with the
        server (its certificate checked by ``tls``): the exit relays only ciphertext."""
        scheme, host, port, path = parse_url(url)
        if scheme == "https" and self.tls is None:
            raise ConfigError("https:// needs a TLS connector (MeshVPN(tls=...)); this node has none")
        stream = await self.open_stream(host, port)
        try:
            secured = await open_tls(stream, self.tls, host) if scheme == "https" and self.tls else stream
            try:
                return await http_get(secured, host, path)
            finally:
                await secured.close()
        finally:
            await stream.close()
            await self._close_retired()

    async def send(self, data: bytes) -> None:
        """Send one message to the connected destination."""
        if self._message_stream is None:
            raise InvalidState("send() needs connect(destination=...) first")
        if len(data) > MAX_MESSAGE_SIZE:
            raise ConfigError(f"a message is at most {MAX_MESSAGE_SIZE} bytes")
        await self._message_stream.write(_LENGTH.pack(len(data)) + bytes(data))

    async def send_split(self, destination: PeerId | str, data: bytes, k: int = 2, n: int = 3,
                         ttl: float = 300) -> int:
        """Send ``data`` as ``n`` shares over pairwise disjoint circuits to ``destination``, any ``k``
        of which rebuild it within ``ttl`` s (``zmesh.aio.split``); returns how many shares arrived."""
        return await send_split(self, destination, data, k=k, n=n, ttl=ttl)

    async def receive(self) -> bytes:
        """The next message any node sent to this one (in order per sender)."""
        return await self._inbox.get()

    def get_stats(self) -> dict[str, Any]:
        streams = self._streams + ([self._message_stream] if self._message_stream else [])
        return {
            "peer_id": self.peer_id.text,
            "connected": self.connected,
            "state": self.state,
            "circuit": self._circuit,
            "path": [p.text for p in self.driver.node.circuit_path(self._circuit)] if self.connected else [],
            "guards": [p.text for p in self.guards.primary()] if self.guards is not None else [],
            "bytes_in": self._retired_in + sum(s.bytes_in for s in streams),
            "bytes_out": self._retired_out + sum(s.bytes_out for s in streams),
            "links": len(self.driver.links()),
            "transport": {"open_links": count_by_transport(self.driver.links().values()),
                          **getattr(self.driver.dialer, "stats", {})},
            "metrics": dict(self.driver.node.metrics),
            "options": {f.name: getattr(self.options, f.name) for f in fields(self.options)},
        }

    def update_config(self, **options: Any) -> None:
        """Change options; they apply from the next ``connect`` (``apply_config`` applies them now)."""
        self.options = self.options.updated(**options)

    async def apply_config(self, **options: Any) -> None:
        """Validate and apply options to the running node: ``on_config`` adapts it (a tab's links),
        then, if connected and a ``PATH_OPTIONS`` value changed, the circuit is rebuilt by them.
        Returns once applied; streams asked for meanwhile wait for the new circuit. If no circuit
        can be built, the old one is kept where it still stands, and the error is raised."""
        old, new = self.options, self.options.updated(**options)
        rebuild = self.connected and any(getattr(old, name) != getattr(new, name) for name in PATH_OPTIONS)
        self.options = new
        previous = self._circuit if rebuild else None
        if rebuild:
            self.keeper.hold()
            self._circuit = None  # its loss (on_config may close its links) is not one to heal
        try:
            if self.on_config is not None:
                await self.on_config(old, new)
            if rebuild:
                try:
                    await self._establish(self._destination)
                finally:
                    if self._circuit is None and previous in self.driver.node.circuits():
                        self._circuit = previous
                if previous is not None:
                    self._retiring.add(previous)
                    await self._close_retired()
        finally:
            if rebuild:
                self.keeper.release()

    # ---------------------------------------------------------------- internals

    async def _relays(self, refresh: bool) -> list[Descriptor]:
        if refresh and self.refresh is not None:
            await self.refresh()
        return list(self.directory())

    def _listing(self, destination: PeerId | str | None
                 ) -> tuple[list[Descriptor], Descriptor | None, Descriptor | None]:
        """The relays, and the destination's and chosen entry's descriptors among them."""
        relays = list(self.directory())
        target = None if destination is None else self._find(relays, destination, "destination")
        entry = None if self.options.entry is None else self._find(relays, self.options.entry, "entry")
        return relays, target, entry

    async def _choose_leg(self, exit_peer: PeerId, avoid: frozenset[PeerId], refetch: bool) -> list[Descriptor]:
        """A multipath stream's second leg: a path to ``exit_peer`` through none of ``avoid``."""
        if refetch and self.refresh is not None:
            await self.refresh()
        relays = list(self.directory())
        path = {"hops": self.options.hops, "destination": self._find(relays, exit_peer, "multipath exit"),
                "exclude": avoid | {self.peer_id}, "exclude_countries": self.options.exclude_countries}
        if self.guards is not None and self.options.entry is None:
            return self.guards.select(self.selector, relays, **path)
        return self.selector.select(relays, **path)

    @staticmethod
    def _find(relays: list[Descriptor], peer: PeerId | str, what: str) -> Descriptor:
        peer = PeerId.from_text(peer) if isinstance(peer, str) else peer
        found = next((r for r in relays if r.peer_id == peer), None)
        if found is None:
            raise ConfigError(f"{what} {peer.short()}… is not in the directory")
        return found

    async def _ready_circuit(self) -> int:
        """The circuit to use, once any rebuild under way is over."""
        await self.keeper.ready()
        if not self.connected:
            raise InvalidState("not connected: call connect() first")
        assert self._circuit is not None
        return self._circuit

    async def _close_retired(self) -> None:
        """Forget streams that ended (keeping their byte counts) and close replaced circuits that
        carry none any more."""
        for stream in [s for s in self._streams if s.ended is not None]:
            self._streams.remove(stream)
            self._retired_in += stream.bytes_in
            self._retired_out += stream.bytes_out
        busy = {s.circuit for s in self._streams}
        for old in [c for c in self._retiring if c not in busy]:
            self._retiring.discard(old)
            await self.driver.destroy_circuit(old)

    def _serve_messages_then(self, fallback: Callable | None) -> Callable:
        async def handler(request: IncomingStream) -> None:
            if request.host == "" and request.port == MESSAGE_PORT:
                self._readers.spawn(self._read_messages(await request.accept()))
            elif request.host == "" and request.port == SHARE_PORT:
                self._readers.spawn(self.shares.serve(request))
            elif fallback is not None:
                await fallback(request)
            else:
                await request.reject(EndReason.EXIT_POLICY)
        return handler

    async def _read_messages(self, stream: MeshStream) -> None:
        try:
            while header := await stream.read_exactly(_LENGTH.size):
                (size,) = _LENGTH.unpack(header) if len(header) == _LENGTH.size else (-1,)
                if not 0 <= size <= MAX_MESSAGE_SIZE:
                    raise ProtocolError("message frame is truncated or larger than MAX_MESSAGE_SIZE")
                message = await stream.read_exactly(size)
                if len(message) != size:
                    raise ProtocolError("message stream ended inside a message")
                await self._deliver(message)
        except ZmeshError as exc:
            await stream.close(EndReason.PROTOCOL)
            await self._emit("error", exc)

    async def _deliver(self, message: bytes) -> None:
        await self._inbox.put(message)
        await self._emit("message", message)

    async def _emit(self, event: str, value: Any) -> None:
        for callback in self._handlers[event]:
            result = callback(value)
            if inspect.isawaitable(result):
                await result

    async def close(self) -> None:
        await self.disconnect()
        if self._service is not None:
            await self._service.close()
        await self._readers.close()
