"""The consensus-backed relay list (``zmesh.consensus_view``), driven in memory by a fake fetch
and a fake wall clock: acceptance, signatures gathered across authorities, descriptor matching,
consensus weights and flags, the cache, refresh after fresh-until."""

from __future__ import annotations

import asyncio
import hashlib
import random

import pytest

from zmesh.consensus import compute_consensus, parse_consensus_body, sign_consensus
from zmesh.consensus_view import AuthorityRef, ConsensusView
from zmesh.descriptor import Capabilities, sign_descriptor
from zmesh.encoding import pack_canonical
from zmesh.errors import ConfigError, ConsensusRefused, TransportError
from zmesh.hybrid import HybridKey
from zmesh.identity import Identity
from zmesh.testing.wire import FakeClock
from zmesh.votes import Period, RelayEntry, sign_vote

NOW = 1_800_000_000


class World:
    """Three authorities' keys, two relays, and what each authority URL serves."""

    def __init__(self, provider) -> None:
        self.provider = provider
        self.keys = [asyncio.run(HybridKey.generate(provider)) for _ in range(3)]
        self.refs = [AuthorityRef(f"http://a{i}", k.public.fingerprint) for i, k in enumerate(self.keys)]
        self.relays = [asyncio.run(sign_descriptor(
            provider, asyncio.run(Identity.generate(provider)), now=NOW, lifetime=3 * 3600,
            addresses={"ws": (f"ws://127.{i + 1}.0.1:1/v1/link",)},
            capabilities=Capabilities(exit=True, bandwidth=10**9), exit_ports=((80, 80),))) for i in range(2)]
        self.served: dict[str, bytes] = {}
        self.asked: list[str] = []

    def consensus(self, signers: list[int], period: Period, flags: tuple[str, ...] = ("Guard",)) -> bytes:
        async def build() -> bytes:
            entries = [RelayEntry(d.peer_id, hashlib.sha256(d.raw).digest(), 5000, frozenset(flags))
                       for d in self.relays]
            votes = [await sign_vote(self.provider, k, period, entries) for k in self.keys]
            consensus = parse_consensus_body(compute_consensus(votes, [r.fingerprint for r in self.refs]))
            for i in signers:
                consensus = await sign_consensus(self.provider, self.keys[i], consensus)
            return consensus.to_bytes()
        return asyncio.run(build())

    def serve(self, index: int, consensus: bytes) -> None:
        self.served[f"http://a{index}/v1/consensus"] = consensus
        self.served[f"http://a{index}/v1/descriptors"] = pack_canonical([d.raw for d in self.relays])

    async def fetch(self, url: str) -> bytes:
        self.asked.append(url)
        if url not in self.served:
            raise TransportError(f"cannot reach {url}")
        return self.served[url]


@pytest.fixture(scope="module")
def world(provider) -> World:
    return World(provider)


def view(world: World, wall: FakeClock, **kwargs) -> ConsensusView:
    world.served, world.asked = {}, []
    return ConsensusView(world.refs, world.fetch, world.provider, wall_clock=lambda: wall.now,
                         clock=lambda: wall.now, **kwargs)


def test_authority_ref_parsing(world) -> None:
    text = world.refs[0].text.replace("http://a0", "http://127.0.0.1:9030")
    assert AuthorityRef.parse(text).fingerprint == world.refs[0].fingerprint
    for bad in ("http://x", "ftp://x#" + text.split("#")[1], "http://x#abc"):
        with pytest.raises(ConfigError):
            AuthorityRef.parse(bad)
    with pytest.raises(ConfigError, match="twice"):
        ConsensusView([world.refs[0], world.refs[0]], world.fetch, world.provider)


def test_consensus_weights_and_exit_flag_replace_the_claims(world) -> None:
    wall = FakeClock()
    wall.now = NOW + 1
    v = view(world, wall)
    world.serve(0, world.consensus([0, 1, 2], Period.at(NOW, 60), flags=("Guard",)))
    world.serve(1, world.served["http://a0/v1/consensus"])
    world.serve(2, world.served["http://a0/v1/consensus"])
    relays = asyncio.run(v.relays())
    assert {d.peer_id for d in relays} == {d.peer_id for d in world.relays}
    assert all(d.capabilities.bandwidth == 5000 for d in relays)  # measured, not the claimed 1 GB/s
    assert not any(d.capabilities.exit for d in relays)  # no Exit flag in the consensus: no exit
    assert all(v.is_guard(d) for d in relays)


def test_signatures_from_several_authorities_add_up(world) -> None:
    """Each authority serves the body with only some signatures: together they are a majority."""
    wall = FakeClock()
    wall.now = NOW + 1
    v = view(world, wall, rng=random.Random(1))
    period = Period.at(NOW, 60)
    for i in range(3):
        world.serve(i, world.consensus([i], period))
    assert len(asyncio.run(v.refresh())) == 2
    assert len(v.consensus.signatures) == 2


def test_under_signed_refused_naming_the_missing(world) -> None:
    wall = FakeClock()
    wall.now = NOW + 1
    v = view(world, wall)
    world.serve(0, world.consensus([0], Period.at(NOW, 60)))
    with pytest.raises(ConsensusRefused, match="1 of the 3") as info:
        asyncio.run(v.refresh())
    assert set(info.value.missing) == {r.text.split("#")[1] for r in world.refs[1:]}
    assert v.live() == []


def test_cache_restores_and_stale_triggers_refresh(world) -> None:
    wall = FakeClock()
    wall.now = NOW + 1
    saved: list[bytes] = []
    v = view(world, wall, store=saved.append)
    period = Period.at(NOW, 60)
    world.serve(0, world.consensus([0, 1], period))
    world.serve(1, world.served["http://a0/v1/consensus"])
    world.serve(2, world.served["http://a0/v1/consensus"])
    asyncio.run(v.relays())
    assert saved
    restarted = view(world, wall)  # nothing is served now: only the cache can give relays
    assert asyncio.run(restarted.load_cached(saved[-1]))
    assert len(restarted.live()) == 2 and world.asked == []
    assert len(asyncio.run(restarted.relays())) == 2 and world.asked == []  # still fresh: no fetch
    wall.now = period.fresh_until  # past fresh-until: refetch, but keep the valid one when that fails
    assert len(asyncio.run(restarted.relays())) == 2 and world.asked
    wall.now = period.valid_until  # stale: no relays, and a cache this old is refused
    assert restarted.live() == []
    assert not asyncio.run(view(world, wall).load_cached(saved[-1]))
    assert not asyncio.run(view(world, wall).load_cached(b"\x00junk"))


def test_descriptor_not_matching_its_digest_is_left_out(world) -> None:
    wall = FakeClock()
    wall.now = NOW + 1
    v = view(world, wall)
    world.serve(0, world.consensus([0, 1, 2], Period.at(NOW, 60)))
    other = bytearray(world.relays[1].raw)
    other[-1] ^= 1  # not the descriptor the authorities voted for
    world.served["http://a0/v1/descriptors"] = pack_canonical([world.relays[0].raw, bytes(other), b"\x00" * 40])
    assert [d.peer_id for d in asyncio.run(v.refresh())] == [world.relays[0].peer_id]
