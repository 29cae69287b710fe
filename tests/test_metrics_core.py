"""The core's own counts behind /metrics (plain ints in ``Node.metrics``, ``Node.build_seconds``), on a
fake clock: what the exporter reads must be what happened, counted once."""

from __future__ import annotations

import asyncio
import math

import pytest

from zmesh.cells import CellCommand, encode_cell
from zmesh.histogram import Histogram
from zmesh.node import Node
from zmesh.testing.wire import Wire


async def _client_and_two_relays(provider) -> tuple[Wire, Node, Node, Node]:
    wire = Wire()
    client = await wire.add(provider, accept_circuits=False)
    return wire, client, await wire.add(provider), await wire.add(provider)


def test_the_histogram_counts_each_observation_in_one_bucket():
    histogram = Histogram((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 7.0):
        histogram.observe(value)
    assert histogram.cumulative() == [(0.1, 2), (1.0, 3), (math.inf, 4)]
    assert (histogram.count, histogram.sum) == (4, pytest.approx(7.65))
    for bounds in ((), (1.0, 0.5), (1.0, 1.0), (1.0, math.inf)):
        with pytest.raises(ValueError):
            Histogram(bounds)


def test_a_built_circuit_is_counted_once_by_role_with_its_build_time(provider):
    async def main():
        wire, client, first, second = await _client_and_two_relays(provider)
        await client.build_circuit([first.identity, second.identity])
        await wire.pump()
        assert client.circuit_counts() == {"origin": 1, "relay": 0}
        assert first.circuit_counts() == second.circuit_counts() == {"origin": 0, "relay": 1}
        assert client.metrics["circuits_built"] == 1 and client.build_seconds.count == 1
        assert client.build_seconds.sum == 0.0  # the fake clock did not move during the build
        assert (first.metrics["circuits_relayed"], second.metrics["circuits_relayed"]) == (1, 1)
        # every byte sent was received by someone: the two directions balance over the whole wire
        nodes = list(wire.nodes.values())
        assert sum(n.metrics["bytes_out"] for n in nodes) == sum(n.metrics["bytes_in"] for n in nodes) > 0
        assert sum(n.metrics["cells_out"] for n in nodes) == sum(n.metrics["cells_in"] for n in nodes)

    asyncio.run(main())


def test_a_build_that_times_out_is_a_build_failure_by_reason(provider):
    async def main():
        wire, client, first, second = await _client_and_two_relays(provider)
        wire.silent.add(second)  # never answers the EXTEND
        await client.build_circuit([first.identity, second.identity])
        await wire.pump()
        await wire.advance(wire.clock.now + client.limits.build_timeout)
        assert client.circuits() == []
        assert client.metrics["circuit_build_failures_timeout"] == 1
        assert client.metrics["circuits_closed_timeout"] == 1 and client.metrics["circuits_destroyed"] == 1
        assert client.build_seconds.count == 0  # only circuits that opened are timed

    asyncio.run(main())


def test_padding_received_is_counted(provider):
    async def main():
        wire = Wire()
        node, peer = await wire.add(provider), await wire.add(provider)
        await wire.connect(peer, node)
        link = next(link for (owner, link) in wire.ends if owner is node)
        await node.receive_frame(link, encode_cell(CellCommand.PADDING, 0, b"") * 3)
        assert node.metrics["padding_cells_in"] == 3 and node.metrics["cells_in"] == 3

    asyncio.run(main())
