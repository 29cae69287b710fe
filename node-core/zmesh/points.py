"""A relay as an onion service's introduction point or a client's rendezvous point (docs/onion-services.md,
"Introduction and rendezvous"; Tor's rend-spec-v3 §3–4).

``PointRole`` is one part of ``node.Node``. The last hop of a circuit in ``RelayState.OPEN`` may become:

- an **intro point** (ESTABLISH_INTRO): the service proves it holds a per-intro auth key by signing
  this circuit's ``HopCrypto.binding`` with it, so the signature is worthless on another circuit.
  ``_intro_points`` maps auth key → circuit; a newer circuit with the same key replaces the older.
  An INTRODUCE1 on any other circuit naming that key is forwarded down it as INTRODUCE2, spending one
  token of that intro point's bucket (``NodeLimits.introduce_rate``/``introduce_burst``): a flood
  through one intro point spends only that one's budget. The client gets an INTRODUCE_ACK.
- a **rendezvous point** (ESTABLISH_RENDEZVOUS): ``_rendezvous`` maps a 20-byte cookie → the
  client's circuit for ``NodeLimits.rendezvous_lifetime`` seconds. A RENDEZVOUS1 with that cookie on
  another circuit joins the two (RENDEZVOUS2 to the client); from then on every cell from one side
  not meant for this hop goes on down the other, under end-to-end keys this relay does not have.

Both maps have global bounds (``max_intro_points``, ``max_rendezvous_points``); each circuit holds
at most one entry (its state moves on). What this relay learns: that some service uses it (never
which: the auth key is per intro point), that some client waits here, and the volume and timing of
a joined pair.
"""

from __future__ import annotations

from dataclasses import dataclass

from .cells import (
    RELAY_DATA_SIZE,
    DestroyReason,
    RelayCommand,
    RelayMessage,
    encode_relay_body,
    fragments,
    parse_relay_body,
    relay_cells,
    split_bodies,
)
from .circuit import RelayCircuit, RelayState
from .errors import ProtocolError
from .links import CircuitFailure
from .onion.wire import (
    IntroduceStatus,
    establish_intro_message,
    parse_cookie,
    parse_establish_intro,
    parse_introduce,
    parse_rendezvous1,
)
from .relaycrypto import relay_backward, relay_forward


@dataclass(slots=True)
class _IntroPoint:
    circuit: int
    tokens: float
    refilled: float


class PointRole:
    """Intro and rendezvous points at this relay (the part of ``Node`` that is one)."""

    def _init_points(self) -> None:
        self._intro_points: dict[bytes, _IntroPoint] = {}
        self._rendezvous: dict[bytes, int] = {}

    def point_counts(self) -> dict[str, int]:
        """How many intro and rendezvous points this relay serves (for /metrics)."""
        return {"intro": len(self._intro_points), "rendezvous": len(self._rendezvous)}

    # ------------------------------------------------------------------ intro point

    async def _on_establish_intro(self, circ: RelayCircuit, msg: RelayMessage) -> None:
        if msg.stream_id or circ.edge is not None:
            raise ProtocolError("ESTABLISH_INTRO on a stream or a circuit that carried streams")
        auth_key, signature = parse_establish_intro(msg.data)
        if not await self.provider.ed25519_verify(auth_key, signature,
                                                  establish_intro_message(auth_key, circ.hop.binding)):
            self.metrics["intro_refused_auth"] += 1
            raise CircuitFailure(DestroyReason.INTRO_BAD_AUTH, "ESTABLISH_INTRO signature does not cover this circuit")
        old = self._intro_points.get(auth_key)
        if old is None and len(self._intro_points) >= self.limits.max_intro_points:
            self.metrics["intro_refused_full"] += 1
            raise CircuitFailure(DestroyReason.RESOURCE_LIMIT, "this relay serves its maximum of intro points")
        if old is not None and (previous := self._circuits.get(old.circuit)) is not None:
            await self._destroy(previous, DestroyReason.INTRO_REPLACED)
        limits = self.limits
        self._intro_points[auth_key] = _IntroPoint(circ.handle, float(limits.introduce_burst), self.clock())
        circ.state, circ.point_key = RelayState.INTRO_POINT, auth_key
        self.metrics["intro_established"] += 1
        await self._send_edge(circ, [encode_relay_body(RelayCommand.INTRO_ESTABLISHED, 0, b"")])

    async def _on_introduce1(self, circ: RelayCircuit, msg: RelayMessage) -> None:
        if msg.stream_id or circ.edge is not None:
            raise ProtocolError("INTRODUCE1 on a stream or a circuit that carried streams")
        circ.state = RelayState.INTRODUCING
        payload = circ.extend.add(msg.data, msg.flags)
        if payload is None:
            return
        circ.state = RelayState.INTRODUCED
        status = await self._introduce(payload)
        self.metrics[f"introduce_{status.name.lower()}"] += 1
        await self._send_edge(circ, [encode_relay_body(RelayCommand.INTRODUCE_ACK, 0, bytes([status]))])

    async def _introduce(self, payload: bytes) -> IntroduceStatus:
        """Forward a whole INTRODUCE1 to its service, if the intro point's budget allows."""
        try:
            auth_key, _ = parse_introduce(payload)
        except ProtocolError:
            return IntroduceStatus.BAD_FORMAT
        point = self._intro_points.get(auth_key)
        service = self._circuits.get(point.circuit) if point is not None else None
        if point is None or not isinstance(service, RelayCircuit):
            return IntroduceStatus.UNKNOWN_SERVICE
        now, limits = self.clock(), self.limits
        point.tokens = min(float(limits.introduce_burst), point.tokens + (now - point.refilled) * limits.introduce_rate)
        point.refilled = now
        if point.tokens < 1:
            return IntroduceStatus.RATE_LIMITED
        point.tokens -= 1
        try:
            await self._send_edge(service, [encode_relay_body(RelayCommand.INTRODUCE2, 0, piece, flags)
                                            for piece, flags in fragments(payload, RELAY_DATA_SIZE)])
        except CircuitFailure as exc:  # the service's circuit is over its queue bound: it, not the client's, goes
            await self._destroy(service, exc.reason)
            return IntroduceStatus.UNKNOWN_SERVICE
        return IntroduceStatus.SUCCESS

    # ------------------------------------------------------------------ rendezvous point

    async def _on_establish_rendezvous(self, circ: RelayCircuit, msg: RelayMessage) -> None:
        if msg.stream_id or circ.edge is not None:
            raise ProtocolError("ESTABLISH_RENDEZVOUS on a stream or a circuit that carried streams")
        cookie = parse_cookie(msg.data)
        if cookie in self._rendezvous:
            self.metrics["rendezvous_refused_cookie_in_use"] += 1
            raise CircuitFailure(DestroyReason.REND_COOKIE_IN_USE, "that rendezvous cookie is already waiting here")
        if len(self._rendezvous) >= self.limits.max_rendezvous_points:
            self.metrics["rendezvous_refused_full"] += 1
            raise CircuitFailure(DestroyReason.RESOURCE_LIMIT, "this relay serves its maximum of rendezvous points")
        self._rendezvous[cookie] = circ.handle
        circ.state, circ.point_key = RelayState.REND_POINT, cookie
        self._deadlines[circ.handle] = self.clock() + self.limits.rendezvous_lifetime
        self.metrics["rendezvous_established"] += 1
        await self._send_edge(circ, [encode_relay_body(RelayCommand.RENDEZVOUS_ESTABLISHED, 0, b"")])

    async def _on_rendezvous1(self, circ: RelayCircuit, msg: RelayMessage) -> None:
        if msg.stream_id or circ.edge is not None:
            raise ProtocolError("RENDEZVOUS1 on a stream or a circuit that carried streams")
        cookie, reply = parse_rendezvous1(msg.data)
        handle = self._rendezvous.pop(cookie, None)
        client = self._circuits.get(handle) if handle is not None else None
        if not isinstance(client, RelayCircuit) or client.state is not RelayState.REND_POINT:
            self.metrics["rendezvous_unknown_cookie"] += 1
            raise CircuitFailure(DestroyReason.REND_UNKNOWN_COOKIE, "RENDEZVOUS1 for a cookie no circuit waits with")
        self._deadlines.pop(client.handle, None)
        client.point_key = b""
        client.state = circ.state = RelayState.JOINED
        client.joined, circ.joined = circ.handle, client.handle
        self.metrics["rendezvous_joined"] += 1
        await self._send_edge(client, [encode_relay_body(RelayCommand.RENDEZVOUS2, 0, reply)])

    async def _on_joined_cells(self, circ: RelayCircuit, bodies: list[bytes]) -> None:
        """From one side of a joined pair: what is not for this hop (padding) goes down the other."""
        partner = self._circuits.get(circ.joined)
        if not isinstance(partner, RelayCircuit):
            raise CircuitFailure(DestroyReason.REND_CLOSED, "the joined circuit has closed")
        passing = []
        for mine, body in await relay_forward(circ.hop, bodies):
            if mine:
                await self._dispatch(circ, parse_relay_body(body))  # only padding is accepted here
            else:
                passing.append(body)
        if passing:
            data = await relay_backward(partner.hop, passing)
            self._enqueue(partner.prev_link, partner.handle, relay_cells(partner.prev_circ, split_bodies(data)))
            self.metrics["cells_rendezvous"] += len(passing)

    # ------------------------------------------------------------------ teardown

    def _forget_point(self, circ: RelayCircuit) -> int:
        """``circ`` is gone: drop its map entry; return its joined partner's handle (0 if none)."""
        if circ.point_key:
            table = self._intro_points if circ.state is RelayState.INTRO_POINT else self._rendezvous
            entry = table.get(circ.point_key)
            if entry is not None and (entry if isinstance(entry, int) else entry.circuit) == circ.handle:
                del table[circ.point_key]
        return circ.joined
