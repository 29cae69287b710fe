"""The signal server's pure parts: the directory and the limits, driven by explicit times."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zmesh.descriptor import Capabilities, Descriptor, sign_descriptor
from zmesh.errors import ConfigError
from zmesh.identity import Identity
from zmesh_signal.directory import Directory, Stored
from zmesh_signal.limits import KeyedLimiter, TokenBucket, TooLarge, read_limited

NOW = 1_800_000_000


def descriptor(provider, identity: Identity | None = None, *, now: int = NOW, lifetime: int = 3600,
               **caps) -> Descriptor:
    async def make() -> Descriptor:
        return await sign_descriptor(provider, identity or await Identity.generate(provider), now=now,
                                     capabilities=Capabilities(**caps), lifetime=lifetime)

    return asyncio.run(make())


def test_directory_keeps_the_newest_descriptor_per_peer(provider):
    identity = asyncio.run(Identity.generate(provider))
    directory = Directory(verify=False)
    first = descriptor(provider, identity)
    assert directory.put(first, NOW) is Stored.LISTED
    assert directory.put(first, NOW) is Stored.STALE
    assert directory.put(descriptor(provider, identity, now=NOW - 1), NOW) is Stored.STALE
    newer = descriptor(provider, identity, now=NOW + 1)
    assert directory.put(newer, NOW + 1) is Stored.LISTED
    assert directory.live(NOW + 1) == [newer] and directory.get(identity.peer_id, NOW + 1) is newer


def test_directory_filters_and_expires_lazily(provider):
    directory = Directory(verify=False)
    relay = descriptor(provider, country="DE", lifetime=600)
    exit_ = descriptor(provider, exit=True, relay=False, country="US", lifetime=1200)
    for d in (relay, exit_):
        directory.put(d, NOW)
    assert directory.live(NOW, flag="relay") == [relay]
    assert directory.live(NOW, flag="exit") == [exit_]
    assert directory.live(NOW, country="US") == [exit_]
    assert directory.live(NOW, flag="exit", country="DE") == []
    assert directory.count(NOW + 599) == 2
    assert directory.count(NOW + 600) == 1 and directory.get(relay.peer_id, NOW + 600) is None
    assert directory.live(NOW + 1200) == []
    with pytest.raises(ConfigError):
        directory.live(NOW, flag="bandwidth")


def test_directory_capacity_counts_only_live_entries(provider):
    directory = Directory(capacity=1, verify=False)
    short = descriptor(provider, lifetime=60)
    assert directory.put(short, NOW) is Stored.LISTED
    assert directory.put(descriptor(provider), NOW) is Stored.FULL
    assert directory.put(descriptor(provider), NOW + 60) is Stored.LISTED  # the expired one made room


def test_token_bucket_burst_then_rate():
    bucket = TokenBucket(rate=2, burst=3, now=0)
    assert [bucket.take(0) for _ in range(3)] == [0, 0, 0]
    assert bucket.take(0) == pytest.approx(0.5)
    assert bucket.take(0.5) == 0
    assert bucket.take(0.5) > 0
    assert [bucket.take(100) for _ in range(4)][:3] == [0, 0, 0]  # saved up to burst, no more


@given(st.lists(st.floats(min_value=0, max_value=1000, allow_nan=False), min_size=1, max_size=200),
       st.floats(min_value=0.1, max_value=50), st.integers(min_value=1, max_value=20))
def test_token_bucket_never_allows_more_than_burst_plus_rate_times_time(times, rate, burst):
    times = sorted(times)
    bucket = TokenBucket(rate, burst, now=times[0])
    allowed = sum(bucket.take(t) == 0 for t in times)
    assert allowed <= burst + rate * (times[-1] - times[0]) + 1e-9


def test_keyed_limiter_separates_clients_and_forgets_the_oldest():
    clock = [0.0]
    limiter = KeyedLimiter(rate=1, burst=1, max_keys=2, clock=lambda: clock[0])
    assert limiter.take("a") == 0 and limiter.take("b") == 0
    assert limiter.take("a") > 0 and limiter.take("b") > 0
    limiter.take("c")  # "a" is the least recently seen: forgotten, so it starts afresh
    assert limiter.take("a") == 0
    clock[0] = 1.0
    assert limiter.take("b") == 0


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 5), (1, 0.5)])
def test_limits_refuse_nonsense_settings(rate, burst):
    with pytest.raises(ConfigError):
        TokenBucket(rate, burst, now=0)
    with pytest.raises(ConfigError):
        KeyedLimiter(rate, burst)


class Chunks:
    """A body stream that hands out at most ``step`` bytes per read and counts what was read."""

    def __init__(self, data: bytes, step: int) -> None:
        self.data, self.step, self.read_bytes = data, step, 0

    async def read(self, n: int = -1) -> bytes:
        chunk = self.data[self.read_bytes:self.read_bytes + min(n, self.step)]
        self.read_bytes += len(chunk)
        return chunk


def test_read_limited_reads_whole_bodies_in_pieces_and_never_more_than_limit_plus_one():
    assert asyncio.run(read_limited(Chunks(b"x" * 100, 7), declared=None, limit=100)) == b"x" * 100
    stream = Chunks(b"x" * 10_000, 7)
    with pytest.raises(TooLarge):
        asyncio.run(read_limited(stream, declared=None, limit=100))
    assert stream.read_bytes == 101
    untouched = Chunks(b"x" * 10_000, 7)
    with pytest.raises(TooLarge, match="10000 bytes"):
        asyncio.run(read_limited(untouched, declared=10_000, limit=100))
    assert untouched.read_bytes == 0
