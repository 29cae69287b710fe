"""The link table: a node's links, their roles, output queues and bounds, circuit ids, link
authentication and PING/PONG liveness (docs/protocol.md §3).

``LinkTable`` is one part of ``node.Node`` (a mixin over the node's shared state): it owns
``_links``, ``_peer_links``, ``_routes`` and the per-circuit queued counts. A peer that does not read
what it makes this node send loses its link (``_shed``), so no queue here grows without bound.

Every link has a ``LinkRole`` and serves only that role: this node proves its PeerId only on a
``RELAY`` link it opened, and ``_peer_links`` is keyed by role, so a circuit this node builds for
itself is only ever started on a ``CLIENT`` link (``Node._when_linked``).
"""

from __future__ import annotations

import logging
import math
from collections import deque
from typing import TYPE_CHECKING

from .cells import CELL_SIZE, MAX_CELLS_PER_FRAME, Cell, CellCommand, DestroyReason, encode_cell
from .crypto.provider import KEY_SIZE
from .errors import InvalidState
from .events import CloseLink, LinkAuthenticated
from .identity import PeerId
from .link import LinkRole

if TYPE_CHECKING:
    from .circuit import OriginCircuit, RelayCircuit, Side
    from .padding import LinkPadder

log = logging.getLogger(__name__)

LINK_AUTH_DOMAIN = b"zmesh-link-auth-v1\x00"
INITIATOR_BIT = 0x8000_0000


class CircuitFailure(Exception):
    """Internal: unwinds handling of one circuit's input, which is then destroyed with ``reason``."""

    def __init__(self, reason: DestroyReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class LinkState:
    __slots__ = ("peer", "initiator", "role", "queue", "queued_cells", "link_cells", "circuits", "next_circ", "closed",
                 "challenge", "last_rx", "ping_at", "ping_nonce", "rtt", "padder", "pad_asked",
                 "release_at")

    def __init__(self, peer: PeerId | None, initiator: bool, role: LinkRole, now: float) -> None:
        self.peer = peer
        self.role = role
        self.challenge = b""  # sent to an unauthenticated dialer, until it answers
        self.initiator = initiator
        self.queue: deque[tuple[int, list[bytes]]] = deque()  # (circuit handle, cells) in send order
        self.queued_cells = 0
        self.link_cells = 0  # of queued_cells, those of no circuit (handle 0)
        self.circuits: set[int] = set()
        self.next_circ = 1
        self.closed = False  # over its queue bound: nothing more is queued or read; closed by _reap
        self.last_rx = now  # when the last valid frame arrived (opening counts)
        self.ping_at = -math.inf  # when the last PING was sent; after last_rx: it is unanswered
        self.ping_nonce = b""  # the payload of that PING until its PONG arrives
        self.rtt: float | None = None
        self.padder: LinkPadder | None = None  # its padding machine (zmesh.padnego)
        self.pad_asked = False  # this node asked the peer to pad its side (PADDING_NEGOTIATE sent)
        self.release_at = 0.0  # with timing jitter: its queue is held until then (0: not held)


class LinkTable:
    """Links in and out of the node (the part of ``Node`` that knows links; see the module doc)."""

    # ------------------------------------------------------------------ opening, authenticating, closing

    async def link_opened(self, peer: PeerId | None, *, initiator: bool, role: LinkRole | None = None) -> int:
        """Register a new link (``peer`` is None for an inbound link whose dialer is unknown: it is
        challenged, and a dialer that relays proves its PeerId, so circuits can be extended to it
        over this very link — how a browser tab, which cannot listen, still relays).

        ``role`` is what a link this node opened is for (``LinkNeeded.role``): ``CLIENT`` (the
        default) for its own circuits, on which it proves nothing, or ``RELAY``, on which a node that
        accepts circuits proves its PeerId. An inbound link always serves the relay role: its dialer
        knew whom it dialed."""
        if role is None:
            role = LinkRole.CLIENT if initiator else LinkRole.RELAY
        if not initiator and role is not LinkRole.RELAY:
            raise InvalidState("an inbound link serves the relay role: its dialer knows whom it dialed")
        if initiator and role is LinkRole.RELAY and not self.accept_circuits:
            raise InvalidState("a node that accepts no circuits opens no relay links")
        link_id = self._next_link
        self._next_link += 1
        now = self.clock()
        link = self._links[link_id] = LinkState(peer, initiator, role, now)
        self._link_timer = min(self._link_timer, now + self.limits.keepalive_interval)
        self._pad_new_link(link_id, link)
        if not initiator and len(self._links) > self.limits.max_links:
            self.metrics["links_refused"] += 1
            self._events.append(CloseLink(link_id, f"this node holds its maximum of {self.limits.max_links} links"))
            await self.link_closed(link_id)
            return link_id
        if peer is not None:
            if role is LinkRole.RELAY:
                await self._make_room_for_peer(link_id)  # a link this node dialed is kept; an idle one may go
            await self._link_identified(link_id, peer)
        elif not initiator:
            link.challenge = self.provider.random_bytes(32)
            self._enqueue(link_id, 0, [encode_cell(CellCommand.AUTH_CHALLENGE, 0, link.challenge)])
        return link_id

    async def _on_auth(self, link_id: int, cell: Cell) -> None:
        """AUTH_CHALLENGE: a relaying node proves who it is; AUTHENTICATE: check that proof.

        The signature covers the challenge *and the listener's PeerId*, so a man in the middle
        cannot pass a challenge through to a third node. Only a relay link this node opened answers:
        on a client link (the ones its own circuits use) it stays anonymous, whatever else it is.
        """
        link = self._links[link_id]
        proves = link.initiator and link.role is LinkRole.RELAY and self.accept_circuits
        if cell.command == CellCommand.AUTHENTICATED:
            if proves:
                self._events.append(LinkAuthenticated(link_id))
            return
        if cell.command == CellCommand.AUTH_CHALLENGE:
            if proves and link.peer is not None and len(cell.payload) == 32:
                signature = await self.provider.ed25519_sign(
                    self.identity.signing_key, LINK_AUTH_DOMAIN + cell.payload + link.peer.key)
                self._enqueue(link_id, 0, [encode_cell(CellCommand.AUTHENTICATE, 0,
                                                       self.identity.peer_id.key + signature)])
            return
        challenge, link.challenge = link.challenge, b""
        payload = cell.payload
        valid = (challenge and len(payload) == KEY_SIZE + 64 and await self.provider.ed25519_verify(
            payload[:KEY_SIZE], payload[KEY_SIZE:], LINK_AUTH_DOMAIN + challenge + self.identity.peer_id.key))
        if not valid:
            self.metrics["link_auth_failures"] += 1
            self._events.append(CloseLink(link_id, "link authentication failed"))
            await self.link_closed(link_id)
            return
        link.peer = PeerId(payload[:KEY_SIZE])
        self.metrics["links_authenticated"] += 1
        log.debug("link %d: its dialer proved it is %s", link_id, link.peer.text)
        if not await self._make_room_for_peer(link_id):
            return
        self._enqueue(link_id, 0, [encode_cell(CellCommand.AUTHENTICATED, 0)])
        await self._link_identified(link_id, link.peer)

    # ------------------------------------------------------------------ peer limits

    def peer_limit(self) -> int | None:
        """Peer links this node keeps in the network it last saw (None: no size known yet)."""
        return None if self.network_size is None else self.limits.peer_tiers.limit(self.network_size)

    async def set_network_size(self, nodes: int) -> None:
        """The directory this node reads lists ``nodes`` nodes; a smaller network means fewer peer
        links, and idle ones beyond the new limit are closed now."""
        self.network_size = max(0, nodes)
        limit = self.peer_limit()
        assert limit is not None
        excess = len(self._peer_link_ids()) - limit
        for link_id in self._idlest_peer_links()[:max(0, excess)]:
            await self._close_for_peer_limit(link_id, limit, "peer_links_closed_for_limit")

    def _peer_link_ids(self) -> list[int]:
        return [link_id for link_id, link in self._links.items()
                if link.role is LinkRole.RELAY and link.peer is not None and not link.closed]

    def _idlest_peer_links(self, *, besides: int | None = None) -> list[int]:
        """Peer links carrying no circuit, the longest silent first: the ones to close first."""
        idle = [link_id for link_id in self._peer_link_ids()
                if link_id != besides and not self._links[link_id].circuits]
        return sorted(idle, key=lambda link_id: (self._links[link_id].last_rx, link_id))

    async def _make_room_for_peer(self, link_id: int) -> bool:
        """A new peer link ``link_id`` is identified. Over the tier's limit, close the idlest idle
        peer link; if every other one carries circuits, refuse this one if it is inbound (a link
        this node opened is kept: a circuit is waiting for it). False if it was refused."""
        limit = self.peer_limit()
        if limit is None or len(self._peer_link_ids()) <= limit:
            return True
        idle = self._idlest_peer_links(besides=link_id)
        if idle:
            await self._close_for_peer_limit(idle[0], limit, "peer_links_closed_for_limit")
            return True
        if self._links[link_id].initiator:
            return True
        await self._close_for_peer_limit(link_id, limit, "links_refused_peer_limit")
        return False

    async def _close_for_peer_limit(self, link_id: int, limit: int, counter: str) -> None:
        self.metrics[counter] += 1
        self._events.append(CloseLink(link_id, f"this node keeps at most {limit} peer links in a network of "
                                               f"{self.network_size} nodes"))
        await self.link_closed(link_id)

    async def link_closed(self, link_id: int) -> None:
        """The link is gone: every circuit on it is destroyed (DESTROY sent the other way), naming
        the link's peer, when known, as the one that failed, so a client builds around it."""
        link = self._links.pop(link_id, None)
        if link is None:
            return
        link.closed = True
        self._drop_queue(link_id, link)
        self._handshakes.forget(link_id)
        if link.peer is not None and self._peer_links.get((link.role, link.peer)) == link_id:
            del self._peer_links[(link.role, link.peer)]
        for circ_id in list(link.circuits):
            route = self._routes.get((link_id, circ_id))
            if route:
                await self._destroy(route[0], DestroyReason.LINK_CLOSED, failed=link.peer)

    def link_peers(self) -> dict[int, tuple[LinkRole, PeerId | None]]:
        """Each open link's role and who is on it as far as this node knows: the peer it dialed, or
        a dialer that proved its PeerId; None for a dialer that proved nothing."""
        return {link_id: (link.role, link.peer) for link_id, link in self._links.items()}

    # ------------------------------------------------------------------ output queues

    def take_frame(self, link_id: int, max_cells: int = MAX_CELLS_PER_FRAME) -> bytes | None:
        """The next frame to write on ``link_id`` (up to ``max_cells`` cells), or None."""
        link = self._links.get(link_id)
        if link is None or not link.queue:
            return None
        padder = link.padder
        if padder is not None and not (max_cells := padder.allow(max_cells)):
            return None  # a cover machine blocks until its next tick
        if link.release_at and self._jitter_holds(link):
            return None  # timing jitter: the batch waits for its release time
        queue, queued = link.queue, self._queued
        out: list[bytes] = []
        while queue and len(out) < max_cells:
            handle, cells = queue[0]
            room = max_cells - len(out)
            if len(cells) > room:
                out.extend(cells[:room])
                queue[0] = (handle, cells[room:])
                taken = room
            else:
                out.extend(cells)
                queue.popleft()
                taken = len(cells)
            if handle:
                key = (handle, link_id)
                queued[key] -= taken
                if not queued[key]:
                    del queued[key]
            else:
                link.link_cells -= taken
        link.queued_cells -= len(out)
        if padder is not None:
            padder.sent(len(out))
        if self.padding_policy.frame_padding:
            out.append(self._frame_trailer(len(out)))
        frame = b"".join(out)
        self.metrics["cells_out"] += len(out)
        self.metrics["bytes_out"] += len(frame)
        return frame

    def link_rtt(self, link_id: int) -> float | None:
        """The last PING→PONG round trip on the link in seconds (this node's own queue included),
        or None before one was measured or for an unknown link."""
        link = self._links.get(link_id)
        return None if link is None else link.rtt

    def links_with_output(self) -> list[int]:
        """Links with cells to write now (a cover machine's link only once its tick lets one go)."""
        return [link_id for link_id, link in self._links.items()
                if link.queue and (link.padder is None or link.padder.allow(1))
                and not (link.release_at and self._jitter_holds(link))]

    def buffered_bytes(self) -> int:
        """Bytes of cells queued in this node, waiting for their link."""
        return sum(link.queued_cells for link in self._links.values()) * CELL_SIZE

    def _enqueue(self, link_id: int, handle: int, cells: list[bytes]) -> None:
        link = self._links.get(link_id)
        if link is None or link.closed:
            return
        if not link.queue and self.padding_policy.jitter:
            self._jitter_arm(link)
        link.queue.append((handle, cells))
        link.queued_cells += len(cells)
        key = (handle, link_id)
        if handle:
            self._queued[key] += len(cells)
            self._setup_count(link_id, handle, len(cells))
        else:
            link.link_cells += len(cells)
        limits = self.limits
        if link.link_cells > limits.max_queued_link_cells or link.queued_cells > limits.max_queued_cells_per_link:
            self._shed(link_id, link)
        elif handle and self._queued[key] > self._circuit_queue_bound(handle):
            raise CircuitFailure(DestroyReason.RESOURCE_LIMIT, "circuit queue over its bound")

    def _shed(self, link_id: int, link: LinkState) -> None:
        """The peer on ``link`` does not read what it makes this node send: drop its queue and close the
        link (at the end of this call, by ``_reap``; the driver closes it on ``CloseLink``)."""
        self._drop_queue(link_id, link)
        link.closed = True
        self.metrics["links_over_queue_bound"] += 1
        self._events.append(CloseLink(link_id, "the peer let this node's queue for it grow past its bound"))
        self._closing.append(link_id)

    def _drop_queue(self, link_id: int, link: LinkState) -> None:
        """Forget what waits for ``link``, and its share of each circuit's queued count."""
        for handle, cells in link.queue:
            if handle:
                key = (handle, link_id)
                self._queued[key] -= len(cells)
                if not self._queued[key]:
                    del self._queued[key]
        link.queue.clear()
        link.queued_cells = link.link_cells = 0

    async def _reap(self) -> None:
        while self._closing:
            await self.link_closed(self._closing.pop())

    # ------------------------------------------------------------------ circuit ids and routes

    def _new_circ_id(self, link_id: int) -> int:
        link = self._links[link_id]
        base = INITIATOR_BIT if link.initiator else 0
        for _ in range(INITIATOR_BIT):
            candidate = base | link.next_circ
            link.next_circ = link.next_circ % (INITIATOR_BIT - 1) + 1
            if candidate not in link.circuits:
                return candidate
        raise CircuitFailure(DestroyReason.RESOURCE_LIMIT, "no free circuit id on the link")

    def _add_route(self, link_id: int, circ_id: int, circ: OriginCircuit | RelayCircuit, side: Side) -> None:
        self._routes[(link_id, circ_id)] = (circ, side)
        self._links[link_id].circuits.add(circ_id)

    # ------------------------------------------------------------------ liveness

    def _on_ping(self, link_id: int, cell: Cell) -> None:
        self._enqueue(link_id, 0, [encode_cell(CellCommand.PONG, 0, cell.payload)])

    def _on_pong(self, link_id: int, cell: Cell) -> None:
        link = self._links[link_id]
        if link.ping_nonce and cell.payload == link.ping_nonce:
            link.rtt, link.ping_nonce = self.clock() - link.ping_at, b""

    def _link_deadline(self, link: LinkState) -> float:
        """When ``link`` next needs the timer: once silent for keepalive_interval it gets a PING;
        with that PING unanswered it is closed once silent for dead_after — but never sooner than
        dead_after − keepalive_interval after the PING, so a timer that ran late (a stalled event
        loop) does not close a link whose peer was never asked."""
        limits = self.limits
        if link.ping_at <= link.last_rx:
            return link.last_rx + limits.keepalive_interval
        return max(link.last_rx + limits.dead_after, link.ping_at + limits.dead_after - limits.keepalive_interval)

    async def _check_links(self, now: float) -> None:
        for link_id, link in list(self._links.items()):
            if now < self._link_deadline(link):
                continue
            if link.ping_at <= link.last_rx:
                link.ping_at, link.ping_nonce = now, self.provider.random_bytes(8)
                self._enqueue(link_id, 0, [encode_cell(CellCommand.PING, 0, link.ping_nonce)])
                continue
            self.metrics["links_dead"] += 1
            self._events.append(CloseLink(link_id, f"the peer stopped answering: nothing received for "
                                                   f"{now - link.last_rx:.1f} s, PING unanswered"))
            await self.link_closed(link_id)
        self._link_timer = min(map(self._link_deadline, self._links.values()), default=math.inf)
