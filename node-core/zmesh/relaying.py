"""A relay's side of someone else's circuit: answering CREATE (through the fair handshake queue of
``zmesh.admission``), EXTEND to the next hop, and forwarding cells both ways (docs/protocol.md §4–6).

``RelayRole`` is one part of ``node.Node``. A relay circuit moves through ``circuit.RelayState``:
AWAITING_CREATE → HANDSHAKE_QUEUED → OPEN (the last hop) → EDGE (streams: see ``zmesh.edge``) or
EXTENDING → FORWARDING. What it accepts in each state is in ``zmesh.acceptance``.
"""

from __future__ import annotations

import logging

from .cells import (
    BODY_SIZE,
    FLAG_MORE,
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
    relay_cells,
    split_bodies,
)
from .circuit import RelayCircuit, RelayState, Side
from .crypto.provider import KEY_SIZE
from .errors import CryptoError, ProtocolError
from .handshake import CREATE_SIZE, CREATED_SIZE, create_key_id, server_respond
from .identity import PeerId
from .link import LinkRole
from .links import INITIATOR_BIT, CircuitFailure
from .relaycrypto import HopCrypto, relay_backward, relay_forward

log = logging.getLogger(__name__)


class RelayRole:
    """Circuits through this node (the part of ``Node`` that relays)."""

    # ------------------------------------------------------------------ CREATE

    async def _on_create(self, link_id: int, cell: Cell) -> None:
        """A CREATE piece for a circuit id this link has not used: maybe a new relay circuit."""
        link = self._links[link_id]
        if not cell.flags & FLAG_MORE:
            # Every CREATE payload spans two cells (CREATE_SIZE > BODY_SIZE): a lone last piece
            # belongs to a CREATE refused already, so it gets no second DESTROY.
            self.metrics["cells_unknown_circuit"] += 1
            return
        peer_half = bool(cell.circ_id & INITIATOR_BIT) != link.initiator
        full = (len(link.circuits) >= self.limits.max_circuits_per_link
                or len(self._circuits) >= self.limits.max_circuits)
        # On a client link this node answers like a node that relays nothing: a CREATED there
        # (keyed to this node's onion key) would tell the first hop of its own circuits who it is.
        if not self.accept_circuits or link.role is not LinkRole.RELAY or not peer_half or full:
            self.metrics["create_refused"] += 1
            self.metrics["create_refused_full"] += full
            self._enqueue(link_id, 0, [encode_cell(CellCommand.DESTROY, cell.circ_id,
                                                   bytes([DestroyReason.RESOURCE_LIMIT]))])
            return
        circ = RelayCircuit(self._new_handle(), link_id, cell.circ_id, link.peer)
        log.debug("relaying a circuit from link %d (%s)", link_id,
                  f"peer {link.peer.text}" if link.peer else "its dialer proved nothing")
        self._circuits[circ.handle] = circ
        self._deadlines[circ.handle] = self.clock() + self.limits.build_timeout
        self._add_route(link_id, cell.circ_id, circ, Side.PREV)
        await self._guarded(circ, self._on_create_piece(circ, cell))

    async def _on_create_piece(self, circ: RelayCircuit, cell: Cell) -> None:
        payload = circ.create.add(cell.payload, cell.flags)
        if payload is None:
            return
        if not self._handshakes.add(circ.prev_link, (circ, payload), self.clock()):
            self.metrics["handshakes_refused_queue_full"] += 1
            raise CircuitFailure(DestroyReason.RESOURCE_LIMIT, "too many CREATEs waiting on this link")
        circ.state = RelayState.HANDSHAKE_QUEUED

    async def _run_handshakes(self) -> None:
        """Answer the CREATEs whose turn has come (zmesh.admission); refuse those that waited too long."""
        now = self.clock()
        for circ, _ in self._handshakes.expired(now):
            if circ.handle in self._circuits:
                self.metrics["handshakes_expired"] += 1
                await self._destroy(circ, DestroyReason.RESOURCE_LIMIT)
        while (ready := self._handshakes.next_ready(now)) is not None:
            circ, payload = ready
            if circ.handle in self._circuits:
                await self._guarded(circ, self._answer_create(circ, payload))

    async def _answer_create(self, circ: RelayCircuit, payload: bytes) -> None:
        if circ.state != RelayState.HANDSHAKE_QUEUED:  # a second CREATE sent while the first waited its turn
            raise ProtocolError("CREATE on a circuit that has answered one")
        self.metrics["handshakes"] += 1  # a turn of the handshake queue, whatever its outcome
        onion = self.onion_ring.find(create_key_id(payload))
        if onion is None:
            if payload[:KEY_SIZE] != self.identity.peer_id.key:
                raise CryptoError("CREATE is addressed to another relay")
            self.metrics["create_refused_onion_key"] += 1
            raise CircuitFailure(DestroyReason.ONION_KEY_OUTDATED, "CREATE for an onion key this relay no longer holds")
        reply, keys = await server_respond(self.provider, self.identity, payload, onion=onion)
        circ.hop = HopCrypto(self.provider, keys)
        circ.state = RelayState.OPEN
        self._deadlines.pop(circ.handle, None)
        self._enqueue(circ.prev_link, circ.handle,
                      [encode_cell(CellCommand.CREATED, circ.prev_circ, piece, flags)
                       for piece, flags in fragments(reply, BODY_SIZE)])
        self.metrics["circuits_relayed"] += 1

    # ------------------------------------------------------------------ EXTEND

    async def _on_extend(self, circ: RelayCircuit, msg: RelayMessage) -> None:
        if msg.stream_id:
            raise ProtocolError("EXTEND on a stream")
        payload = circ.extend.add(msg.data, msg.flags)
        if payload is None:
            return
        if len(payload) != KEY_SIZE + CREATE_SIZE:
            raise ProtocolError("EXTEND payload has the wrong size")
        target = PeerId(payload[:KEY_SIZE])
        if target == self.identity.peer_id or target == circ.prev_peer:
            raise ProtocolError("EXTEND to this relay or back to the previous hop")
        circ.state, circ.extend_payload = RelayState.EXTENDING, payload[KEY_SIZE:]
        self._deadlines[circ.handle] = self.clock() + self.limits.build_timeout
        await self._when_linked(circ, target)

    async def _start_extend(self, circ: RelayCircuit, link_id: int, circ_id: int) -> None:
        """The link to the next hop is up: send it the client's CREATE."""
        circ.next_link, circ.next_circ = link_id, circ_id
        self._add_route(link_id, circ_id, circ, Side.NEXT)
        self._enqueue(link_id, circ.handle, [encode_cell(CellCommand.CREATE, circ_id, piece, flags)
                                             for piece, flags in fragments(circ.extend_payload, BODY_SIZE)])

    async def _on_next_created(self, circ: RelayCircuit, cell: Cell) -> None:
        reply = circ.created.add(cell.payload, cell.flags)
        if reply is None:
            return
        if len(reply) != CREATED_SIZE:
            raise ProtocolError("CREATED payload has the wrong size")
        circ.state, circ.extend_payload = RelayState.FORWARDING, b""
        self._deadlines.pop(circ.handle, None)
        await self._send_edge(circ, [encode_relay_body(RelayCommand.EXTENDED, 0, piece, flags)
                                     for piece, flags in fragments(reply, RELAY_DATA_SIZE)])

    # ------------------------------------------------------------------ forwarding

    async def _on_backward_cells(self, circ: RelayCircuit, bodies: list[bytes]) -> None:
        data = await relay_backward(circ.hop, bodies)
        self._enqueue(circ.prev_link, circ.handle, relay_cells(circ.prev_circ, split_bodies(data)))
        self.metrics["cells_relayed"] += len(bodies)

    async def _on_forward_cells(self, circ: RelayCircuit, bodies: list[bytes]) -> None:
        onward: list[bytes] = []
        for mine, body in await relay_forward(circ.hop, bodies):
            if mine:
                self._flush_onward(circ, onward)
                await self._dispatch(circ, parse_relay_body(body))
                if circ.handle not in self._circuits:
                    return
            elif circ.next_circ:
                onward.append(body)
            else:
                raise CircuitFailure(DestroyReason.TAMPERED, "forward cell recognised by no hop")
        self._flush_onward(circ, onward)

    def _flush_onward(self, circ: RelayCircuit, onward: list[bytes]) -> None:
        if onward:
            self._enqueue(circ.next_link, circ.handle, relay_cells(circ.next_circ, onward))
            self.metrics["cells_relayed"] += len(onward)
            onward.clear()
