"""The client side of a circuit: building it hop by hop (CREATE, then EXTEND per hop), its hop keys,
and what a client accepts from its hops (docs/protocol.md §4–6).

``OriginRole`` is one part of ``node.Node``. What an origin circuit may receive in which state is
in ``zmesh.acceptance``; the handlers it names for origin circuits live here.
"""

from __future__ import annotations

from collections.abc import Sequence

from .acceptance import refuse
from .cells import (
    BODY_SIZE,
    RELAY_DATA_SIZE,
    Cell,
    CellCommand,
    DestroyReason,
    RelayCommand,
    RelayMessage,
    encode_cell,
    encode_relay_body,
    fragments,
    parse_relay_body,
)
from .circuit import MAX_HOPS, MIN_HOPS, BuildState, OriginCircuit, RelayInfo, Side, Stream, StreamState
from .errors import ConfigError, InvalidState, ProtocolError
from .events import CircuitBuilt, StreamConnected
from .handshake import client_finish, client_start
from .identity import PeerId
from .links import CircuitFailure
from .relaycrypto import HopCrypto, onion_decrypt
from .streams import format_target


class OriginRole:
    """Circuits this node builds and uses (the part of ``Node`` that is a client)."""

    async def build_circuit(self, path: Sequence[RelayInfo]) -> int:
        """Start building a circuit through ``path``; ``CircuitBuilt``/``CircuitClosed`` follows."""
        path = tuple(path)
        if not MIN_HOPS <= len(path) <= MAX_HOPS:
            raise ConfigError(f"hops must be {MIN_HOPS}..{MAX_HOPS}, got {len(path)}")
        ids = [relay.peer_id for relay in path]
        if len(set(ids)) != len(ids) or self.identity.peer_id in ids:
            raise ConfigError("a path must not contain the same peer twice, nor this node")
        now = self.clock()
        circ = OriginCircuit(self._new_handle(), path, now, now + self.limits.build_timeout)
        self._circuits[circ.handle] = circ
        self._deadlines[circ.handle] = circ.deadline
        self.metrics["circuits_started"] += 1
        await self._guarded(circ, self._when_linked(circ, path[0].peer_id))
        return circ.handle

    def circuit_path(self, circuit: int) -> tuple[PeerId, ...]:
        circ = self._origin(circuit, open_only=False)
        return tuple(relay.peer_id for relay in circ.path)

    async def open_stream(self, circuit: int, host: str, port: int) -> int:
        """Send BEGIN host:port on an open circuit; ``StreamConnected`` or ``StreamEnded`` follows."""
        circ = self._origin(circuit)
        payload = format_target(host, port)
        if len(circ.edge.streams) >= self.limits.max_streams_per_circuit:
            raise InvalidState("too many streams on this circuit; build another")
        stream_id = circ.next_stream_id
        while stream_id in circ.edge.streams:
            stream_id = stream_id % 0xFFFF + 1
        circ.next_stream_id = stream_id % 0xFFFF + 1
        circ.edge.streams[stream_id] = Stream(stream_id, StreamState.CONNECTING)
        await self._send_edge(circ, [encode_relay_body(RelayCommand.BEGIN, stream_id, payload)])
        return stream_id

    def _origin(self, circuit: int, open_only: bool = True) -> OriginCircuit:
        circ = self._circuits.get(circuit)
        if not isinstance(circ, OriginCircuit):
            raise InvalidState(f"no circuit {circuit} originates here (it may have been closed)")
        if open_only and circ.state != BuildState.OPEN:
            raise InvalidState("circuit is not built yet")
        return circ

    # ------------------------------------------------------------------ building

    async def _start_origin(self, circ: OriginCircuit, link_id: int, circ_id: int) -> None:
        """The link to the first hop is up: send it CREATE."""
        circ.link, circ.circ_id, circ.state = link_id, circ_id, BuildState.BUILDING
        self._add_route(link_id, circ_id, circ, Side.ORIGIN)
        circ.handshake = await client_start(self.provider, circ.path[0].peer_id, circ.path[0].onion_keys)
        self._enqueue(link_id, circ.handle, [encode_cell(CellCommand.CREATE, circ_id, piece, flags)
                                             for piece, flags in fragments(circ.handshake.create_payload(),
                                                                           BODY_SIZE)])

    async def _on_first_created(self, circ: OriginCircuit, cell: Cell) -> None:
        if circ.hops or circ.handshake is None:
            raise refuse(circ.role, circ.state, CellCommand.CREATED, " after the first hop answered")
        reply = circ.reply.add(cell.payload, cell.flags)
        if reply is not None:
            await self._hop_established(circ, reply)

    async def _on_extended(self, circ: OriginCircuit, msg: RelayMessage) -> None:
        reply = circ.reply.add(msg.data, msg.flags)
        if reply is not None:
            await self._hop_established(circ, reply)

    async def _hop_established(self, circ: OriginCircuit, reply: bytes) -> None:
        if circ.handshake is None:
            raise InvalidState("a hop answered an origin circuit that sent no handshake")
        keys = await client_finish(self.provider, circ.handshake, reply)
        circ.hops.append(HopCrypto(self.provider, keys))
        await self._cc_offer(circ)  # zmesh.negotiation: before anything else reaches the new hop
        await self._pad_offer(circ)  # zmesh.padnego: the first hop pads its side of the link
        await self._setup_offer(circ)  # zmesh.setuppad: both pad this circuit's setup
        if len(circ.hops) == len(circ.path):
            circ.state, circ.handshake = BuildState.OPEN, None
            self._deadlines.pop(circ.handle, None)
            elapsed = self.clock() - circ.started
            self.metrics["circuits_built"] += 1
            self.build_seconds.observe(elapsed)
            self._events.append(CircuitBuilt(circ.handle, tuple(r.peer_id for r in circ.path), elapsed))
            return
        relay = circ.path[len(circ.hops)]
        circ.handshake = await client_start(self.provider, relay.peer_id, relay.onion_keys)
        payload = relay.peer_id.key + circ.handshake.create_payload()
        await self._send_edge(circ, [encode_relay_body(RelayCommand.EXTEND, 0, piece, flags)
                                     for piece, flags in fragments(payload, RELAY_DATA_SIZE)])

    # ------------------------------------------------------------------ what comes back

    async def _on_origin_cells(self, circ: OriginCircuit, bodies: list[bytes]) -> None:
        if not circ.hops:
            raise ProtocolError("RELAY cell before the circuit's first hop answered")
        peeled = await onion_decrypt(circ.hops, b"".join(bodies))
        if peeled is None:
            raise CircuitFailure(DestroyReason.TAMPERED, "backward cell recognised by no hop")
        last = len(circ.hops) - 1
        for hop_index, body in peeled:
            msg = parse_relay_body(body)
            if hop_index != last and msg.command is RelayCommand.CC_ACCEPT:
                # a rendezvous point's answer, after the service's circuit gained its virtual hop
                await self._on_cc_accept(circ, msg, hop_index)
            else:
                await self._dispatch(circ, msg, inner=hop_index != last)
            if circ.handle not in self._circuits:
                return

    async def _on_connected(self, circ: OriginCircuit, msg: RelayMessage) -> None:
        stream = circ.edge.streams.get(msg.stream_id)
        if stream is None or stream.state != StreamState.CONNECTING:
            raise ProtocolError("CONNECTED for a stream that is not connecting")
        self._cc_settle(circ)
        stream.state, stream.flow = StreamState.OPEN, circ.edge.stream_flow()
        self._events.append(StreamConnected(circ.handle, msg.stream_id))
