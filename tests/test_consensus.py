"""Votes, consensus computation and client acceptance (docs/directory.md §2–§4), in memory."""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from zmesh.consensus import (
    Consensus,
    accept_consensus,
    add_signature,
    compute_consensus,
    parse_consensus,
    parse_consensus_body,
    sign_consensus,
)
from zmesh.encoding import pack_canonical, unpack_canonical
from zmesh.errors import ConfigError, ConsensusRefused, CryptoError, ProtocolError
from zmesh.hybrid import HybridKey, parse_fingerprint
from zmesh.identity import PeerId
from zmesh.votes import Period, RelayEntry, sign_vote, verify_vote

NOW = 1_800_000_000
PERIOD = Period.at(NOW, 60)


def peer(n: int) -> PeerId:
    return PeerId(bytes([n]) * 32)


def entry(n: int, bandwidth: int = 1000, flags: tuple[str, ...] = ("Fast",), digest: bytes | None = None) -> RelayEntry:
    return RelayEntry(peer(n), digest or hashlib.sha256(bytes([n])).digest(), bandwidth, frozenset(flags))


@pytest.fixture(scope="module")
def keys() -> list[HybridKey]:
    from zmesh.native.crypto import NativeCryptoProvider
    provider = NativeCryptoProvider()
    return [asyncio.run(HybridKey.generate(provider)) for _ in range(3)]


def fps(keys: list[HybridKey]) -> list[bytes]:
    return [k.public.fingerprint for k in keys]


async def signed(provider, keys, votes_relays, period=PERIOD, signers=None) -> bytes:
    """A consensus of the given votes (one relay list per key), signed by ``signers`` (default all)."""
    votes = [await sign_vote(provider, k, period, relays) for k, relays in zip(keys, votes_relays, strict=False)]
    consensus = parse_consensus_body(compute_consensus(votes, fps(keys)))
    for key in (keys if signers is None else signers):
        consensus = await sign_consensus(provider, key, consensus)
    return consensus.to_bytes()


def test_fingerprint_text_round_trips_and_catches_typos(provider, keys) -> None:
    text = keys[0].public.fingerprint_text
    assert parse_fingerprint(text) == keys[0].public.fingerprint
    typo = ("b" if text[5] != "b" else "c").join((text[:5], text[6:]))
    with pytest.raises(ConfigError, match="checksum|version"):
        parse_fingerprint(typo)
    restored = asyncio.run(HybridKey.from_bytes(provider, keys[0].to_bytes()))
    assert restored.public == keys[0].public
    with pytest.raises(ConfigError):
        asyncio.run(HybridKey.from_bytes(provider, b"\x00junk"))


def test_vote_round_trip_and_refusals(provider, keys) -> None:
    async def main() -> None:
        configured = frozenset(fps(keys))
        vote = await sign_vote(provider, keys[0], PERIOD, [entry(2), entry(1)])
        parsed = await verify_vote(provider, vote.raw, authorities=configured)
        assert [e.peer_id for e in parsed.relays] == [peer(1), peer(2)] and parsed.period == PERIOD
        with pytest.raises(CryptoError, match="not configured"):
            await verify_vote(provider, vote.raw, authorities=frozenset(fps(keys[1:])))
        body, sig = unpack_canonical(vote.raw, max_size=1 << 20, what="t")
        for name in ("sig_ed25519", "sig_mldsa65"):  # a verifier requires both signatures
            bad = dict(sig)
            bad[name] = bytes([sig[name][0] ^ 1]) + sig[name][1:]
            with pytest.raises(CryptoError, match="Ed25519" if name == "sig_ed25519" else "ML-DSA-65"):
                await verify_vote(provider, pack_canonical([body, bad]), authorities=configured)
        other = await sign_vote(provider, keys[1], PERIOD, [])  # keys[1]'s signature on keys[0]'s body
        with pytest.raises(CryptoError, match="another authority"):
            await verify_vote(provider, pack_canonical([body, unpack_canonical(other.raw, max_size=1 << 20,
                                                                                what="t")[1]]), authorities=configured)
        fields = unpack_canonical(body, max_size=1 << 20, what="t")
        for broken in ({**fields, "relays": [e.to_wire() for e in (entry(2), entry(1))]},  # unsorted
                       {**fields, "relays": [{**entry(1).to_wire(), "flags": ["Wizard"]}]},
                       {**fields, "relays": [{**entry(1).to_wire(), "bandwidth": -1}]},
                       {**fields, "fresh_until": fields["valid_after"]},
                       {**fields, "extra": 1}, {**fields, "authority": [1]}):
            with pytest.raises(ProtocolError):
                await verify_vote(provider, pack_canonical([pack_canonical(broken), sig]), authorities=configured)
        for junk in (b"", b"\xc1", pack_canonical([b"x"]), vote.raw + b"\x00", b"\x91" * 40):
            with pytest.raises(ProtocolError):
                await verify_vote(provider, junk, authorities=configured)

    asyncio.run(main())


def test_relay_listed_only_by_a_majority_of_configured_authorities(provider, keys) -> None:
    async def main() -> None:
        votes = [await sign_vote(provider, keys[0], PERIOD, [entry(1), entry(2), entry(9)]),  # 9: only here
                 await sign_vote(provider, keys[1], PERIOD, [entry(1), entry(2)]),
                 await sign_vote(provider, keys[2], PERIOD, [entry(1)])]
        consensus = parse_consensus_body(compute_consensus(votes, fps(keys)))
        assert [r.peer_id for r in consensus.relays] == [peer(1), peer(2)]
        # with two votes of three configured, two must still agree: a relay only one lists stays out
        two = parse_consensus_body(compute_consensus(votes[:2], fps(keys)))
        assert [r.peer_id for r in two.relays] == [peer(1), peer(2)]
        assert [r.peer_id for r in parse_consensus_body(compute_consensus(votes[1:], fps(keys))).relays] == [peer(1)]
        with pytest.raises(ProtocolError, match="needs 2"):
            compute_consensus(votes[:1], fps(keys))
        with pytest.raises(ProtocolError, match="distinct"):
            compute_consensus([votes[0], votes[0]], fps(keys))
        late = await sign_vote(provider, keys[2], Period.at(NOW + 60, 60), [])
        with pytest.raises(ProtocolError, match="periods"):
            compute_consensus([votes[0], late], fps(keys))

    asyncio.run(main())


def test_weights_and_flags_are_the_median(provider, keys) -> None:
    async def main() -> None:
        liar = entry(1, bandwidth=10**9, flags=("Guard", "Fast", "Stable"))  # one authority inflates
        votes = [await sign_vote(provider, keys[0], PERIOD, [liar]),
                 await sign_vote(provider, keys[1], PERIOD, [entry(1, 2000, ("Fast", "Guard"))]),
                 await sign_vote(provider, keys[2], PERIOD, [entry(1, 1000, ("Fast",))])]
        (relay,) = parse_consensus_body(compute_consensus(votes, fps(keys))).relays
        assert relay.bandwidth == 2000 and relay.flags == {"Fast", "Guard"}
        (two,) = parse_consensus_body(compute_consensus([votes[0], votes[2]], fps(keys))).relays
        assert two.bandwidth == 1000 and two.flags == {"Fast"}  # low median; a flag needs more than half

    asyncio.run(main())


def test_computation_is_deterministic_in_vote_order(provider, keys) -> None:
    async def main() -> None:
        votes = [await sign_vote(provider, k, PERIOD, [entry(1, 100 * i), entry(3 + i)]) for i, k in enumerate(keys)]
        a = compute_consensus(votes, fps(keys))
        assert compute_consensus(list(reversed(votes)), list(reversed(fps(keys)))) == a
        digest_vote = [await sign_vote(provider, keys[0], PERIOD, [entry(1, digest=b"\x01" * 32)]),
                       await sign_vote(provider, keys[1], PERIOD, [entry(1, digest=b"\x02" * 32)])]
        (relay,) = parse_consensus_body(compute_consensus(digest_vote, fps(keys))).relays
        assert relay.digest == b"\x01" * 32  # a tie goes to the smallest digest

    asyncio.run(main())


def test_client_accepts_a_majority_signed_consensus(provider, keys) -> None:
    async def main() -> None:
        raw = await signed(provider, keys, [[entry(1)], [entry(1)], [entry(1)]], signers=keys[:2])
        consensus = await accept_consensus(provider, raw, authorities=fps(keys), now=NOW + 1)
        assert [r.peer_id for r in consensus.relays] == [peer(1)] and set(consensus.signatures) == set(fps(keys[:2]))
        assert parse_consensus(consensus.to_bytes()).body == consensus.body

    asyncio.run(main())


def test_under_signed_consensus_names_the_missing_signatures(provider, keys) -> None:
    async def main() -> None:
        raw = await signed(provider, keys, [[entry(1)]] * 3, signers=keys[:1])
        with pytest.raises(ConsensusRefused, match="1 of the 3 .* needs 2") as info:
            await accept_consensus(provider, raw, authorities=fps(keys), now=NOW + 1)
        assert set(info.value.missing) == {k.public.fingerprint_text for k in keys[1:]}
        # a client configured with two wrong fingerprints out of three refuses a fully signed consensus
        full = await signed(provider, keys, [[entry(1)]] * 3)
        wrong = [fps(keys)[0], b"\x07" * 32, b"\x08" * 32]
        with pytest.raises(ConsensusRefused, match="no signature") as info:
            await accept_consensus(provider, full, authorities=wrong, now=NOW + 1)
        assert len(info.value.missing) == 2

    asyncio.run(main())


def test_forged_expired_and_future_consensus_refused(provider, keys) -> None:
    async def main() -> None:
        raw = await signed(provider, keys, [[entry(1)]] * 3)
        body, sigs = unpack_canonical(raw, max_size=1 << 20, what="t")
        fields = unpack_canonical(body, max_size=1 << 20, what="t")
        forged_body = pack_canonical({**fields, "relays": [entry(5).to_wire()]})  # same signatures, new body
        with pytest.raises(ConsensusRefused, match="0 of the 3"):
            await accept_consensus(provider, pack_canonical([forged_body, sigs]), authorities=fps(keys), now=NOW)
        with pytest.raises(ConsensusRefused, match="expired"):
            await accept_consensus(provider, raw, authorities=fps(keys), now=PERIOD.valid_until)
        with pytest.raises(ConsensusRefused, match="future"):
            await accept_consensus(provider, raw, authorities=fps(keys), now=PERIOD.valid_after - 3600)
        with pytest.raises(ProtocolError):
            await accept_consensus(provider, pack_canonical([body, sigs + sigs]), authorities=fps(keys), now=NOW)

    asyncio.run(main())


def test_peer_signature_added_only_if_it_verifies(provider, keys) -> None:
    async def main() -> None:
        votes = [await sign_vote(provider, k, PERIOD, [entry(1)]) for k in keys]
        mine = await sign_consensus(provider, keys[0], parse_consensus_body(compute_consensus(votes, fps(keys))))
        theirs = await sign_consensus(provider, keys[1], Consensus(mine.body, mine.period, mine.voters, mine.relays))
        merged = await add_signature(provider, mine, theirs.signatures[fps(keys)[1]], frozenset(fps(keys)))
        assert set(merged.signatures) == set(fps(keys[:2]))
        other = parse_consensus_body(compute_consensus(votes[:2], fps(keys)))  # a different body
        with pytest.raises(CryptoError):
            await add_signature(provider, other, theirs.signatures[fps(keys)[1]], frozenset(fps(keys)))
        with pytest.raises(ProtocolError):
            await add_signature(provider, mine, {"fp": b"x"}, frozenset(fps(keys)))

    asyncio.run(main())
