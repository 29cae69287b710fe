"""Split messages' core (``zmesh.split``, issue 20 item 1): Shamir over GF(2^8), the share codec,
and the reassembly inbox on a fake clock."""

from __future__ import annotations

import itertools
import os
import random
from collections import Counter
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zmesh.errors import ConfigError, CryptoError, ProtocolError
from zmesh.split import (
    MAX_TTL,
    Refusal,
    Share,
    ShareRefused,
    SplitInbox,
    combine,
    decode_share,
    shamir_combine,
    shamir_split,
    split,
)
from zmesh.testing.wire import FakeClock

NOW = 1_800_000_000.0


def Clock() -> FakeClock:  # noqa: N802 (reads as the clock it makes)
    clock = FakeClock()
    clock.now = NOW
    return clock


def test_any_k_of_n_shares_rebuild_the_message() -> None:
    data = os.urandom(5000)
    shares = split(data, k=3, n=5, now=NOW)
    for group in itertools.permutations(shares, 3):
        assert combine(group) == data
    assert len({s.message_id for s in shares}) == 1 and [s.index for s in shares] == [1, 2, 3, 4, 5]


def test_fewer_than_k_shares_reveal_nothing_exhaustively() -> None:
    """k = 3 over 1-byte secrets: over all 65,536 choices of the two random coefficients, the
    joint distribution of shares 1 and 2 is the same for secrets 0x00 and 0xA7, and uniform (each
    of the 65,536 pairs exactly once): two shares carry no information about the secret."""
    def joint(secret: int, xs: tuple[int, int]) -> Counter[tuple[int, int]]:
        seen: Counter[tuple[int, int]] = Counter()
        for a, b in itertools.product(range(256), repeat=2):
            coefficients = iter((bytes([a]), bytes([b])))
            ys = shamir_split(bytes([secret]), 3, 5, lambda _size, drawn=coefficients: next(drawn))
            seen[ys[xs[0] - 1][0], ys[xs[1] - 1][0]] += 1
        return seen

    for xs in ((1, 2), (2, 5)):
        zero, other = joint(0x00, xs), joint(0xA7, xs)
        assert zero == other
        assert len(zero) == 65_536 and set(zero.values()) == {1}


def test_k_shares_do_determine_the_secret() -> None:
    """The contrast to the test above: with the third share the secret comes back."""
    ys = shamir_split(b"\x42", 3, 3, lambda size: b"\x99" * size)
    assert shamir_combine([(1, ys[0]), (2, ys[1]), (3, ys[2])]) == b"\x42"
    assert shamir_combine([(1, ys[0]), (2, ys[1])]) != b"\x42"


def test_a_tampered_share_fails_the_commitment() -> None:
    shares = split(b"attack at dawn", k=2, n=3, now=NOW)
    bad = replace(shares[0], data=bytes([shares[0].data[0] ^ 1]) + shares[0].data[1:])
    with pytest.raises(CryptoError):
        combine([bad, shares[1]])


@pytest.mark.parametrize("k, n, ttl", [(1, 3, 300), (4, 3, 300), (2, 17, 300), (2, 3, 0), (2, 3, MAX_TTL + 1),
                                       (2.0, 3, 300)])
def test_parameters_are_checked(k, n, ttl) -> None:
    with pytest.raises(ConfigError):
        split(b"x", k=k, n=n, ttl=ttl, now=NOW)


def test_share_codec_round_trips_and_is_canonical() -> None:
    share = split(b"hello", k=2, n=3, now=NOW)[1]
    assert decode_share(share.encode()) == share
    with pytest.raises(ProtocolError):
        decode_share(share.encode() + b"\x00")


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=600),
                 st.tuples(st.integers(0, 200), st.integers(0, 255), st.randoms(use_true_random=False))))
def test_decoder_raises_only_protocol_errors(case) -> None:
    if isinstance(case, tuple):  # a valid share with one byte changed
        raw = bytearray(split(b"fuzz me", k=2, n=3, now=NOW)[0].encode())
        raw[case[0] % len(raw)] = case[1]
        case = bytes(raw)
    try:
        decode_share(case)
    except ProtocolError:
        pass


def test_inbox_delivers_once_at_the_kth_share_and_refuses_the_replay() -> None:
    clock = Clock()
    inbox = SplitInbox(clock)
    shares = split(b"one message", k=2, n=3, ttl=60, now=clock.now)
    assert inbox.add(shares[0]) is None
    with pytest.raises(ShareRefused) as duplicate:
        inbox.add(shares[0])
    assert duplicate.value.refusal is Refusal.DUPLICATE
    assert inbox.add(shares[2]) == b"one message"
    assert inbox.pending_bytes == 0 and inbox.pending_messages == 0
    for share in shares:  # the late third share and replays: never a second delivery
        with pytest.raises(ShareRefused) as replay:
            inbox.add(share)
        assert replay.value.refusal is Refusal.DELIVERED
    clock.now += 60
    with pytest.raises(ShareRefused) as late:
        inbox.add(shares[1])
    assert late.value.refusal is Refusal.EXPIRED


def test_inbox_never_combines_after_expiry() -> None:
    clock = Clock()
    inbox = SplitInbox(clock)
    shares = split(b"too late", k=2, n=3, ttl=10, now=clock.now)
    inbox.add(shares[0])
    clock.now += 10
    with pytest.raises(ShareRefused) as late:
        inbox.add(shares[1])
    assert late.value.refusal is Refusal.EXPIRED
    assert inbox.pending_bytes == 0  # the held share was dropped too


def test_inbox_refuses_expiries_absurdly_far_ahead() -> None:
    share = split(b"x", k=2, n=2, ttl=MAX_TTL, now=NOW + 10 * MAX_TTL)[0]
    with pytest.raises(ShareRefused) as far:
        SplitInbox(Clock()).add(share)
    assert far.value.refusal is Refusal.EXPIRED


def test_a_bad_share_is_routed_around_with_more_than_k() -> None:
    clock = Clock()
    inbox = SplitInbox(clock)
    shares = split(os.urandom(1000), k=2, n=4, now=clock.now)
    bad = replace(shares[0], data=os.urandom(len(shares[0].data)))
    assert inbox.add(bad) is None
    assert inbox.add(shares[1]) is None  # {bad, 2} fails the commitment: wait for more
    assert inbox.add(shares[2]) == combine(shares[1:3])


def test_all_shares_bad_is_an_integrity_refusal_and_frees_the_bytes() -> None:
    inbox = SplitInbox(Clock())
    shares = [replace(s, data=os.urandom(len(s.data))) for s in split(b"x" * 100, k=2, n=2, now=NOW)]
    inbox.add(shares[0])
    with pytest.raises(ShareRefused) as bad:
        inbox.add(shares[1])
    assert bad.value.refusal is Refusal.INTEGRITY and inbox.pending_bytes == 0


def test_inconsistent_shares_of_one_id_are_refused() -> None:
    inbox = SplitInbox(Clock())
    first, second = split(b"abc", k=2, n=3, now=NOW)[:2]
    inbox.add(first)
    with pytest.raises(ShareRefused) as mismatch:
        inbox.add(replace(second, k=3))
    assert mismatch.value.refusal is Refusal.MISMATCH


def test_inbox_bounds_partial_messages_and_bytes() -> None:
    inbox = SplitInbox(Clock(), max_messages=4, max_bytes=10_000)
    for _ in range(4):
        inbox.add(split(b"m", k=2, n=3, now=NOW)[0])
    with pytest.raises(ShareRefused) as full:
        inbox.add(split(b"m", k=2, n=3, now=NOW)[0])
    assert full.value.refusal is Refusal.FULL and inbox.pending_messages == 4
    roomy = SplitInbox(Clock(), max_bytes=10_000)
    roomy.add(split(bytes(6000), k=2, n=3, now=NOW)[0])
    with pytest.raises(ShareRefused) as over:
        roomy.add(split(bytes(6000), k=2, n=3, now=NOW)[0])
    assert over.value.refusal is Refusal.FULL and roomy.pending_bytes <= 10_000


def test_expired_partials_free_their_bytes() -> None:
    clock = Clock()
    inbox = SplitInbox(clock)
    inbox.add(split(bytes(1000), k=2, n=3, ttl=5, now=clock.now)[0])
    clock.now += 5
    inbox.add(split(b"fresh", k=2, n=3, now=clock.now)[0])
    assert inbox.pending_messages == 1 and inbox.pending_bytes == 32 + 5


def test_bad_limits_are_config_errors() -> None:
    with pytest.raises(ConfigError):
        SplitInbox(Clock(), max_messages=0)


def test_share_fields_are_validated() -> None:
    share = split(b"x", k=2, n=3, now=NOW)[0]
    with pytest.raises(ProtocolError):
        Share(share.message_id, 2, 3, 4, share.expiry, share.commitment, share.data)
    with pytest.raises(ProtocolError):
        Share(b"short", 2, 3, 1, share.expiry, share.commitment, share.data)


def test_random_messages_round_trip() -> None:
    rng = random.Random(7)
    for _ in range(20):
        n = rng.randint(2, 16)
        k = rng.randint(2, n)
        data = rng.randbytes(rng.randint(0, 3000))
        assert combine(rng.sample(split(data, k=k, n=n, now=NOW), k)) == data
