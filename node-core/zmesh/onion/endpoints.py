"""The two ends of an onion-service connection: what the service and the client do with their own
circuits (docs/onion-services.md, "Introduction and rendezvous").

``OnionEndpointRole`` is one part of ``node.Node``. Each operation takes a built, unused circuit
(``BuildState.OPEN``, purpose ``general``) whose last hop is the point it names, and moves it on::

    service: establish_intro   OPEN → INTRO            INTRO_ESTABLISHED, then INTRODUCE2s
    client:  introduce         OPEN → INTRODUCING      INTRODUCE_ACK → OPEN (the caller closes it)
    client:  establish_rendezvous OPEN → REND_WAITING  RENDEZVOUS_ESTABLISHED, RENDEZVOUS2 → OPEN
    service: join_rendezvous   OPEN → SERVICE_JOINED   BEGINs from the client

On RENDEZVOUS2 (client) and in ``join_rendezvous`` (service) the circuit gains a virtual fourth hop
with the end-to-end keys: from then on ``_send_edge`` onion-encrypts for it, and the hops before it
(the three relays) see only ciphertext. Streams then work as on any circuit, the service playing
the edge that takes BEGINs (``EdgeRole._request_stream``).
"""

from __future__ import annotations

from typing import Any

from ..cells import RELAY_DATA_SIZE, RelayCommand, RelayMessage, encode_relay_body, fragments
from ..circuit import BuildState, OriginCircuit, Purpose
from ..errors import InvalidState, ProtocolError
from ..events import IntroduceAcked, IntroduceReceived, IntroEstablished, RendezvousEstablished, RendezvousJoined
from ..handshake import ClientHandshake, HopKeys
from ..relaycrypto import HopCrypto
from .introduce import finish_rendezvous
from .wire import (
    COOKIE_SIZE,
    MAX_INTRODUCE_SIZE,
    establish_intro_message,
    expect_empty,
    parse_introduce,
    parse_introduce_ack,
)


class OnionEndpointRole:
    """Onion-service operations on this node's own circuits (see the module doc)."""

    def circuit_purpose(self, circuit: int) -> Purpose:
        return self._origin(circuit, open_only=False).purpose

    def onion_circuits(self) -> list[dict[str, Any]]:
        """This node's onion-service circuits as the control port lists them (docs/control.md); the
        path names the three relays (a joined circuit's fourth hop, the other end, has no PeerId)."""
        now = self.clock()
        return [{"id": str(c.handle), "purpose": c.purpose.value, "path": [r.peer_id.text for r in c.path],
                 "isolation": None, "age_s": round(now - c.started, 3), "streams": len(c.edge.streams)}
                for c in self._circuits.values()
                if isinstance(c, OriginCircuit) and c.purpose is not Purpose.GENERAL]

    async def establish_intro(self, circuit: int, auth_private: bytes, auth_key: bytes) -> None:
        """Service: make the last hop an intro point for ``auth_key``; ``IntroEstablished`` follows."""
        circ = self._unused(circuit, Purpose.INTRO, BuildState.INTRO)
        binding = circ.hops[-1].binding
        signature = await self.provider.ed25519_sign(auth_private, establish_intro_message(auth_key, binding))
        await self._send_edge(circ, [encode_relay_body(RelayCommand.ESTABLISH_INTRO, 0, auth_key + signature)])

    async def introduce(self, circuit: int, auth_key: bytes, encrypted: bytes) -> None:
        """Client: send INTRODUCE1 through the last hop (an intro point); ``IntroduceAcked`` follows."""
        payload = auth_key + encrypted
        if len(auth_key) != 32 or not encrypted or len(payload) > MAX_INTRODUCE_SIZE:
            raise InvalidState(f"an introduction is a 32-byte auth key and 1..{MAX_INTRODUCE_SIZE - 32} bytes")
        circ = self._unused(circuit, Purpose.INTRODUCING, BuildState.INTRODUCING)
        await self._send_edge(circ, [encode_relay_body(RelayCommand.INTRODUCE1, 0, piece, flags)
                                     for piece, flags in fragments(payload, RELAY_DATA_SIZE)])

    async def establish_rendezvous(self, circuit: int, cookie: bytes) -> None:
        """Client: wait at the last hop with ``cookie``; ``RendezvousEstablished`` follows."""
        if len(cookie) != COOKIE_SIZE:
            raise InvalidState(f"a rendezvous cookie is {COOKIE_SIZE} bytes")
        circ = self._unused(circuit, Purpose.RENDEZVOUS, BuildState.REND_WAITING)
        await self._send_edge(circ, [encode_relay_body(RelayCommand.ESTABLISH_RENDEZVOUS, 0, cookie)])

    async def await_rendezvous(self, circuit: int, handshake: ClientHandshake) -> None:
        """Client: the introduction about to be sent carries ``handshake`` (``seal_introduction``);
        the service's RENDEZVOUS2 must complete it (``RendezvousJoined``). A retry through another
        intro point replaces it."""
        circ = self._origin(circuit, open_only=False)
        if circ.state is not BuildState.REND_WAITING:
            raise InvalidState("await_rendezvous needs a circuit waiting at its rendezvous point")
        circ.handshake = handshake

    async def join_rendezvous(self, circuit: int, cookie: bytes, reply: bytes, keys: HopKeys) -> None:
        """Service: answer a client at the last hop (its rendezvous point) and add the virtual hop."""
        circ = self._unused(circuit, Purpose.SERVICE_RENDEZVOUS, BuildState.SERVICE_JOINED)
        await self._send_edge(circ, [encode_relay_body(RelayCommand.RENDEZVOUS1, 0, cookie + reply)])
        circ.hops.append(HopCrypto(self.provider, keys))

    def _unused(self, circuit: int, purpose: Purpose, state: BuildState) -> OriginCircuit:
        """An open general circuit with no streams, now given ``purpose`` and ``state``."""
        circ = self._origin(circuit)
        if circ.purpose is not Purpose.GENERAL or circ.edge.streams:
            raise InvalidState("an onion-service circuit must be built for it and carry no streams")
        circ.purpose, circ.state = purpose, state
        self._cc_fixed(circ)
        return circ

    # ------------------------------------------------------------------ messages (zmesh.acceptance)

    async def _on_intro_established(self, circ: OriginCircuit, msg: RelayMessage) -> None:
        expect_empty(msg.data, "INTRO_ESTABLISHED")
        self._events.append(IntroEstablished(circ.handle))

    async def _on_introduce2(self, circ: OriginCircuit, msg: RelayMessage) -> None:
        payload = circ.reply.add(msg.data, msg.flags)  # idle since the circuit was built
        if payload is None:
            return
        if len(payload) > MAX_INTRODUCE_SIZE:
            raise ProtocolError("INTRODUCE2 is too long")
        auth_key, encrypted = parse_introduce(payload)
        self.metrics["introduce_received"] += 1
        self._events.append(IntroduceReceived(circ.handle, auth_key, encrypted))

    async def _on_introduce_ack(self, circ: OriginCircuit, msg: RelayMessage) -> None:
        status = parse_introduce_ack(msg.data)
        circ.state = BuildState.OPEN
        self._events.append(IntroduceAcked(circ.handle, status))

    async def _on_rendezvous_established(self, circ: OriginCircuit, msg: RelayMessage) -> None:
        expect_empty(msg.data, "RENDEZVOUS_ESTABLISHED")
        self._events.append(RendezvousEstablished(circ.handle))

    async def _on_rendezvous2(self, circ: OriginCircuit, msg: RelayMessage) -> None:
        if circ.handshake is None:
            raise ProtocolError("RENDEZVOUS2 before any introduction was sent")
        keys = await finish_rendezvous(self.provider, circ.handshake, msg.data)
        circ.hops.append(HopCrypto(self.provider, keys))
        circ.state, circ.handshake = BuildState.OPEN, None
        self.metrics["rendezvous_joined"] += 1
        self._events.append(RendezvousJoined(circ.handle))
