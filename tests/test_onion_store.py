"""The signal server's onion descriptor store (docs/onion-services.md, "Descriptor store API") on
a real loopback socket, against both backends: what it refuses (stale, replayed, expired,
too-far-future, oversized, forged, misfiled) leaves the stored descriptor byte-for-byte as it was,
and floods of PUTs are bounded in count and rate."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.fuzz_targets import run_sync
from tests.signal_backends import serving
from zmesh.errors import ConfigError, OnionAuthError, ZmeshError
from zmesh.identity import Identity
from zmesh.native.crypto import NativeCryptoProvider
from zmesh.onion import blinding
from zmesh.onion.address import encode_address
from zmesh.onion.descriptor import MAX_SEALED_SIZE, IntroPoint, SealedDescriptor, ServiceDescriptor, seal_descriptor
from zmesh.onion.directory import MAX_ANSWER, descriptor_url, fetch_descriptor, publish_descriptor
from zmesh.signaling import SignalError
from zmesh_signal.app import SignalConfig
from zmesh_signal.client import SignalClient

pytestmark = pytest.mark.usefixtures("signal_backend")  # memory and Redis: they cannot drift

PROVIDER = NativeCryptoProvider()
HOUR = 3600
Test = Callable[[SignalClient, str], Awaitable[None]]


def run(test: Test, config: SignalConfig | None = None) -> None:
    async def main() -> None:
        async with serving(config or SignalConfig(), "127.0.0.1", 0) as port:
            async with SignalClient(f"http://127.0.0.1:{port}") as client:
                await test(client, f"http://127.0.0.1:{port}")

    asyncio.run(main())


def _content() -> ServiceDescriptor:
    relay = run_sync(Identity.generate(PROVIDER)).peer_id.text
    return ServiceDescriptor((IntroPoint(relay, bytes(32)),), run_sync(PROVIDER.x25519_generate())[1],
                             run_sync(PROVIDER.mlkem768_generate())[1])


class Service:
    """A service key and what it seals (made without awaiting: the native provider never suspends)."""

    def __init__(self) -> None:
        self.seed, public = run_sync(PROVIDER.ed25519_generate())
        self.address = encode_address(public)
        self.content = _content()

    async def seal(self, *, revision: int, now: float | None = None, **kwargs) -> SealedDescriptor:
        return await seal_descriptor(PROVIDER, self.seed, self.content, now=time.time() if now is None else now,
                                     revision=revision, **kwargs)


async def put(client: SignalClient, url: str, key: bytes, blob: bytes) -> tuple[int, str | None]:
    status, body = await client.request("PUT", descriptor_url(url, key), blob)
    return status, None if status == 201 else _code(body)


def _code(body: bytes) -> str:
    return json.loads(body)["error"]


async def stored(client: SignalClient, url: str, key: bytes) -> bytes | None:
    status, body = await client.request("GET", descriptor_url(url, key))
    if status == 404:
        return None
    assert status == 200
    return base64.b64decode(json.loads(body)["descriptor"], validate=True)


def tampered(blob: bytes) -> bytes:
    """The blob with its last bit flipped: always a change (writing a zero byte over it was none
    when the signature already ended in zero, one run in 256)."""
    return blob[:-1] + bytes([blob[-1] ^ 1])


def test_publish_then_fetch_by_address(caplog):
    caplog.set_level(logging.DEBUG)
    service = Service()
    keys = []

    async def test(client, url):
        sealed = await service.seal(revision=1)
        keys.append(sealed.blinded_key.hex())
        await publish_descriptor(client, url, sealed)
        assert await fetch_descriptor(client, url, PROVIDER, service.address, now=time.time()) == service.content
        assert await stored(client, url, sealed.blinded_key) == sealed.blob
        with pytest.raises(SignalError) as refused:
            await fetch_descriptor(client, url, PROVIDER, Service().address, now=time.time())
        assert refused.value.code == "not_found" and refused.value.status == 404

    run(test)
    assert caplog.records and service.address[:20] not in caplog.text and keys[0][:20] not in caplog.text


def test_a_client_finds_the_next_period_descriptor():
    """Overlap rule: a service whose clock is ahead has published the next period already."""
    service = Service()

    async def test(client, url):
        now = time.time()
        period = blinding.time_period(now, HOUR) + 1
        await publish_descriptor(client, url, await service.seal(revision=1, period_length=HOUR, period=period))
        found = await fetch_descriptor(client, url, PROVIDER, service.address, now=now, period_length=HOUR)
        assert found == service.content

    run(test)


def test_client_authorisation_through_the_store():
    service = Service()
    secret, public = run_sync(PROVIDER.x25519_generate())

    async def test(client, url):
        await publish_descriptor(client, url, await service.seal(revision=1, authorized_clients=[public]))
        now = time.time()
        assert await fetch_descriptor(client, url, PROVIDER, service.address, now=now,
                                      client_secret=secret) == service.content
        with pytest.raises(OnionAuthError):
            await fetch_descriptor(client, url, PROVIDER, service.address, now=now)

    run(test)


def test_refusals_leave_the_stored_descriptor_unchanged():
    service, attacker = Service(), Service()

    async def test(client, url):
        now = time.time()
        first = await service.seal(revision=5)
        key = first.blinded_key
        assert await put(client, url, key, first.blob) == (201, None)
        refused = {
            "replay": first.blob,
            "same revision, other bytes": (await service.seal(revision=5)).blob,
            "stale": (await service.seal(revision=4)).blob,
            "expired": (await service.seal(revision=9, now=now - 4 * HOUR)).blob,
            "too far ahead": (await service.seal(revision=9, now=now + 2 * HOUR, lifetime=12 * HOUR)).blob,
            "forged": tampered(first.blob),
            "garbage": b"\x92\xc4\x01x\xc4\x01y",
            "oversized": bytes(MAX_SEALED_SIZE + 1),
            "misfiled": (await attacker.seal(revision=9)).blob,
        }
        answers = {name: await put(client, url, key, blob) for name, blob in refused.items()}
        assert answers == {
            "replay": (409, "replay"), "same revision, other bytes": (409, "replay"), "stale": (409, "stale"),
            "expired": (422, "invalid"), "too far ahead": (422, "invalid"), "forged": (422, "invalid"),
            "garbage": (400, "malformed"), "oversized": (413, "too_large"), "misfiled": (400, "key_mismatch"),
        }
        assert await stored(client, url, key) == first.blob
        newer = await service.seal(revision=6)
        assert await put(client, url, key, newer.blob) == (201, None)
        assert await stored(client, url, key) == newer.blob
        for path in ("/v1/onion/" + "A" * 64, "/v1/onion/abc", "/v1/onion/" + "0" * 65):
            status, body = await client.request("GET", url + path)
            assert (status, _code(body)) == (400, "bad_key")
        assert await stored(client, url, bytes(32)) is None

    run(test)


def test_store_is_bounded_and_evicts_only_expired_entries():
    """A flood of fresh keys fills the store to ``max_onion_descriptors`` and is then refused
    (507) without pushing anyone out; once entries expire, newcomers take their place."""
    clock = [time.time()]
    config = SignalConfig(max_onion_descriptors=5, onion_put_burst=1000, onion_new_key_burst=1000, post_burst=1000,
                          clock=lambda: clock[0])

    async def test(client, url):
        start = clock[0]
        flood = [await Service().seal(revision=1, now=start, lifetime=HOUR) for _ in range(12)]
        answers = [await put(client, url, s.blinded_key, s.blob) for s in flood]
        assert answers == [(201, None)] * 5 + [(507, "full")] * 7
        assert [await stored(client, url, s.blinded_key) for s in flood[:5]] == [s.blob for s in flood[:5]]
        assert [await stored(client, url, s.blinded_key) for s in flood[5:]] == [None] * 7
        clock[0] = start + HOUR + 1  # the first five expire
        later = [await Service().seal(revision=1, now=clock[0], lifetime=HOUR) for _ in range(6)]
        answers = [await put(client, url, s.blinded_key, s.blob) for s in later]
        assert answers == [(201, None)] * 5 + [(507, "full")]

    run(test, config)


def test_one_address_cannot_fill_the_store_with_fresh_keys_but_updates_stay_cheap():
    """Each blinded key not stored yet spends a token of the slow new-key bucket (burst 8): the
    ninth fresh key from one address is refused, while new revisions of stored keys still pass."""
    config = SignalConfig(onion_put_burst=1000, post_burst=1000)

    async def test(client, url):
        services = [Service() for _ in range(9)]
        first = [await s.seal(revision=1) for s in services]
        answers = [await put(client, url, s.blinded_key, s.blob) for s in first]
        assert answers == [(201, None)] * 8 + [(429, "rate_limited")]
        assert await stored(client, url, first[8].blinded_key) is None
        updates = [await s.seal(revision=2) for s in services[:8]]
        assert [await put(client, url, s.blinded_key, s.blob) for s in updates] == [(201, None)] * 8

    run(test, config)


def test_a_flood_from_one_address_is_rate_limited():
    """60 PUTs as fast as one client can send them: the per-address onion bucket (burst 20) lets
    at most its burst plus what refills meanwhile through; the rest are 429 before their bodies
    are even checked."""
    service = Service()

    async def test(client, url):
        sealed = [await service.seal(revision=r) for r in range(1, 61)]
        started = time.monotonic()
        answers = [await put(client, url, s.blinded_key, s.blob) for s in sealed]
        elapsed = time.monotonic() - started
        passed = [a for a in answers if a[0] != 429]
        assert len(passed) <= 20 + 1 + int(elapsed * SignalConfig().onion_put_rate)
        assert answers[0] == (201, None) and answers[-1] == (429, "rate_limited")

    run(test)


def test_config_is_validated():
    for bad in ({"max_onion_descriptors": 0}, {"onion_put_rate": 0}, {"onion_new_key_rate": 0},
                {"onion_max_lifetime": 30}, {"onion_max_lifetime": 13 * HOUR}):
        with pytest.raises(ConfigError):
            SignalConfig(**bad)


def test_http_client_bounds_the_answer():
    """``SignalClient.request`` reads at most ``MAX_ANSWER`` bytes of whatever a server sends."""
    async def huge(_request):
        return web.Response(body=bytes(MAX_ANSWER + 1))

    async def main():
        app = web.Application()
        app.router.add_get("/v1/onion/{key}", huge)
        async with TestServer(app, host="127.0.0.1") as server, SignalClient("http://unused") as client:
            with pytest.raises(ZmeshError, match="limit"):
                await client.request("GET", str(server.make_url(f"/v1/onion/{'0' * 64}")))

    asyncio.run(main())



def test_a_tampered_shared_entry_is_not_served(redis_url):
    """Whoever can write to Redis still cannot make a server hand out a descriptor the blinded key
    did not sign: a GET checks the stored blob again."""
    import redis

    service = Service()

    async def test(client, url):
        sealed = await service.seal(revision=1)
        await publish_descriptor(client, url, sealed)
        assert await stored(client, url, sealed.blinded_key) == sealed.blob
        with redis.Redis.from_url(redis_url) as shared:
            assert shared.hset(f"zmesh:signal:o:{sealed.blinded_key.hex()}", "blob", tampered(sealed.blob)) == 0
        assert await stored(client, url, sealed.blinded_key) is None

    run(test, SignalConfig(redis=redis_url))
