"""``MeshVPN.send_split`` over an in-memory mesh (issue 20 item 1): disjoint paths, one ``message``
event at the destination, the typed error when too few shares get through, and the share
service's answers to replays and junk. The real-process version is ``test_split_processes.py``."""

from __future__ import annotations

import asyncio
import os
import time
from contextlib import asynccontextmanager

import pytest

from zmesh.aio.api import MeshVPN
from zmesh.aio.split import SHARE_PORT, STORED, ShareService, send_share
from zmesh.cells import EndReason
from zmesh.errors import SplitDeliveryError, StreamError
from zmesh.split import Refusal, split
from zmesh.testing.memnet import MemoryNetwork

from .conftest import wait_until


@asynccontextmanager
async def _mesh(provider, relays: int, countries: tuple[str | None, ...] = ()):
    """``relays`` relays, a sender (hops=2: one relay and the destination) and a destination."""
    net = MemoryNetwork(provider)
    for index in range(relays):
        await net.add_node(country=countries[index] if index < len(countries) else None)
    directory = lambda: list(net.descriptors.values())  # noqa: E731
    alice = MeshVPN(await net.add_node(accept_circuits=False), directory, hops=2)
    bob = MeshVPN(await net.add_node(), directory)
    try:
        yield net, alice, bob
    finally:
        await alice.close()
        await bob.close()
        await net.close()


def _record_paths(vpn: MeshVPN) -> list[list[str]]:
    paths: list[list[str]] = []
    build = vpn.driver.build

    async def recording(path):
        paths.append([hop.peer_id.text for hop in path])
        return await build(path)
    vpn.driver.build = recording
    return paths


def test_a_split_message_arrives_once_over_disjoint_paths(provider):
    async def main():
        async with _mesh(provider, 4) as (net, alice, bob):
            events = []
            bob.on("message", events.append)
            paths = _record_paths(alice)
            data = os.urandom(100_000)
            stored = await alice.send_split(bob.peer_id, data, k=2, n=3)
            assert await asyncio.wait_for(bob.receive(), 10) == data
            middles = [path[0] for path in paths]
            assert stored == 3 and len(paths) == 3 and len(set(middles)) == 3
            assert all(path[-1] == bob.peer_id.text for path in paths)
            assert events == [data]
            assert not alice.driver.node.circuits()  # the split circuits were closed

    asyncio.run(main())


def test_too_few_disjoint_paths_is_a_typed_error_naming_the_count(provider):
    async def main():
        async with _mesh(provider, 1) as (net, alice, bob):
            with pytest.raises(SplitDeliveryError) as failed:
                await alice.send_split(bob.peer_id, b"secret", k=2, n=3)
            assert failed.value.delivered == 0 and failed.value.needed == 2
            assert "0 of 3 shares stored, 2 needed" in str(failed.value)
            assert "path 2: no disjoint circuit" in str(failed.value)
            assert failed.value.failures[-1] == "no share sent: 1 disjoint circuit(s) built, 2 needed"
            assert bob.shares.inbox.pending_messages == 0  # nothing was sent on the one circuit built

    asyncio.run(main())


def test_paths_prefer_distinct_countries(provider):
    """Four relays, two in DE and two in FR: 2 shares take one of each country every time."""
    async def main():
        async with _mesh(provider, 4, ("DE", "DE", "FR", "FR")) as (net, alice, bob):
            paths = _record_paths(alice)
            countries = {d.peer_id.text: d.capabilities.country for d in net.descriptors.values()}
            for _ in range(4):
                paths.clear()
                await alice.send_split(bob.peer_id, b"x", k=2, n=2)
                assert sorted(countries[path[0]] for path in paths) == ["DE", "FR"]

    asyncio.run(main())


def test_the_share_service_answers_replays_and_junk(provider):
    async def main():
        async with _mesh(provider, 2) as (net, alice, bob):
            circuit, _ = await alice._build(bob.peer_id)
            shares = split(b"hello", k=2, n=3, now=time.time())
            assert await send_share(alice.driver, circuit, shares[0]) == STORED
            assert await send_share(alice.driver, circuit, shares[0]) == Refusal.DUPLICATE
            assert await send_share(alice.driver, circuit, shares[1]) == STORED
            assert await asyncio.wait_for(bob.receive(), 10) == b"hello"
            assert await send_share(alice.driver, circuit, shares[2]) == Refusal.DELIVERED
            stream = await alice.driver.open_stream(circuit, "", SHARE_PORT)
            await stream.write(b"\x00\x00\x00\x03abc")
            assert await asyncio.wait_for(stream.read_exactly(1), 10) == bytes([Refusal.MALFORMED])
            stream = await alice.driver.open_stream(circuit, "", SHARE_PORT)
            await stream.write(b"\xff\xff\xff\xff")  # a frame larger than any share: the stream is ended
            with pytest.raises(StreamError) as ended:
                await asyncio.wait_for(stream.read_exactly(1), 10)
            assert ended.value.reason is EndReason.PROTOCOL
            assert bob.shares.inbox.pending_bytes == 0 and bob._inbox.empty()

    asyncio.run(main())


def test_share_streams_read_at_once_are_bounded(provider):
    """A peer that opens share streams and never finishes them holds at most ``max_streams``
    readers; the next stream is refused (END MISC) and nothing is stored."""
    async def main():
        async with _mesh(provider, 2) as (net, alice, bob):
            bob.shares = ShareService(bob._deliver, max_streams=2)
            circuit, _ = await alice._build(bob.peer_id)
            stalled = []
            for _ in range(2):
                stream = await alice.driver.open_stream(circuit, "", SHARE_PORT)
                await stream.write(b"\x00\x00\x10\x00" + b"partial")  # 4096 bytes promised, 7 sent
                stalled.append(stream)
            await wait_until(lambda: bob.shares.active == 2)
            with pytest.raises(StreamError) as refused:
                await asyncio.wait_for(alice.driver.open_stream(circuit, "", SHARE_PORT), 10)
            assert refused.value.reason is EndReason.MISC and bob.shares.active == 2
            for stream in stalled:
                await stream.close()
            await wait_until(lambda: bob.shares.active == 0)
            assert bob.shares.inbox.pending_messages == 0

    asyncio.run(main())
