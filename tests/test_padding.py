"""Padding machines (zmesh.padding, zmesh.padnego, zmesh.cover; docs/protocol.md "Padding
negotiation"), all on the fake clock: keep-alive padding on idle links only, cover machines that
send one cell per tick idle or busy, the negotiation with the first hop and its limits."""

import asyncio
import random

import pytest

from zmesh.cells import (
    CELL_SIZE,
    MAX_CELLS_PER_FRAME,
    CellCommand,
    DestroyReason,
    RelayCommand,
    encode_cell,
    encode_relay_body,
    parse_frame,
)
from zmesh.cover import PaddingPolicy, parse_cover
from zmesh.errors import ConfigError, ProtocolError
from zmesh.events import CircuitBuilt, CircuitClosed
from zmesh.identity import Identity
from zmesh.node import Node, NodeLimits
from zmesh.padding import LinkPadder, Machine, PaddingSpec
from zmesh.padnego import decode_request, encode_request
from zmesh.testing.wire import FakeClock, Wire


def padder(spec, now=100.0, seed=1):
    rng = random.Random(seed)
    return LinkPadder(spec, now, rng.uniform, rng.expovariate)


# ---------------------------------------------------------------- settings


@pytest.mark.parametrize("text, machine, rate", [
    ("off", None, None), ("constant:50", Machine.CONSTANT, 50.0), ("Poisson:12.5", Machine.POISSON, 12.5)])
def test_cover_settings_parse(text, machine, rate):
    spec = parse_cover(text)
    assert (spec and spec.machine, spec and spec.rate) == (machine, rate) if spec else spec is None


@pytest.mark.parametrize("text", ["on", "constant", "constant:", "poisson:-1", "poisson:0", "uniform:5",
                                  "constant:nan", "constant:1e9"])
def test_bad_cover_settings_are_config_errors(text):
    with pytest.raises(ConfigError):
        parse_cover(text)


def test_negotiation_requests_round_trip_and_hostile_ones_are_protocol_errors():
    for spec in (PaddingSpec(Machine.CONSTANT, rate=40.0), PaddingSpec(Machine.KEEPALIVE, idle=9.5),
                 PaddingSpec(Machine.POISSON, rate=0.5, max_percent=30)):
        assert decode_request(encode_request(spec)) == (1, spec)
    assert decode_request(encode_request(None)) == (1, None)
    assert decode_request(bytes([2, 1, 0, 0, 0, 1, 100])) == (2, None)  # a newer version: ignored
    assert decode_request(bytes([1, 9, 0, 0, 0, 1, 100])) == (1, None)  # an unknown machine: ignored
    for bad in (b"", bytes(8), bytes([1, 2, 0, 0, 0, 0, 100]), bytes([1, 2, 0, 0, 0, 1, 101])):
        with pytest.raises(ProtocolError):
            decode_request(bad)


# ---------------------------------------------------------------- the machines alone


def test_keepalive_pads_only_a_link_that_stayed_silent_for_the_drawn_gap():
    machine = padder(PaddingSpec(Machine.KEEPALIVE, idle=6.0))
    first = machine.deadline
    assert 101.0 <= first <= 106.0  # a gap from [idle/6, idle]
    machine.sent(3)  # busy since armed: the timer re-arms and nothing is sent
    assert machine.tick(first, queued=0) == 0
    second = machine.deadline
    assert machine.tick(second, queued=0) == 1  # nothing sent for a whole gap: PADDING
    assert machine.padding_sent == 1 and machine.allow(64) == 64  # keep-alive never blocks real cells


def test_a_constant_machine_lets_one_cell_out_per_tick_and_pads_the_empty_ones():
    machine = padder(PaddingSpec(Machine.CONSTANT, rate=10.0))
    assert machine.deadline == pytest.approx(100.1) and machine.allow(64) == 0  # blocks until a tick
    assert machine.tick(100.1, queued=5) == 0 and machine.allow(64) == 1  # a real cell takes the tick
    machine.sent(1)
    assert machine.allow(64) == 0
    assert machine.tick(100.2, queued=0) == 1  # nothing waits: PADDING takes it
    assert machine.tick(100.5, queued=0) == 3  # a late timer replays the missed ticks
    machine.sent(4)
    assert machine.tick(1000.0, queued=0) == 64 and machine.deadline > 1000.0  # a stall: no endless burst


def test_poisson_gaps_average_one_over_the_rate():
    machine = padder(PaddingSpec(Machine.POISSON, rate=50.0), seed=3)
    now, ticks = 100.0, 0
    while now < 300.0:
        now = machine.deadline
        machine.tick(now, queued=0)
        machine.sent(machine.tokens)
        ticks += 1
    assert 50 * 200 * 0.95 < ticks < 50 * 200 * 1.05


def test_a_machine_never_pads_beyond_its_percentage_after_the_allowance():
    machine = padder(PaddingSpec(Machine.CONSTANT, rate=100.0, max_percent=25))
    now, padding, real = 100.0, 0, 0
    for tick in range(1000):
        now += 0.01
        queued = tick % 2  # a real cell on every other tick
        cells = machine.tick(now, queued=queued)
        padding, real = padding + cells, real + queued
        machine.sent(cells + queued)
    # 25 % of all cells: padding ≤ (padding + 500) / 4, i.e. 166; without the limit it would be 500
    assert real == 500 and 150 < padding <= 167


# ---------------------------------------------------------------- machines on a node's links


def test_keepalive_padding_flows_on_an_idle_link_and_is_counted_both_ways(provider):
    async def main():
        wire = Wire()
        a, b = await wire.add(provider, accept_circuits=False), await wire.add(provider)
        for node in (a, b):
            node.padding_policy, node.padding_random = PaddingPolicy(keepalive=6.0), random.Random(5)
        await wire.connect(a, b)
        await wire.pump()
        for t in range(101, 161):
            await wire.advance(float(t))
        # every idle gap is 1..6 s (and a padded gap re-arms), each side pads its own direction
        assert 8 <= a.metrics["padding_cells_out"] <= 60 and 8 <= b.metrics["padding_cells_out"] <= 60
        assert b.metrics["padding_cells_in"] == a.metrics["padding_cells_out"]
        assert a.metrics["padding_cells_in"] == b.metrics["padding_cells_out"]

    asyncio.run(main())


def test_keepalive_sends_no_padding_while_data_flows(provider):
    async def main():
        clock = FakeClock()
        node = Node(await Identity.generate(provider), provider, clock, accept_circuits=False)
        node.padding_policy = PaddingPolicy(keepalive=6.0)
        link = await node.link_opened((await Identity.generate(provider)).peer_id, initiator=True)
        for step in range(600):  # a cell each way every 0.5 s for 300 s
            clock.now = 100.0 + step / 2
            await node.receive_frame(link, encode_cell(CellCommand.PADDING, 0))
            node._enqueue(link, 0, [encode_cell(CellCommand.PONG, 0, b"x")])
            node.take_frame(link)
            if (deadline := node.next_deadline()) is not None and deadline <= clock.now:
                await node.handle_timer(clock.now)
        assert node.metrics["padding_cells_out"] == 0

    asyncio.run(main())


async def _cover_circuit(provider, cover, guard_limits=None):
    wire = Wire()
    client = await wire.add(provider, accept_circuits=False)
    client.padding_policy, client.padding_random = PaddingPolicy(cover=parse_cover(cover)), random.Random(2)
    guard, exit_ = await wire.add(provider, limits=guard_limits), await wire.add(provider)
    guard.padding_random = random.Random(3)
    await client.build_circuit([guard.identity, exit_.identity])
    await wire.pump()
    t = 100.0
    while t < 130.0 and not any(isinstance(e, (CircuitBuilt, CircuitClosed)) for e in wire.events[client]):
        t += 0.01
        await wire.advance(t)
    return wire, client, guard, t


def test_the_first_hop_runs_the_clients_cover_machine_on_its_side_of_the_link(provider):
    async def main():
        wire, client, guard, t = await _cover_circuit(provider, "constant:50")
        assert any(isinstance(e, CircuitBuilt) for e in wire.events[client])
        assert guard.metrics["padding_negotiated"] == 1 and client.metrics["padding_negotiated"] == 1
        ((client_link, state),) = client._links.items()
        guard_link = wire.ends[(client, client_link)][1]
        assert guard._links[guard_link].padder.spec == PaddingSpec(Machine.CONSTANT, rate=50.0)
        # idle: both directions of the link carry 50 cells/s (one per tick), almost all PADDING
        before = (client.metrics["cells_out"], guard.metrics["cells_in"], guard.metrics["cells_out"])
        for step in range(1, 201):
            await wire.advance(t + step / 100)
        up = client.metrics["cells_out"] - before[0]
        down = guard.metrics["cells_out"] - before[2]
        assert 95 <= up <= 105 and 95 <= down <= 105

    asyncio.run(main())


def test_a_first_hop_refuses_cover_over_its_limit_with_a_typed_reason(provider):
    async def main():
        wire, client, guard, _ = await _cover_circuit(provider, "constant:100", NodeLimits(padding_max_rate=50))
        closed = [e for e in wire.events[client] if isinstance(e, CircuitClosed)]
        assert [e.reason for e in closed] == [DestroyReason.PADDING_LIMIT]
        assert guard.metrics["padding_refused"] == 1 and guard.metrics["padding_negotiated"] == 0

    asyncio.run(main())


@pytest.mark.parametrize("command, data", [(RelayCommand.PADDING_NEGOTIATED, b"\x01\x02"),
                                           (RelayCommand.PADDING_SETUP_OK, b"")])  # zmesh.setuppad's answer
def test_a_negotiated_answer_nobody_asked_for_destroys_the_circuit(provider, command, data):
    async def main():
        wire = Wire()
        client = await wire.add(provider, accept_circuits=False)
        guard, exit_ = await wire.add(provider), await wire.add(provider)
        circuit = await client.build_circuit([guard.identity, exit_.identity])
        await wire.pump()
        (guard_circuit,) = guard._circuits.values()
        await guard._send_edge(guard_circuit, [encode_relay_body(command, 0, data)])
        await wire.pump()
        assert circuit not in client.circuits() and client.metrics["circuit_failures_protocol"] == 1

    asyncio.run(main())


def test_padding_cells_arrive_as_link_padding(provider):
    async def main():
        wire = Wire()
        a, b = await wire.add(provider, accept_circuits=False), await wire.add(provider)
        a.padding_policy, a.padding_random = PaddingPolicy(cover=parse_cover("constant:10")), random.Random(1)
        await wire.connect(a, b)
        wire.clock.now = 100.1
        await a.handle_timer(100.1)
        (link,) = a.links_with_output()
        assert [c.command for c in parse_frame(a.take_frame(link))] == [CellCommand.PADDING]

    asyncio.run(main())


def test_jitter_holds_a_links_cells_for_a_bounded_random_delay_then_sends_them_as_one_batch(provider):
    async def main():
        clock = FakeClock()
        node = Node(await Identity.generate(provider), provider, clock)
        node.padding_policy, node.padding_random = PaddingPolicy(jitter=0.2), random.Random(4)
        link = await node.link_opened((await Identity.generate(provider)).peer_id, initiator=True)
        delays = []
        for batch in range(20):
            start = clock.now = 100.0 + batch
            node._enqueue(link, 0, [encode_cell(CellCommand.PONG, 0, b"a")])
            clock.now = start + 0.01
            node._enqueue(link, 0, [encode_cell(CellCommand.PONG, 0, b"b")])  # joins the held batch
            assert node.take_frame(link) is None and node.links_with_output() == []
            release = node._links[link].release_at
            assert start <= release <= start + 0.2 and node.next_deadline() <= release
            clock.now = max(release, clock.now)
            await node.handle_timer(clock.now)
            assert node.links_with_output() == [link]
            # both cells in one frame (and the PING the liveness timer sent at 115 s)
            assert [c.payload for c in parse_frame(node.take_frame(link))][:2] == [b"a", b"b"]
            delays.append(release - start)
        assert max(delays) - min(delays) > 0.1  # drawn afresh per batch

    asyncio.run(main())


def test_without_jitter_cells_go_at_once(provider):
    async def main():
        node = Node(await Identity.generate(provider), provider, FakeClock())
        link = await node.link_opened((await Identity.generate(provider)).peer_id, initiator=True)
        node._enqueue(link, 0, [encode_cell(CellCommand.PONG, 0, b"a")])
        assert node.links_with_output() == [link] and node.take_frame(link) is not None

    asyncio.run(main())


@pytest.mark.parametrize("jitter", [-0.1, 0.6])
def test_jitter_is_bounded(jitter):
    with pytest.raises(ConfigError, match="jitter"):
        PaddingPolicy(jitter=jitter)


# ---------------------------------------------------------------- frame padding (cells.parse_frame)


def test_a_frame_may_end_in_a_zero_trailer_shorter_than_a_cell():
    ping = encode_cell(CellCommand.PING, 0, b"12345678")
    for trailer in (1, 500, CELL_SIZE - 1):
        assert [c.command for c in parse_frame(ping * 2 + bytes(trailer))] == [CellCommand.PING] * 2


@pytest.mark.parametrize("frame", [
    encode_cell(CellCommand.PING, 0, b"p") + b"\x00" * 10 + b"\x01",  # a trailer must be zero
    bytes(CELL_SIZE - 1),  # a trailer alone is no frame
    encode_cell(CellCommand.PING, 0, b"p") * MAX_CELLS_PER_FRAME + b"\x00",  # never past MAX_FRAME_SIZE
])
def test_a_bad_trailer_is_a_protocol_error(frame):
    with pytest.raises(ProtocolError):
        parse_frame(frame)


def test_frame_padding_varies_frame_sizes_and_the_peer_reads_them(provider):
    async def main():
        wire = Wire()
        a, b = await wire.add(provider, accept_circuits=False), await wire.add(provider)
        a.padding_policy, a.padding_random = PaddingPolicy(frame_padding=True), random.Random(8)
        await wire.connect(a, b)
        await wire.pump()
        (link,) = a._links
        sizes = set()
        for _ in range(20):
            a._enqueue(link, 0, [encode_cell(CellCommand.PING, 0, b"12345678")])
            frame = a.take_frame(link)
            sizes.add(len(frame) % CELL_SIZE)
            await b.receive_frame(wire.ends[(a, link)][1], frame)
        assert len(sizes) > 10  # not only multiples of 1024
        assert b.metrics["malformed_frames"] == 0 and b.metrics["cells_in"] >= 20 and len(b._links) == 1

    asyncio.run(main())
