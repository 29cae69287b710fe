"""The circuit-setup padding machine (zmesh.setuppad; docs/protocol.md §16), on the
fake clock: the machine alone, its negotiation and limits, and what an observer on the client's first
link counts for a general 3-hop build and for a rendezvous circuit's setup. (An unasked
PADDING_SETUP_OK is refused in tests/test_padding.py, beside the unasked PADDING_NEGOTIATED.)"""

import asyncio
import random

import pytest

from zmesh.cells import CellCommand, DestroyReason, parse_frame
from zmesh.errors import ConfigError, ProtocolError
from zmesh.events import CircuitBuilt, CircuitClosed, RendezvousEstablished
from zmesh.node import NodeLimits
from zmesh.onion.wire import COOKIE_SIZE
from zmesh.setuppad import SetupPadder, SetupSpec, decode_setup, encode_setup
from zmesh.testing.wire import Wire

SPEC = SetupSpec(cells=24, window=2.0)


def test_the_machine_tops_real_cells_up_to_its_count_at_times_drawn_over_the_window():
    rng = random.Random(1)
    padder = SetupPadder(7, SPEC, 100.0, rng.uniform)
    assert 100.0 <= padder.deadline <= 102.0
    padder.sent += 5  # real cells count toward the shape
    sent, now = 5, 100.0
    while not padder.done:
        now = padder.deadline
        cells = padder.tick(now)
        padder.sent += cells
        sent += cells
    assert sent == 24 and now <= 102.0 and padder.tick(200.0) == 0
    busy = SetupPadder(7, SPEC, 100.0, rng.uniform)
    busy.sent += 30  # more real cells than the shape: no padding at all
    assert busy.tick(102.0) == 0 and busy.done


def test_requests_round_trip_and_hostile_ones_are_protocol_errors():
    assert decode_setup(encode_setup(SPEC)) == (1, SPEC)
    assert decode_setup(bytes([2, 0, 24, 0, 0, 7, 208])) == (2, None)  # a newer version: ignored
    for bad in (b"", bytes(8), bytes([1, 0, 0, 0, 0, 7, 208]), bytes([1, 0, 65, 0, 0, 7, 208]),
                bytes([1, 0, 24, 0, 0, 0, 1])):
        with pytest.raises(ProtocolError):
            decode_setup(bad)
    with pytest.raises(ConfigError):
        SetupSpec(cells=0)


class Observer(Wire):
    """A wire that counts, per direction, the circuit cells on the client's first link."""

    def __init__(self) -> None:
        super().__init__()
        self.client = None
        self.up: list[float] = []
        self.down: list[float] = []
        self.relay_cells = [0, 0]  # up, down: of those, RELAY cells (the rest are CREATE/CREATED pieces)

    async def _deliver(self, node, link) -> None:
        far = self.ends.get((node, link))
        frame = node.take_frame(link)
        cells = [c for c in parse_frame(frame) if c.circ_id]
        relay = sum(c.command is CellCommand.RELAY for c in cells)
        if node is self.client:
            self.up += [self.clock.now] * len(cells)
            self.relay_cells[0] += relay
        elif far is not None and far[0] is self.client:
            self.down += [self.clock.now] * len(cells)
            self.relay_cells[1] += relay
        if far is not None:
            await far[0].receive_frame(far[1], frame)


async def _observe(provider, setup: SetupSpec | None, rendezvous: bool, guard_limits=None):
    wire = Observer()
    client = await wire.add(provider, accept_circuits=False)
    wire.client, client.setup_padding, client.padding_random = client, setup, random.Random(2)
    guard = await wire.add(provider, limits=guard_limits)
    middle, last = await wire.add(provider), await wire.add(provider)
    guard.padding_random = random.Random(3)
    circuit = await client.build_circuit([guard.identity, middle.identity, last.identity])
    t = 100.0
    while t < 104.0:  # the window and more: every scheduled cell went
        await wire.pump()
        if rendezvous and any(isinstance(e, CircuitBuilt) for e in wire.events[client]):
            await client.establish_rendezvous(circuit, bytes(COOKIE_SIZE))
            rendezvous = False
        t += 0.01
        await wire.advance(t)
    return wire, client, guard


def test_a_three_hop_build_and_a_rendezvous_setup_show_the_first_link_the_same_cell_counts(provider):
    async def main():
        plain_build, _, _ = await _observe(provider, None, rendezvous=False)
        plain_rend, client, _ = await _observe(provider, None, rendezvous=True)
        assert any(isinstance(e, RendezvousEstablished) for e in plain_rend.events[client])
        # without the machine the rendezvous setup is one more cell each way: what an observer counts
        assert (len(plain_rend.up), len(plain_rend.down)) == (len(plain_build.up) + 1, len(plain_build.down) + 1)
        build, client, guard = await _observe(provider, SPEC, rendezvous=False)
        rend, _, _ = await _observe(provider, SPEC, rendezvous=True)
        # with it both are the CREATE's pieces, CC_OFFER and 24 RELAY cells from the request on up, and
        # CREATED's pieces, CC_ACCEPT and 24 down, all within the window
        assert (len(build.up), len(build.down)) == (len(rend.up), len(rend.down))
        assert build.relay_cells == rend.relay_cells == [1 + 24, 1 + 24]
        assert max(build.up + build.down + rend.up + rend.down) <= 100.0 + 2.0 + 0.05
        assert client.metrics["padding_setup_negotiated"] == guard.metrics["padding_setup_negotiated"] == 1
        assert guard.metrics["padding_cells_in"] > 0 and client.metrics["padding_cells_in"] > 0
        assert not client._setup_padders and not guard._setup_padders  # finished machines are forgotten

    asyncio.run(main())


def test_a_first_hop_refuses_setup_padding_over_its_rate_limit(provider):
    async def main():
        wire, client, guard = await _observe(provider, SPEC, False, NodeLimits(padding_max_rate=5))
        closed = [e for e in wire.events[client] if isinstance(e, CircuitClosed)]
        assert [e.reason for e in closed] == [DestroyReason.PADDING_LIMIT]
        assert guard.metrics["padding_refused"] == 1 and guard.metrics["padding_setup_negotiated"] == 0

    asyncio.run(main())
